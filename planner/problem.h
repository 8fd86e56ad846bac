// The planning problem as plain structs (torch-free): the machine (devices on hosts), the pipeline's stages, and
// for every (stage, device) the options the cost model priced; and the plan a search returns. The cost model
// (cost_model.h) fills Options from measured profiles or estimates; the search (search.h) picks among them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "package/manifest.h"

namespace reel::planner {

struct Device {
  std::string name;           // the worker's name, or "gpu0" for a described machine
  std::string host;           // devices on one host share its RAM
  std::string kind = "cuda";  // cuda | cpu (the simulated device)
  int64_t capacity_bytes = 0;
  // Throughput figures used by estimates (0 = the defaults of `kind`, see cost_model.h).
  double flops = 0;                  // bf16 GEMM FLOP/s (a large matmul's); each op class reaches a share of it
  double copy_bytes_per_second = 0;  // host to device, pinned
};

struct Host {
  std::string name;
  int64_t ram_bytes = 0;
  int64_t pinned_budget_bytes = 0;  // most host memory that may be pinned (0 = no limit beyond RAM)
};

struct Machine {
  std::vector<Device> devices;
  std::vector<Host> hosts;
  double margin = 0.10;  // fraction of every capacity kept free
};

// One way to run one stage on one device, priced for one job of the planned shape.
struct Option {
  std::string strategy;  // "none", "model", "block:4", "sequential"; the decoder adds "+slicing", "+tiling=256"
  std::string dtype;     // "f32", "bf16", "f16", "int8" (int8-stored weights)
  std::string compute_dtype;  // what the stage computes in: dtype, or for "int8" what the codes expand to (bf16 on
                              // CUDA, the package's dtype on the simulated device): --dtype with --weights int8
  int64_t resident_device_bytes = 0;  // held on the device for as long as the stage is placed there
  int64_t peak_device_bytes = 0;      // while the stage runs, resident bytes included
  int64_t host_bytes = 0;             // host bytes held while the stage is placed (weights kept on the host)
  int64_t pinned_bytes = 0;           // part of host_bytes that is pinned
  int64_t run_host_bytes = 0;         // extra host bytes while the stage runs (e.g. decoded frames)
  double seconds = 0;                 // one job through the stage (the denoiser: every step)
  bool measured = false;              // from profiles of this device kind, stage, shape and choice
  std::string basis;                  // "measured (3 runs)", "estimate (median error 12% on 5 profiles)"
};

struct StageOptions {
  StageKind stage = StageKind::kDenoiser;
  std::vector<std::vector<Option>> per_device;  // [device index][option]; empty: the device cannot run it
  int64_t output_bytes = 0;                     // what the next stage receives (for transfer time)
};

struct Problem {
  Machine machine;
  std::vector<StageOptions> stages;  // in pipeline order
  double link_bytes_per_second = 10e9;        // tensors between devices on one host
  double network_bytes_per_second = 1.25e9;   // tensors between hosts
};

enum class Objective {
  kLatency,     // one job, end to end, as fast as possible
  kThroughput,  // a stream of jobs: most jobs per hour
};

struct Replica {
  int device = 0;
  int option = 0;  // index into StageOptions::per_device[device]
};

struct StagePlan {
  StageKind stage = StageKind::kDenoiser;
  std::vector<Replica> replicas;  // latency plans use one replica per stage
};

struct Plan {
  bool feasible = false;
  bool optimal = false;  // proven optimal (false when the search stopped at its budget with the best found)
  Objective objective = Objective::kLatency;
  std::vector<StagePlan> stages;
  double latency_seconds = 0;  // one job end to end, transfers included
  double jobs_per_hour = 0;    // steady state of a stream
  std::vector<int64_t> device_peak_bytes;  // per device: resident of every stage placed + the largest run peak
  std::vector<int64_t> host_peak_bytes;    // per host, at the worst phase (latency) or all stages at once (throughput)
  // Why the best alternatives were not chosen, for `reel plan --explain`: "denoiser on gpu0 none: does not fit
  // VRAM by 3.2 GiB", "denoiser on gpu0 sequential: 41.0 s slower".
  std::vector<std::string> rejected;
  std::string infeasible_reason;  // when nothing fits: what would (fewer frames, lower resolution, more RAM)
};

}  // namespace reel::planner
