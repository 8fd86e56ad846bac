// One measured run of one pipeline stage, and the per-job report that collects them. These plain structs are
// what the store, the metrics and the planner exchange; JSON is their file and column format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace reel {

struct StageProfile {
  std::string stage;         // text_encoder | vae_encoder | denoiser | vae_decoder
  std::string stage_digest;  // identifies the stage's weights, so profiles of other weights never mix
  std::string device_kind = "cpu";  // cpu | cuda
  std::string device_name;
  int64_t device_capacity_bytes = 0;  // 0 = unlimited
  std::string strategy = "none";      // none, model, block:2, sequential, slicing, tiling=256, ...
  std::string dtype = "f32";          // f32 | bf16 | f16 | int8

  // Job shape.
  int frames = 0;
  int height = 0;
  int width = 0;
  int steps = 0;
  int batch = 1;

  std::string outcome = "ok";  // ok | oom | error
  std::string error;           // the error line when outcome is not ok

  int64_t peak_device_bytes = 0;
  // Device bytes held by other stages and job tensors when this stage began: its own need is the peak less this.
  int64_t base_device_bytes = 0;
  int64_t peak_host_rss_bytes = 0;
  int64_t pinned_host_bytes = 0;
  int64_t copied_bytes = 0;  // host<->device weight traffic, for reel_copied_bytes_total

  double load_seconds = 0;
  double copy_seconds = 0;
  double compute_seconds = 0;
  double wall_seconds = 0;
  std::vector<double> step_seconds;   // one per denoising step
  std::vector<double> block_seconds;  // mean per block index

  int64_t recorded_at = 0;  // unix seconds

  // Throws InvalidArgument("<what>: <field> ...") for an unknown stage, device kind, dtype or outcome, or a
  // negative size, time or shape: a bad row would mislead the planner for every later job.
  void Validate(const std::string& what = "stage profile") const;

  nlohmann::json ToJson() const;
  // Throws InvalidArgument naming `what` and the field that is missing, mistyped or invalid.
  static StageProfile FromJson(const nlohmann::json& j, const std::string& what = "stage profile");

  bool operator==(const StageProfile&) const = default;
};

// What `reel generate --report` writes: the job and every stage that ran.
struct RunReport {
  std::vector<StageProfile> stages;
  std::string model;
  int frames = 0;
  int height = 0;
  int width = 0;
  int steps = 0;
  int64_t seed = 0;
  double total_seconds = 0;
  std::string output;  // the video written, empty when the job failed

  nlohmann::json ToJson() const;
  static RunReport FromJson(const nlohmann::json& j, const std::string& what = "run report");
  // Whole or not at all (temporary file + rename); throws InvalidArgument for a missing or read-only
  // directory and IoError when the write fails.
  void WriteReport(const std::filesystem::path& path) const;
};

// The same as report.WriteReport(path), for call sites that read better with a free function.
void WriteReport(const RunReport& report, const std::filesystem::path& path);

}  // namespace reel
