// The cost model: prices every way to run one stage on one device for one job shape (device memory at rest and at
// peak, host memory, seconds). Measured profiles of the same stage, device kind, choice and shape are used as they
// are; elsewhere an estimate from the package's shapes, calibrated against the profiles at hand. Torch-free.
// What is estimated how, and how close it lands: docs/PLANNER.md.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "package/manifest.h"
#include "planner/problem.h"
#include "profiler/stage_profile.h"

namespace reel::planner {

// One job's shape as the planner prices it.
struct Job {
  int frames = 49, height = 480, width = 720, steps = 50;
  double guidance = 6.0;
  // Classifier-free guidance runs the negative and the positive prompt together (as profiles record it).
  int batch() const { return guidance > 1.0 ? 2 : 1; }
};

// Which implementation the activation estimates follow.
enum class Implementation {
  // Reel's TorchScript parts (models/*_script.cc): attention as the package's manifest says (AttentionOf), norms
  // computed in f32 copies, the decoder's SpatialNorm convolutions applied before the resize.
  kReel,
  // diffusers on CUDA, for comparison with published figures: SDPA/flash attention, norms in the compute dtype,
  // SpatialNorm materialised at full size with its k=1 cache copies, SiLU not in place, decoded frames kept on the
  // device in the compute dtype.
  kDiffusers,
};

// The score elements of one attention chunk in Reel's transformer; equals models/transformer_script.h's
// kAttentionChunkElements (the planner is torch-free, so the test holds the two equal).
inline constexpr int64_t kAttentionChunkElements = int64_t{1} << 26;

// How a stage's TorchScript computes attention, which sets both its score memory and its time.
enum class Attention {
  // q·kᵀ materialised and softmaxed in float32: the denoiser in chunks of kAttentionChunkElements scores (packages
  // made before LibTorch 2, and `reel model synth --attention chunked`), T5's 226×226 scores whole (packages made
  // before LibTorch 2; transformers' T5, which diffusers runs).
  kMaterialised,
  // scaled_dot_product_attention: flash or memory-efficient kernels on CUDA, the flash kernel on CPU; no score
  // matrix, only the output and its log-sum-exp rows.
  kFused,
};
// What the package's manifest says: the denoiser's config `fused_attention` (1 fused, 0 chunked; absent in packages
// made before LibTorch 2: chunked). T5 has no switch: its blocks moved to SDPA (position bias as an additive mask)
// in the same change, so it is fused wherever the denoiser records the key (or T5's own config says so), else
// materialised. Stages without attention (the VAE) say kFused: nothing is priced for it.
Attention AttentionOf(const Manifest& manifest, StageKind stage);

struct CostModelOptions {
  Implementation implementation = Implementation::kReel;
  std::vector<int> block_windows = {1, 2, 4, 8};  // K of block:K, kept where K < the stage's blocks
  std::vector<int> vae_tiles = {256, 128, 64};     // --vae-tiling sizes offered where the latent exceeds a tile
  bool calibrate = true;                           // fit scale factors to the profiles at hand
};

struct DeviceRates {
  double flops = 0;                    // dense GEMM FLOP/s in the compute dtype, before each op class's efficiency
  double memory_bytes_per_second = 0;  // what chunked attention's passes over its scores reach (they bound it)
  double copy_bytes_per_second = 0;    // host to device (pinned on CUDA; a memcpy on the simulated device)
};
// Defaults per device kind and compute dtype ("f32", "bf16", "f16"); figures and sources in docs/PLANNER.md.
DeviceRates DefaultRates(const std::string& device_kind, const std::string& compute_dtype);
// The device's own figures where set (Device::flops is for bf16; other dtypes and the memory bandwidth scale with
// it by the kind's default ratios), else the defaults.
DeviceRates RatesOf(const Device& device, const std::string& compute_dtype);

// The estimator's view of one choice, before profiles override it.
struct Estimate {
  int64_t weight_peak_bytes = 0;  // weights on the device at the stage's peak
  int64_t activation_bytes = 0;   // inputs, activations, caches and outputs on the device at the peak
  int64_t input_bytes = 0;        // the part of it on the device before the stage begins (latents, embeddings)
  int64_t resident_bytes = 0;     // weights kept on the device between runs
  int64_t host_bytes = 0;         // weights on the host, as stored (f32/bf16/f16 or int8 codes and scales)
  int64_t pinned_bytes = 0;
  int64_t run_host_bytes = 0;   // decoded frames on the host while the decoder runs
  int64_t copy_bytes = 0;       // host to device per job
  double dense_flops = 0;       // linear layers and convolutions, one job
  double attention_flops = 0;   // QKᵀ and PV, one job
  Attention attention = Attention::kFused;  // how they were priced
  double compute_seconds = 0;
  double copy_seconds = 0;      // what copies add to compute (overlapped copies add only their excess)
  int64_t peak_bytes() const { return weight_peak_bytes + activation_bytes; }
  double seconds() const { return compute_seconds + copy_seconds; }
};

// The scale factors fitted for one (stage, device kind) from the profiles at hand, and the estimator's error on
// them: median |estimate − measured| / measured, before (scale 1) and after (leave one out when there are two or
// more profiles, so the error is not measured on the profile that fitted it).
struct Calibration {
  StageKind stage = StageKind::kDenoiser;
  std::string device_kind;
  int profiles = 0;
  double activation_scale = 1.0;
  double seconds_scale = 1.0;
  double peak_error_before = 0, peak_error_after = 0;
  double seconds_error_before = 0, seconds_error_after = 0;
};

class CostModel {
 public:
  // `profiles` may hold anything from a profile store: rows of other packages (another stage digest) are ignored,
  // rows that failed with "oom" only raise the estimate of the choice they tried to what did not fit.
  CostModel(Manifest manifest, std::vector<StageProfile> profiles, CostModelOptions options = {});

  // Every candidate for `stage` on `device` at `job`, measured where profiles match, else estimated: strategies
  // none, model, block:K, sequential (stages without blocks: none, model; the decoder also with +slicing and
  // +tiling=T), dtypes bf16, f16 (not for the T5 text encoder), f32 and int8 on CUDA, f32 and bf16 on the simulated
  // device. Empty when the package has no such stage.
  std::vector<Option> Options(StageKind stage, const Device& device, const Job& job) const;
  // One candidate. `strategy` as Option::strategy spells it ("block:2", "model+slicing+tiling=256"), `dtype` "f32",
  // "bf16", "f16" or "int8". Throws InvalidArgument naming what it does not accept.
  Option Price(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
               const std::string& dtype) const;
  // The estimate alone; `calibrated` false gives the estimator before the fitted scale factors.
  Estimate Estimated(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
                     const std::string& dtype, bool calibrated = true) const;
  // Bytes of the stage's output at `job`: what the next stage receives.
  int64_t OutputBytes(StageKind stage, const Job& job) const;

  const std::vector<Calibration>& calibrations() const { return calibrations_; }
  const Manifest& manifest() const { return manifest_; }

 private:
  struct Choice;
  Choice Parse(StageKind stage, const std::string& strategy, const std::string& dtype, const std::string& kind) const;
  Estimate Raw(StageKind stage, const Choice& c, const DeviceRates& rates, const std::string& kind,
               const Job& job) const;
  const Calibration* CalibrationOf(StageKind stage, const std::string& kind) const;
  void Calibrate();

  Manifest manifest_;
  std::vector<StageProfile> profiles_;  // this package's rows only
  CostModelOptions options_;
  std::map<StageKind, std::string> digests_;
  std::vector<Calibration> calibrations_;
};

}  // namespace reel::planner
