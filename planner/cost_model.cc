#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "common/error.h"
#include "planner/activations.h"
#include "planner/planning.h"

namespace reel::planner {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Defaults. CUDA: an H100 or H200 (the same tensor cores, 989 TFLOP/s dense bf16 on paper), whose bf16 GEMMs at
// 8192³ measured 790–800 TFLOP/s: that is the rate, and each class of work reaches its share of it (EfficiencyOf).
// f32 without TF32 is not recalibrated (no f32 runs measured). 20 GB/s pinned host-to-device copies. The 2.3 TB/s
// that chunked attention's passes over its score chunks reached on an H200: Reel's chunked 5B and 2B steps at
// 49×480×720, guided, took 21.8 s and 8.41 s, about 16 ps per score element of 36 bytes (an H100, with 70% of the
// H200's memory bandwidth, would be slower there). docs/PLANNER.md has the figures and how estimates compare.
// The simulated device: what this project's 2-core development machine (AMD EPYC, AVX-512 with BF16) sustains on
// LibTorch's CPU kernels (docs/PLANNER.md): bf16 GEMMs through oneDNN as measured on LibTorch 1.13 (the machine
// is shared: PyTorch 2.11 measured 170–390 GFLOP/s at 2B widths under its usual load); f32 GEMMs now go through
// the wheel's MKL, which on this AMD CPU reaches a quarter of bf16's rate (0.20–0.25 in interleaved runs) where
// Debian's LibTorch 1.13 reached half. Chunked attention's passes over its scores reach 2 GB/s (against the GEMMs
// in the same runs; 4 GB/s on LibTorch 1.13). Its copies are memcpy clones.
constexpr double kCudaBf16Flops = 800e12;
constexpr double kCudaF32Flops = 55e12;
constexpr double kCudaMemory = 2.3e12;
constexpr double kCudaCopy = 20e9;
constexpr double kCpuF32Flops = 75e9;
constexpr double kCpuBf16Flops = 300e9;
constexpr double kCpuMemory = 2e9;
constexpr double kCpuCopy = 4e9;
// Fixed cost of calling one TorchScript part (an embed, a block, a decoder chunk): the interpreter, allocations,
// thread hand-offs. It is what tiny's stages take; at CogVideoX widths it disappears in the compute.
constexpr double kCpuCallSeconds = 5e-3;
constexpr double kCudaCallSeconds = 0.5e-3;

// The share of the rate each class of work reaches (its MFU against the measured GEMM rate, before calibration).
// On CUDA: linear layers 0.70 (cuBLAS at transformer widths ~0.8, less the norms, modulations, RoPE and residuals
// around them, which move memory and are not counted as FLOPs); fused attention 0.40 (PyTorch's flash kernel is
// FlashAttention-2, about 35% of the H100's paper peak by the FlashAttention-3 paper); the QKᵀ and PV matmuls of
// materialised attention (inner dimension 64) 0.25, though their passes over the scores bound them first; 3D
// convolutions with the norms around them 0.15. The two first are chosen so that CogVideoX-5B's guided step at
// 49×480×720 lands just under the published ~1.8 s on an H100 (docs/PLANNER.md); a GPU run is to confirm them.
// On the simulated device: what LibTorch's CPU kernels reached on this machine. Its flash kernel computes its
// softmax in float32 whatever the dtype: at head_dim 64 it ran at 0.20 of the bf16 GEMMs' speed and 0.8–0.96 of
// the f32 ones' in the same runs, so at nearly the same FLOP/s in both dtypes.
struct Efficiency {
  double dense, attention, fused_attention, conv;
};
Efficiency EfficiencyOf(const std::string& kind, const std::string& compute_dtype) {
  if (kind == "cuda") return {0.70, 0.25, 0.40, 0.15};
  return {0.85, 0.4, compute_dtype == "f32" ? 0.75 : 0.17, 0.8};
}

// Bytes each score element of chunked math attention moves through memory: q·kᵀ written, cast to f32, scaled,
// softmax (two reads, one write), cast back, read by the PV matmul. The f32 casts are no-ops in f32.
int64_t ScoreTraffic(int64_t s) { return s == 4 ? 28 : 36; }

int64_t SizeOf(const std::string& dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "int8") return 1;
  throw InvalidArgument(fmt::format("dtype {}: accepted f32, bf16, f16 or int8", dtype));
}

// int8 storage: one byte per weight plus the f32 per-output-channel scales and the vectors (biases, norms) kept in
// the compute dtype; both are small against the matrices at CogVideoX widths (about 1% at tiny's).
int64_t Int8Bytes(int64_t params) { return params + params / 64; }

int64_t ConfigInt(const StageManifest& s, const char* key, int64_t fallback) {
  auto it = s.config.find(key);
  return it == s.config.end() ? fallback : static_cast<int64_t>(std::llround(it->second));
}

VaeArch ArchOf(const StageManifest& s) {
  VaeArch a;
  for (int i = 0;; ++i) {
    auto it = s.config.find(fmt::format("block_out_channels_{}", i));
    if (it == s.config.end()) break;
    a.channels.push_back(static_cast<int64_t>(std::llround(it->second)));
  }
  if (a.channels.empty()) a.channels = {128, 256, 256, 512};
  a.layers = ConfigInt(s, "layers_per_block", 3);
  a.lc = ConfigInt(s, "latent_channels", 16);
  return a;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string Percent(double x) { return fmt::format("{:.0f}%", 100.0 * x); }

// A profile's peak counts everything on the device. With what was there when the stage began taken off
// (base_device_bytes: other stages' weights and the job's tensors), the stage's own inputs are put back.
int64_t OwnPeak(const StageProfile& p, int64_t input_bytes) {
  return p.base_device_bytes > 0 ? p.peak_device_bytes - p.base_device_bytes + input_bytes : p.peak_device_bytes;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

Attention AttentionOf(const Manifest& manifest, StageKind stage) {
  const auto fused = [&](StageKind k) -> std::optional<bool> {
    if (!manifest.has_stage(k)) return std::nullopt;
    const auto& config = manifest.stage(k).config;
    const auto it = config.find("fused_attention");
    if (it == config.end()) return std::nullopt;
    return it->second != 0;
  };
  switch (stage) {
    case StageKind::kDenoiser:
      return fused(stage).value_or(false) ? Attention::kFused : Attention::kMaterialised;
    case StageKind::kTextEncoder:
      if (const auto own = fused(stage)) return *own ? Attention::kFused : Attention::kMaterialised;
      return fused(StageKind::kDenoiser).has_value() ? Attention::kFused : Attention::kMaterialised;
    default:
      return Attention::kFused;
  }
}

DeviceRates DefaultRates(const std::string& device_kind, const std::string& compute_dtype) {
  if (device_kind == "cuda")
    return {compute_dtype == "f32" ? kCudaF32Flops : kCudaBf16Flops, kCudaMemory, kCudaCopy};
  return {compute_dtype == "f32" ? kCpuF32Flops : kCpuBf16Flops, kCpuMemory, kCpuCopy};
}

DeviceRates RatesOf(const Device& device, const std::string& compute_dtype) {
  DeviceRates r = DefaultRates(device.kind, compute_dtype);
  if (device.flops > 0) {
    // A faster device of the kind is taken to have proportionally more memory bandwidth too.
    const double scale = device.flops / DefaultRates(device.kind, "bf16").flops;
    r.flops *= scale;
    r.memory_bytes_per_second *= scale;
  }
  if (device.copy_bytes_per_second > 0) r.copy_bytes_per_second = device.copy_bytes_per_second;
  return r;
}

struct CostModel::Choice {
  std::string offload = "none";  // none | model | block | sequential
  int blocks = 0;                // K of block:K
  bool slicing = false;
  int tile = 0;
  int tile_w = 0;       // a tile's width where it is not square (tiling=HxW)
  std::string dtype;    // weight format
  std::string compute;  // compute dtype
  std::string strategy;  // canonical spelling, as the runtime records it
};

CostModel::CostModel(Manifest manifest, std::vector<StageProfile> profiles, CostModelOptions options)
    : manifest_(std::move(manifest)), options_(std::move(options)) {
  for (const auto& [kind, s] : manifest_.stages) digests_[kind] = StageDigest(manifest_, s);
  for (auto& p : profiles) {
    const auto kind = ParseStageKind(p.stage);
    if (kind && digests_.count(*kind) && digests_.at(*kind) == p.stage_digest) profiles_.push_back(std::move(p));
  }
  if (options_.calibrate) Calibrate();
}

CostModel::Choice CostModel::Parse(StageKind stage, const std::string& strategy, const std::string& dtype,
                                   const std::string& kind) const {
  const StageManifest& sm = manifest_.stage(stage);
  const int n = sm.num_blocks();
  Choice c;
  size_t start = 0;
  for (int i = 0; start <= strategy.size(); ++i) {
    const size_t end = std::min(strategy.find('+', start), strategy.size());
    const std::string item = strategy.substr(start, end - start);
    start = end + 1;
    if (i == 0) {
      if (item == "none" || item == "model" || item == "sequential") {
        c.offload = item;
      } else if (item.rfind("block:", 0) == 0 && item.size() > 6 &&
                 item.find_first_not_of("0123456789", 6) == std::string::npos && item.size() < 12) {
        c.offload = "block";
        c.blocks = std::stoi(item.substr(6));
      } else {
        throw InvalidArgument(
            fmt::format("strategy {}: accepted none, model, block:K or sequential, with +slicing and +tiling=T for "
                        "the decoder",
                        strategy));
      }
      continue;
    }
    const bool decoder = stage == StageKind::kVaeDecoder;
    if (decoder && item == "slicing") {
      c.slicing = true;
    } else if (decoder && item.rfind("tiling=", 0) == 0 && ParseTile(item.substr(7), c.tile, c.tile_w)) {
    } else {
      throw InvalidArgument(fmt::format("strategy {}: '{}' is not {}", strategy, item,
                                        decoder ? "slicing or tiling=T" : "accepted for this stage (only the decoder "
                                                                          "takes +slicing and +tiling=T)"));
    }
  }
  // As the runtime's executor does: no blocks (or K covering them all) is model offload.
  if ((c.offload == "block" || c.offload == "sequential") && n == 0) c.offload = "model";
  if (c.offload == "block" && (c.blocks < 1 || c.blocks >= n)) {
    if (c.blocks < 1) throw InvalidArgument(fmt::format("strategy {}: accepted block:K with K ≥ 1", strategy));
    c.offload = "model";
  }
  c.strategy = c.offload == "block" ? fmt::format("block:{}", c.blocks) : c.offload;
  if (c.slicing) c.strategy += "+slicing";
  if (c.tile > 0) c.strategy += fmt::format("+tiling={}", c.tile);
  if (c.tile > 0 && c.tile_w > 0 && c.tile_w != c.tile) c.strategy += fmt::format("x{}", c.tile_w);
  SizeOf(dtype);  // validates
  c.dtype = dtype;
  c.compute = dtype != "int8" ? dtype : kind == "cuda" ? "bf16" : DTypeName(sm.dtype);
  return c;
}

Estimate CostModel::Raw(StageKind stage, const Choice& c, const DeviceRates& rates, const std::string& kind,
                        const Job& job) const {
  const StageManifest& sm = manifest_.stage(stage);
  const int64_t s = SizeOf(c.compute);
  const bool diffusers = options_.implementation == Implementation::kDiffusers;
  // diffusers' transformer calls SDPA; transformers' T5 computes its scores as Reel's older packages do.
  const Attention attention = diffusers && stage == StageKind::kDenoiser ? Attention::kFused
                              : diffusers && stage == StageKind::kTextEncoder ? Attention::kMaterialised
                                                                              : AttentionOf(manifest_, stage);
  const Impl impl{attention == Attention::kFused, !diffusers, diffusers, kind == "cpu"};
  Estimate e;
  e.attention = attention;

  // Weights: on the device in the compute dtype (int8 codes are expanded there), on the host as stored.
  int64_t total = 0, edges = 0, block = 0, nblocks = 0;
  for (const auto& p : sm.parts) {
    total += p.params;
    if (p.role == "block") {
      block = std::max(block, p.params);
      ++nblocks;
    } else {
      edges += p.params;
    }
  }
  const auto stored = [&](int64_t params) { return c.dtype == "int8" ? Int8Bytes(params) : params * SizeOf(c.dtype); };
  if (c.offload == "none" || c.offload == "model") e.weight_peak_bytes = total * s;
  if (c.offload == "block") e.weight_peak_bytes = (edges + (c.blocks + 1) * block) * s;
  if (c.offload == "sequential") e.weight_peak_bytes = (edges + block) * s;
  e.resident_bytes = c.offload == "none" ? total * s : 0;
  e.host_bytes = stored(total);
  e.pinned_bytes = kind == "cuda" && c.offload != "none" ? e.host_bytes : 0;

  // Activations and work.
  const int64_t B = job.batch();
  const auto& v = manifest_.vae;
  const int64_t f = (job.frames - 1) / v.temporal_compression + 1;
  const int64_t h = job.height / v.spatial_compression, w = job.width / v.spatial_compression;
  const int64_t T = manifest_.tokenizer.max_length;
  Work work;
  const int runs = stage == StageKind::kDenoiser ? job.steps : 1;
  switch (stage) {
    case StageKind::kTextEncoder: {
      const T5Dims d{B, T, ConfigInt(sm, "d_model", 4096), ConfigInt(sm, "num_heads", 64), ConfigInt(sm, "d_kv", 64),
                     ConfigInt(sm, "d_ff", 10240), nblocks};
      e.input_bytes = B * T * 8;
      e.activation_bytes = TextEncoderActivations(d, s, impl, work);
      work.calls = nblocks + 2;
      break;
    }
    case StageKind::kDenoiser: {
      const int64_t D = ConfigInt(sm, "inner_dim", 3072);
      const DitDims d{B,
                      f,
                      ConfigInt(sm, "in_channels", 16),
                      h,
                      w,
                      T,
                      ConfigInt(sm, "text_embed_dim", 4096),
                      D,
                      ConfigInt(sm, "num_heads", 48),
                      ConfigInt(sm, "head_dim", 64),
                      ConfigInt(sm, "time_embed_dim", 512),
                      ConfigInt(sm, "patch_size", 2),
                      ConfigInt(sm, "out_channels", 16),
                      ConfigInt(sm, "ff_mult", 4),
                      nblocks,
                      ConfigInt(sm, "rotary", 1) != 0,
                      // A learned table (5B-I2V) is added as it is; the model only accepts its sample size.
                      ConfigInt(sm, "learned_positions", 0) != 0};
      const int64_t lc = v.latent_channels;
      e.input_bytes = (manifest_.image_conditioned ? 2 : 1) * f * lc * h * w * 4 +
                      B * T * d.Dt * DTypeBytes(sm.inputs.size() > 1 ? sm.inputs[1].dtype : sm.dtype);
      e.activation_bytes = DenoiserActivations(d, s, impl, e.input_bytes, work);
      work.dense *= job.steps;
      work.attention *= job.steps;
      work.scores *= job.steps;
      work.calls = static_cast<double>(job.steps) * (nblocks + 2);
      break;
    }
    case StageKind::kVaeDecoder: {
      const VaeCost vc = DecoderActivations(ArchOf(sm), f, h, w, s, c.slicing, c.tile, c.tile_w, impl);
      e.input_bytes = ArchOf(sm).lc * f * h * w * 4;
      e.activation_bytes = vc.peak;
      work.conv = vc.flops;
      work.calls = vc.calls;
      const int64_t video = 3 * int64_t{job.frames} * job.height * job.width * 4;
      if (c.tile > 0 && (h > c.tile / 8 || w > (c.tile_w > 0 ? c.tile_w : c.tile) / 8))
        e.run_host_bytes = video + 2 * video / job.height * std::min<int64_t>(c.tile, job.height);
      else
        e.run_host_bytes = c.slicing ? 2 * video : video;
      break;
    }
    case StageKind::kVaeEncoder: {
      const VaeCost vc = EncoderActivations(ArchOf(sm), job.height, job.width, s, impl);
      e.input_bytes = 3 * int64_t{job.height} * job.width * 4;
      e.activation_bytes = vc.peak;
      work.conv = vc.flops;
      work.calls = vc.calls;
      break;
    }
  }
  e.dense_flops = work.dense + work.conv;
  e.attention_flops = work.attention;
  const Efficiency eff = EfficiencyOf(kind, c.compute);
  // Fused attention runs at its kernels' share of the rate; materialised attention is bound by whichever is slower,
  // its matmuls or the passes over its scores.
  const double attention_seconds =
      impl.fused_attention ? work.attention / (rates.flops * eff.fused_attention)
                           : std::max(work.attention / (rates.flops * eff.attention),
                                      work.scores * ScoreTraffic(s) / rates.memory_bytes_per_second);
  e.compute_seconds = work.dense / (rates.flops * eff.dense) + work.conv / (rates.flops * eff.conv) +
                      attention_seconds + work.calls * (kind == "cuda" ? kCudaCallSeconds : kCpuCallSeconds);

  // Copies per job: model copies everything once; block:K and sequential copy every block on every run. block:K
  // places K − 1 blocks synchronously when a run starts (the first was prefetched) and copies each of the others
  // behind the previous block's compute, so only what a copy takes beyond that compute is added; sequential copies
  // in line.
  const double bw = rates.copy_bytes_per_second;
  const int64_t block_copy = stored(block), edge_copy = stored(edges);
  if (c.offload == "model") {
    e.copy_bytes = stored(total);
    e.copy_seconds = e.copy_bytes / bw;
  } else if (c.offload == "block" || c.offload == "sequential") {
    e.copy_bytes = edge_copy + static_cast<int64_t>(runs) * nblocks * block_copy;
    const double x = block_copy / bw;
    const double per_block = nblocks > 0 ? e.compute_seconds / runs / nblocks : 0;  // the blocks dominate
    const double extra = c.offload == "sequential"
                             ? nblocks * x
                             : (c.blocks - 1) * x + (nblocks - c.blocks + 1) * std::max(0.0, x - per_block);
    e.copy_seconds = edge_copy / bw + runs * extra;
  }
  return e;
}

const Calibration* CostModel::CalibrationOf(StageKind stage, const std::string& kind) const {
  for (const auto& c : calibrations_)
    if (c.stage == stage && c.device_kind == kind) return &c;
  return nullptr;
}

Estimate CostModel::Estimated(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
                              const std::string& dtype, bool calibrated) const {
  const Choice c = Parse(stage, strategy, dtype, device.kind);
  Estimate e = Raw(stage, c, RatesOf(device, c.compute), device.kind, job);
  if (const Calibration* cal = calibrated ? CalibrationOf(stage, device.kind) : nullptr) {
    e.activation_bytes = static_cast<int64_t>(std::llround(e.activation_bytes * cal->activation_scale));
    e.compute_seconds *= cal->seconds_scale;
    e.copy_seconds *= cal->seconds_scale;
  }
  return e;
}

void CostModel::Calibrate() {
  struct Point {
    double weights, activation, measured_peak;
    double seconds, measured_seconds;
  };
  std::map<std::pair<StageKind, std::string>, std::vector<Point>> points;
  for (const auto& p : profiles_) {
    if (p.outcome != "ok" || p.peak_device_bytes <= 0) continue;
    const StageKind stage = *ParseStageKind(p.stage);
    Job job{p.frames, p.height, p.width, std::max(1, p.steps), p.batch > 1 ? 6.0 : 1.0};
    try {
      const Choice c = Parse(stage, p.strategy, p.dtype, p.device_kind);
      const Estimate e = Raw(stage, c, DefaultRates(p.device_kind, c.compute), p.device_kind, job);
      points[{stage, p.device_kind}].push_back(Point{static_cast<double>(e.weight_peak_bytes),
                                                     static_cast<double>(e.activation_bytes),
                                                     static_cast<double>(OwnPeak(p, e.input_bytes)), e.seconds(),
                                                     p.wall_seconds});
    } catch (const Error&) {
      // A profile of a choice this model does not price (a strategy spelled otherwise): not evidence.
    }
  }
  // Least squares on the relative peak error for the activation scale; the mean log ratio for seconds.
  const auto fit = [](const std::vector<Point>& pts, size_t skip) {
    double num = 0, den = 0, logs = 0;
    int n = 0, nt = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      if (i == skip) continue;
      const Point& q = pts[i];
      num += q.activation * (q.measured_peak - q.weights) / (q.measured_peak * q.measured_peak);
      den += q.activation * q.activation / (q.measured_peak * q.measured_peak);
      ++n;
      if (q.seconds > 0 && q.measured_seconds > 0) {
        logs += std::log(q.measured_seconds / q.seconds);
        ++nt;
      }
    }
    const double a = n > 0 && den > 0 ? std::clamp(num / den, 0.25, 4.0) : 1.0;
    const double t = nt > 0 ? std::exp(logs / nt) : 1.0;
    return std::pair<double, double>(a, t);
  };
  for (const auto& [key, pts] : points) {
    Calibration cal;
    cal.stage = key.first;
    cal.device_kind = key.second;
    cal.profiles = static_cast<int>(pts.size());
    std::tie(cal.activation_scale, cal.seconds_scale) = fit(pts, pts.size());
    std::vector<double> pb, pa, sb, sa;
    for (size_t i = 0; i < pts.size(); ++i) {
      const Point& q = pts[i];
      const auto [a, t] = pts.size() > 1 ? fit(pts, i) : std::pair<double, double>(cal.activation_scale, cal.seconds_scale);
      pb.push_back(std::abs(q.weights + q.activation - q.measured_peak) / q.measured_peak);
      pa.push_back(std::abs(q.weights + a * q.activation - q.measured_peak) / q.measured_peak);
      if (q.measured_seconds > 0) {
        sb.push_back(std::abs(q.seconds - q.measured_seconds) / q.measured_seconds);
        sa.push_back(std::abs(t * q.seconds - q.measured_seconds) / q.measured_seconds);
      }
    }
    cal.peak_error_before = Median(pb);
    cal.peak_error_after = Median(pa);
    cal.seconds_error_before = Median(sb);
    cal.seconds_error_after = Median(sa);
    calibrations_.push_back(cal);
  }
}

Option CostModel::Price(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
                        const std::string& dtype) const {
  const Choice c = Parse(stage, strategy, dtype, device.kind);
  const Estimate e = Estimated(stage, device, job, c.strategy, dtype);
  Option o;
  o.strategy = c.strategy;
  o.dtype = c.dtype;
  o.compute_dtype = c.compute;
  o.resident_device_bytes = e.resident_bytes;
  o.peak_device_bytes = e.peak_bytes();
  o.host_bytes = e.host_bytes;
  o.pinned_bytes = e.pinned_bytes;
  o.run_host_bytes = e.run_host_bytes;
  o.seconds = e.seconds();

  // Profiles of this very choice: same stage weights, device kind, strategy, weight format and shape.
  std::vector<double> peaks, seconds;
  int64_t failed_at = 0;
  int failures = 0;
  for (const auto& p : profiles_) {
    if (p.stage != StageKindName(stage) || p.device_kind != device.kind || p.dtype != c.dtype ||
        p.frames != job.frames || p.height != job.height || p.width != job.width || p.batch != job.batch())
      continue;
    try {
      if (Parse(stage, p.strategy, p.dtype, p.device_kind).strategy != c.strategy) continue;
    } catch (const Error&) {
      continue;
    }
    if (p.outcome == "ok") {
      peaks.push_back(static_cast<double>(OwnPeak(p, e.input_bytes)));
      // The denoiser's time is per step: a profile of other steps scales.
      const double scale = stage == StageKind::kDenoiser && p.steps > 0 ? static_cast<double>(job.steps) / p.steps : 1.0;
      seconds.push_back(p.wall_seconds * scale);
    } else if (p.outcome == "oom") {
      ++failures;
      // What failed needed more than the capacity left after what was already there.
      const int64_t limit = p.device_capacity_bytes > 0 ? p.device_capacity_bytes : p.peak_device_bytes;
      failed_at = std::max(failed_at, limit - p.base_device_bytes + e.input_bytes + 1);
    }
  }
  if (!peaks.empty()) {
    o.measured = true;
    o.peak_device_bytes = static_cast<int64_t>(*std::max_element(peaks.begin(), peaks.end()));
    o.seconds = Median(seconds);
    o.basis = fmt::format("measured ({} run{})", peaks.size(), peaks.size() == 1 ? "" : "s");
    return o;
  }
  const Calibration* cal = CalibrationOf(stage, device.kind);
  o.basis = cal ? fmt::format("estimate (median error {} peak, {} time on {} profile{})", Percent(cal->peak_error_after),
                              Percent(cal->seconds_error_after), cal->profiles, cal->profiles == 1 ? "" : "s")
                : fmt::format("estimate (uncalibrated: no profiles of {} on {})", StageKindName(stage), device.kind);
  if (failures > 0 && failed_at > o.peak_device_bytes) {
    o.peak_device_bytes = failed_at;
    o.basis += fmt::format("; raised to what ran out of memory ({} run{})", failures, failures == 1 ? "" : "s");
    return o;
  }
  // Another choice of this stage ran out of memory on this device kind at this shape although its estimate fitted:
  // the estimator under-predicts here, so every estimate of the stage is scaled by the worst such miss.
  double worst = 1.0;
  for (const auto& p : profiles_) {
    if (p.outcome != "oom" || p.stage != StageKindName(stage) || p.device_kind != device.kind ||
        p.frames != job.frames || p.height != job.height || p.width != job.width || p.batch != job.batch() ||
        p.device_capacity_bytes <= 0)
      continue;
    try {
      const Estimate pe = Estimated(stage, device, job, p.strategy, p.dtype);
      const double need = static_cast<double>(p.device_capacity_bytes - p.base_device_bytes + pe.input_bytes);
      if (pe.peak_bytes() > 0) worst = std::max(worst, need / static_cast<double>(pe.peak_bytes()));
    } catch (const Error&) {
    }
  }
  if (worst > 1.0) {
    o.peak_device_bytes = static_cast<int64_t>(static_cast<double>(o.peak_device_bytes) * worst);
    o.basis += fmt::format("; raised ×{:.2f}: a choice estimated to fit ran out of memory", worst);
  }
  return o;
}

std::vector<Option> CostModel::Options(StageKind stage, const Device& device, const Job& job) const {
  std::vector<Option> out;
  if (!manifest_.has_stage(stage)) return out;
  const StageManifest& sm = manifest_.stage(stage);
  const int n = sm.num_blocks();
  std::vector<std::string> strategies = {"none", "model"};
  if (n > 0) {
    for (int k : options_.block_windows)
      if (k >= 1 && k < n) strategies.push_back(fmt::format("block:{}", k));
    strategies.push_back("sequential");
  }
  if (stage == StageKind::kVaeDecoder) {
    const int64_t h = job.height / manifest_.vae.spatial_compression, w = job.width / manifest_.vae.spatial_compression;
    std::vector<std::string> modes = {"", "+slicing"};
    for (int t : options_.vae_tiles)
      if (t > 0 && (h > t / 8 || w > t / 8)) {
        modes.push_back(fmt::format("+tiling={}", t));
        modes.push_back(fmt::format("+slicing+tiling={}", t));
      }
    std::vector<std::string> all;
    for (const auto& s : strategies)
      for (const auto& m : modes) all.push_back(s + m);
    strategies = all;
  }
  std::vector<std::string> dtypes = {"f32", "bf16"};
  if (device.kind == "cuda") {
    dtypes = {"bf16", "f32", "int8"};
    if (stage != StageKind::kTextEncoder) dtypes.insert(dtypes.begin() + 1, "f16");  // T5 overflows in f16
  }
  for (const auto& d : dtypes)
    for (const auto& s : strategies) out.push_back(Price(stage, device, job, s, d));
  return out;
}

int64_t CostModel::OutputBytes(StageKind stage, const Job& job) const {
  // The denoiser's output that travels on is the final latents of one video, which is the decoder's input.
  const StageKind of = stage == StageKind::kDenoiser && manifest_.has_stage(StageKind::kVaeDecoder) ? StageKind::kVaeDecoder : stage;
  const StageManifest& sm = manifest_.stage(of);
  JobShape shape;
  shape.batch = stage == StageKind::kTextEncoder ? job.batch() : 1;
  shape.frames = job.frames;
  shape.height = job.height;
  shape.width = job.width;
  shape.text_tokens = manifest_.tokenizer.max_length;
  const auto symbols = shape.symbols(manifest_.vae);
  int64_t bytes = 0;
  for (const auto& t : of == stage ? sm.outputs : sm.inputs) {
    int64_t n = DTypeBytes(t.dtype);
    for (int64_t d : ResolveShape(t, symbols)) n *= d;
    bytes += n;
  }
  return bytes;
}

}  // namespace reel::planner
