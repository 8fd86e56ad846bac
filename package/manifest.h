// The stage-package manifest: what a pipeline on disk contains and the contract each stage keeps.
// Torch-free, so the coordinator and planner can read packages without LibTorch. Format: docs/STAGE_PACKAGE.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace reel {

inline constexpr int kManifestFormatVersion = 1;
inline constexpr const char* kManifestFileName = "manifest.json";

enum class StageKind { kTextEncoder, kVaeEncoder, kDenoiser, kVaeDecoder };
const char* StageKindName(StageKind k);  // "text_encoder", ...
std::optional<StageKind> ParseStageKind(const std::string& s);

enum class DType { kF32, kBF16, kF16, kI64 };
const char* DTypeName(DType d);  // "f32", "bf16", "f16", "i64"
std::optional<DType> ParseDType(const std::string& s);
int64_t DTypeBytes(DType d);

// Job shape symbols a tensor dimension may name; see docs/STAGE_PACKAGE.md.
// B batch, T text tokens, F frames, H height, W width, f latent frames, h latent height, w latent width.
using Dim = std::variant<int64_t, std::string>;

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<Dim> shape;
};

// One TorchScript file of a stage.
struct StagePart {
  std::string role;  // "module" for single-file stages, or "embed", "block", "head"
  std::string file;  // relative to the package directory
  int64_t params = 0;
  int64_t bytes = 0;
};

struct StageManifest {
  StageKind kind = StageKind::kDenoiser;
  DType dtype = DType::kF32;  // weight and compute dtype
  std::vector<StagePart> parts;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::map<std::string, double> config;  // architecture numbers (width, heads, ...) for planners and readers

  int64_t params() const;
  int64_t bytes() const;
  int num_blocks() const;
};

// Text a prompt may contain that becomes one id, matched before SentencePiece sees the rest: transformers' added
// tokens (`</s>`, `<pad>`, `<unk>`, `<extra_id_0>`, ...), which its T5 tokenizer matches literally.
struct AddedToken {
  std::string content;
  int id = 0;
  bool operator==(const AddedToken&) const = default;
};

struct TokenizerSpec {
  std::string kind = "bytes";  // "bytes" (synthetic) or "sentencepiece"
  std::string file;            // sentencepiece model, relative to the package
  int max_length = 226;
  int vocab_size = 32128;
  int pad_id = 0;
  int eos_id = 1;
  std::vector<AddedToken> added_tokens;  // sentencepiece only
};

struct VaeSpec {
  int spatial_compression = 8;
  int temporal_compression = 4;
  int latent_channels = 16;
  double scaling_factor = 0.7;
};

struct SchedulerSpec {
  // The checkpoint's scheduler class: "cogvideox_ddim" (CogVideoXDDIMScheduler) or "cogvideox_dpm"
  // (CogVideoXDPMScheduler); the settings below are common to both.
  std::string kind = "cogvideox_ddim";
  int num_train_timesteps = 1000;
  std::string beta_schedule = "scaled_linear";
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string prediction_type = "v_prediction";
  std::string timestep_spacing = "trailing";
  bool rescale_betas_zero_snr = true;
  bool set_alpha_to_one = true;
  double snr_shift_scale = 1.0;
};

// What job shapes the model accepts.
struct ShapeLimits {
  int min_height = 16, max_height = 1024, min_width = 16, max_width = 1024;
  int size_multiple = 16;
  int max_frames = 49;
  // Frames are frame_step·k + 1. CogVideoX's VAE decodes latent frames as 1 + pairs, so an even latent count
  // would come out 3 frames longer than asked: 8k+1 at 4× temporal compression.
  int frame_step = 8;
};

struct JobDefaults {
  int frames = 49, height = 480, width = 720, steps = 50;
  double guidance = 6.0;
  int fps = 8;
};

struct Manifest {
  int format_version = kManifestFormatVersion;
  std::string name;
  std::string preset;  // empty for exported real models
  std::optional<uint64_t> seed;
  bool image_conditioned = false;  // I2V: the denoiser takes noise latents ‖ image latents
  TokenizerSpec tokenizer;
  VaeSpec vae;
  SchedulerSpec scheduler;
  ShapeLimits limits;
  JobDefaults defaults;
  std::map<StageKind, StageManifest> stages;

  const StageManifest& stage(StageKind k) const;
  bool has_stage(StageKind k) const { return stages.count(k) != 0; }
};

// Identifies a stage's weights (16 hex digits): the package name and seed and every part's file, parameter count
// and bytes. Profiles are stored under it, so measurements of other weights never mix.
std::string StageDigest(const Manifest& m, const StageManifest& s);

// Serialises to JSON text (stable key order).
std::string ManifestToJson(const Manifest& m);
// Parses and validates; errors are BadPackage naming `source` (a file path) and the field at fault.
Manifest ManifestFromJson(const std::string& text, const std::string& source);
// Reads DIR/manifest.json and checks that every part file exists and is non-empty.
Manifest LoadManifest(const std::filesystem::path& dir);
void SaveManifest(const Manifest& m, const std::filesystem::path& dir);

// A job's shape: the values of the symbols a TensorSpec may name.
struct JobShape {
  int batch = 1;
  int frames = 9, height = 64, width = 64;
  int text_tokens = 226;
  std::map<std::string, int64_t> symbols(const VaeSpec& vae) const;
};
std::vector<int64_t> ResolveShape(const TensorSpec& spec, const std::map<std::string, int64_t>& symbols);
std::string FormatDims(const std::vector<Dim>& dims);
std::string FormatShape(const std::vector<int64_t>& shape);

}  // namespace reel
