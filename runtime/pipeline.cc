#include "runtime/pipeline.h"

#include <fmt/format.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include "common/error.h"
#include "package/tokenizer.h"
#include "profiler/host_memory.h"
#include "runtime/device_memory.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"

namespace reel {

namespace {

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The interpreter's message ends with the error itself after a TorchScript traceback.
std::string LastLine(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  const auto nl = s.rfind('\n');
  return nl == std::string::npos ? s : s.substr(nl + 1);
}

// Uses a stage for the duration of a call unless the caller already began it (the denoising loop does).
class StageUse {
 public:
  explicit StageUse(StageExecutor& e, bool& active) : e_(e), active_(active), owner_(!active) {
    if (owner_) {
      e_.Begin();
      active_ = true;
    }
  }
  ~StageUse() {
    if (owner_) {
      active_ = false;
      try {
        e_.End();
      } catch (...) {
      }
    }
  }
  bool owner() const { return owner_; }  // the stage ends with this use
  void Finish() {
    if (owner_) {
      owner_ = false;
      active_ = false;
      e_.End();
    }
  }

 private:
  StageExecutor& e_;
  bool& active_;
  bool owner_;
};

thread_local std::map<StageKind, bool> stage_active;

}  // namespace

// Runs `fn` with allocations accounted to the device; a TorchScript failure is either the device running out of
// memory (DeviceOutOfMemory naming the stage, strategy and bytes) or the package's fault (BadPackage).
template <typename Fn>
auto Runtime::OnDevice(StageKind k, Fn&& fn) {
  DeviceScope device;
  // On the CPU, TorchScript's profiling executor only costs: each part's first call runs instrumented and its second
  // compiles an optimised graph that runs no faster there (no CPU fuser); a text encoder runs once per job and a
  // decoder once per chunk, so small jobs paid it on every stage (docs/BENCHMARKS.md). CUDA keeps it: it feeds the
  // fuser. The setting is per thread, so it is set around every call.
  torch::jit::GraphOptimizerEnabledGuard optimize(device_.device().is_cuda());
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // The TorchScript interpreter rethrows what an allocation raised as std::runtime_error.
    if (auto oom = device_.TakeOutOfMemory(e)) {
      failed_stage_ = k;
      executor(k).stats().peak_device_bytes = std::max(executor(k).stats().peak_device_bytes, device_.Memory().peak);
      const std::string strategy = strategies().at(k);
      throw StageOutOfMemory(
          k, strategy, weight_formats().at(k),
          fmt::format("device {}: out of memory in stage {} (strategy {}): asked {} with {} in use, {} free",
                      device_.Describe(), StageKindName(k), strategy, FormatBytes(oom->requested),
                      FormatBytes(oom->used), FormatBytes(std::max<int64_t>(0, oom->capacity - oom->used))));
    }
    throw BadPackage(fmt::format("package {}: stage {} failed on inputs shaped as the manifest says: {}",
                                 package_.dir().string(), StageKindName(k), LastLine(e.what())));
  }
}

Runtime::Runtime(StagePackage& package, const RunOptions& options, RunObserver* observer)
    : package_(package),
      options_(options),
      device_(options.device ? *options.device : SimulatedDevice()),
      observer_(observer) {
  for (const auto& [kind, sm] : package_.manifest().stages) {
    if (!package_.loaded(kind)) continue;
    Offload off;
    if (auto it = options_.offload.find(kind); it != options_.offload.end()) off = it->second;
    executors_[kind] = std::make_unique<StageExecutor>(kind, package_.stage(kind), off, device_, observer_);
    if (auto it = options_.dtype.find(kind); it != options_.dtype.end() && it->second != sm.dtype) {
      executors_[kind]->ConvertHost(ToTorch(it->second));
      package_.SetStageDtype(kind, it->second);
    }
  }
  for (auto& [kind, e] : executors_)
    if (auto it = options_.int8.find(kind); it != options_.int8.end() && it->second) e->QuantizeHost();
  if (options_.host_budget > 0) {
    const int64_t total = host_weight_bytes();
    const int64_t te = executors_.count(StageKind::kTextEncoder) ? executor(StageKind::kTextEncoder).weight_bytes() : 0;
    if (total > options_.host_budget) {
      if (total - te > options_.host_budget) {
        std::string parts;
        for (const auto& [k, e] : executors_)
          parts += fmt::format("{}{} {}", parts.empty() ? "" : ", ", StageKindName(k), FormatBytes(e->weight_bytes()));
        throw InvalidArgument(fmt::format(
            "--host-memory {}: the weights need {} on the host ({}); accepted at least {} (the text encoder is "
            "released after it runs), or store weights smaller with --weights int8 or --dtype bf16",
            FormatBytes(options_.host_budget), FormatBytes(total), parts, FormatBytes(total - te)));
      }
      release_text_encoder_ = true;
    }
  }
  for (auto& [kind, e] : executors_) OnDevice(kind, [&] { e->PlaceResident(); });
}

int64_t Runtime::host_weight_bytes() const {
  int64_t n = 0;
  for (const auto& [k, e] : executors_) n += e->weight_bytes();
  return n;
}

std::map<StageKind, std::string> Runtime::weight_formats() const {
  std::map<StageKind, std::string> out;
  for (const auto& [k, e] : executors_) {
    auto it = options_.int8.find(k);
    out[k] = it != options_.int8.end() && it->second ? "int8" : DTypeName(package_.manifest().stage(k).dtype);
  }
  return out;
}

Runtime::~Runtime() = default;

StageExecutor& Runtime::executor(StageKind k) {
  auto it = executors_.find(k);
  if (it == executors_.end())
    throw BadPackage(fmt::format("package {}: has no {} stage", package_.dir().string(), StageKindName(k)));
  return *it->second;
}

std::map<StageKind, StageStats> Runtime::stats() const {
  std::map<StageKind, StageStats> out;
  for (const auto& [k, e] : executors_) out[k] = e->stats();
  return out;
}

std::map<StageKind, std::string> Runtime::strategies() const {
  std::map<StageKind, std::string> out;
  for (const auto& [k, e] : executors_) {
    std::string s = e->offload().ToString();
    if (k == StageKind::kVaeDecoder && !VaeDecodeName(options_.vae).empty()) s += "+" + VaeDecodeName(options_.vae);
    out[k] = s;
  }
  return out;
}

torch::Tensor Runtime::EncodeText(const torch::Tensor& ids, int batch) {
  const auto k = StageKind::kTextEncoder;
  JobShape shape;
  shape.batch = batch;
  shape.text_tokens = static_cast<int>(ids.size(1));
  const auto sym = shape.symbols(package_.manifest().vae);
  package_.CheckTensor(k, false, 0, ids, sym);
  StageExecutor& e = executor(k);
  return OnDevice(k, [&] {
    StageUse use(e, stage_active[k]);
    torch::NoGradGuard no_grad;
    const auto t0 = Clock::now();
    auto embedded = e.Part(0).forward({ids}).toTuple();
    torch::Tensor h = embedded->elements()[0].toTensor();
    const torch::Tensor bias = embedded->elements()[1].toTensor();
    e.stats().compute_seconds += Since(t0);
    e.RunBlocks([&](torch::jit::Module& m) { h = m.forward({h, bias}).toTensor(); }, /*another_call=*/false);
    const auto t1 = Clock::now();
    h = e.Part(e.num_parts() - 1).forward({h}).toTensor();
    e.stats().compute_seconds += Since(t1);
    use.Finish();
    package_.CheckTensor(k, true, 0, h, sym);
    return h;
  });
}

torch::Tensor Runtime::EncodeImage(const torch::Tensor& image, const JobShape& shape) {
  const auto k = StageKind::kVaeEncoder;
  const auto sym = shape.symbols(package_.manifest().vae);
  package_.CheckTensor(k, false, 0, image, sym);
  StageExecutor& e = executor(k);
  return OnDevice(k, [&] {
    StageUse use(e, stage_active[k]);
    torch::NoGradGuard no_grad;
    const auto t0 = Clock::now();
    torch::Tensor moments = e.Part(0).forward({image}).toTensor();
    e.stats().compute_seconds += Since(t0);
    use.Finish();
    package_.CheckTensor(k, true, 0, moments, sym);
    return moments;
  });
}

torch::Tensor Runtime::DenoiseStep(const torch::Tensor& latents, const torch::Tensor& text,
                                   const torch::Tensor& timestep, const JobShape& shape, bool another_step) {
  const auto k = StageKind::kDenoiser;
  const auto sym = shape.symbols(package_.manifest().vae);
  package_.CheckTensor(k, false, 0, latents, sym);
  package_.CheckTensor(k, false, 1, text, sym);
  package_.CheckTensor(k, false, 2, timestep, sym);
  StageExecutor& e = executor(k);
  torch::NoGradGuard no_grad;
  auto t0 = Clock::now();
  auto out = e.Part(0).forward({latents, text, timestep}).toTuple();
  const auto& el = out->elements();
  torch::Tensor video = el[0].toTensor(), txt = el[1].toTensor();
  const torch::Tensor emb = el[2].toTensor(), cos = el[3].toTensor(), sin = el[4].toTensor();
  e.stats().compute_seconds += Since(t0);
  const int64_t f = latents.size(1), h = latents.size(3), w = latents.size(4);
  if (options_.sequence_group && options_.sequence_group->size() > 1) {
    torch::Tensor v = DenoiseShare(e, video, txt, emb, cos, sin, f, h, w, another_step);
    package_.CheckTensor(k, true, 0, v, sym);
    return v;
  }
  e.RunBlocks([&](torch::jit::Module& m) {
    auto r = m.forward({video, txt, emb, cos, sin}).toTuple();
    video = r->elements()[0].toTensor();
    txt = r->elements()[1].toTensor();
  }, another_step);
  t0 = Clock::now();
  torch::Tensor v = e.Part(e.num_parts() - 1).forward({video, emb, f, h, w}).toTensor();
  e.stats().compute_seconds += Since(t0);
  package_.CheckTensor(k, true, 0, v, sym);
  return v;
}

torch::Tensor Runtime::DenoiseShare(StageExecutor& e, torch::Tensor video, torch::Tensor txt, const torch::Tensor& emb,
                                    torch::Tensor cos, torch::Tensor sin, int64_t f, int64_t h, int64_t w,
                                    bool another_step) {
  SequenceGroup& g = *options_.sequence_group;
  const int rank = g.rank();
  const int64_t B = video.size(0), T = txt.size(1), D = video.size(2);
  const Shares tokens = ShareEvenly(video.size(1), g.size());
  const int64_t mine = tokens.count(rank), from = tokens.offset(rank);
  video = video.narrow(1, from, mine);
  if (cos.numel() > 0) {  // RoPE's tables are per video token
    cos = cos.narrow(0, from, mine);
    sin = sin.narrow(0, from, mine);
  }
  const auto method = [&](torch::jit::Module& m, const char* name) {
    auto found = m.find_method(name);
    if (!found)
      throw BadPackage(fmt::format("{}: the denoiser has no '{}' method, which sequence parallelism needs; packages "
                                   "made before it (Reel's presets before the -r5 cache, older exports) must be "
                                   "exported again",
                                   package_.manifest().name, name));
    return *found;
  };
  e.RunBlocks([&](torch::jit::Module& m) {
    // (a vector: GCC's bounds check misreads a tuple's inline storage of three)
    const std::vector<c10::IValue> el = method(m, "attend_in")({video, txt, emb, cos, sin}).toTupleRef().elements().vec();
    const int64_t H = el[0].toTensor().size(1);
    if (H < g.size())
      throw InvalidArgument(fmt::format("sequence-parallel degree {}: accepted at most the denoiser's {} heads",
                                        g.size(), H));
    const Shares heads = ShareEvenly(H, g.size());
    // This rank's heads for every token: text tokens (every rank holds them all) by slicing, video tokens by the
    // all-to-all.
    const auto to_heads = [&](const torch::Tensor& x) {
      return torch::cat({x.narrow(2, 0, T).narrow(1, heads.offset(rank), heads.count(rank)),
                         g.TokensToHeads(x.narrow(2, T, mine), tokens, heads)},
                        2);
    };
    const torch::Tensor a = method(m, "attention")({to_heads(el[0].toTensor()), to_heads(el[1].toTensor()),
                                                    to_heads(el[2].toTensor())})
                                .toTensor();
    const torch::Tensor a_text = g.Gather(a.narrow(2, 0, T), 1, heads);
    const torch::Tensor a_video = g.HeadsToTokens(a.narrow(2, T, a.size(2) - T), tokens, heads);
    const torch::Tensor joined = torch::cat({a_text, a_video}, 2).transpose(1, 2).reshape({B, T + mine, D});
    auto out = method(m, "attend_out")({video, txt, emb, joined, el[3], el[4]}).toTuple();
    video = out->elements()[0].toTensor();
    txt = out->elements()[1].toTensor();
  }, another_step);
  const auto t0 = Clock::now();
  torch::jit::Module& head = e.Part(e.num_parts() - 1);
  const torch::Tensor projected = g.Gather(method(head, "project")({video, emb}).toTensor(), 1, tokens);
  torch::Tensor v = method(head, "unpatchify")({projected, f, h, w}).toTensor();
  e.stats().compute_seconds += Since(t0);
  return v;
}

torch::Tensor Runtime::Denoise(const torch::Tensor& latents, const torch::Tensor& text, const torch::Tensor& timestep,
                               const JobShape& shape, bool last_step) {
  const auto k = StageKind::kDenoiser;
  return OnDevice(k, [&] {
    StageUse use(executor(k), stage_active[k]);
    torch::Tensor v = DenoiseStep(latents, text, timestep, shape, /*another_step=*/!use.owner() && !last_step);
    use.Finish();
    return v;
  });
}

torch::Tensor Runtime::DecodeLatents(const torch::Tensor& latents, const JobShape& shape) {
  const auto k = StageKind::kVaeDecoder;
  const auto sym = shape.symbols(package_.manifest().vae);
  package_.CheckTensor(k, false, 0, latents, sym);
  StageExecutor& e = executor(k);
  return OnDevice(k, [&] {
    StageUse use(e, stage_active[k]);
    torch::NoGradGuard no_grad;
    const auto t0 = Clock::now();
    // Decoded pieces leave the device as they are produced, as a GPU run copies frames to the host.
    torch::Tensor video =
        DecodeVae(e.Part(0), latents, options_.vae, [this](const torch::Tensor& t) { return device_.Download(t); });
    e.stats().compute_seconds += Since(t0);
    use.Finish();
    package_.CheckTensor(k, true, 0, video, sym);
    return video;
  });
}

JobShape Runtime::ShapeOf(const GenerateRequest& r) const {
  JobShape shape;
  shape.frames = r.frames;
  shape.height = r.height;
  shape.width = r.width;
  shape.text_tokens = package_.manifest().tokenizer.max_length;
  return shape;
}

void Runtime::BeginStage(StageKind k) {
  if (stage_active[k]) return;
  OnDevice(k, [&] {
    executor(k).Begin();
    return 0;
  });
  stage_active[k] = true;
}

void Runtime::EndStage(StageKind k) {
  if (!stage_active[k]) return;
  stage_active[k] = false;
  OnDevice(k, [&] {
    executor(k).End();
    return 0;
  });
}

torch::Tensor Runtime::TextIds(const GenerateRequest& r) const {
  const Manifest& m = package_.manifest();
  const bool cfg = r.guidance > 1.0;
  // Negative first, as diffusers concatenates [negative, positive].
  const auto tokenizer = MakeTokenizer(m.tokenizer, package_.dir());
  std::vector<int64_t> ids;
  if (cfg) ids = tokenizer->Encode(r.negative_prompt);
  const auto pos = tokenizer->Encode(r.prompt);
  ids.insert(ids.end(), pos.begin(), pos.end());
  return torch::tensor(ids, torch::kInt64).view({cfg ? 2 : 1, static_cast<int64_t>(m.tokenizer.max_length)});
}

torch::Tensor Runtime::EncodePrompt(const GenerateRequest& r) {
  const Manifest& m = package_.manifest();
  torch::NoGradGuard no_grad;
  DeviceScope device;
  const torch::Tensor ids = TextIds(r).to(device_.device());
  const auto text_dtype = ToTorch(m.stage(StageKind::kDenoiser).inputs.at(1).dtype);
  torch::Tensor text = EncodeText(ids, static_cast<int>(ids.size(0))).to(text_dtype);
  if (release_text_encoder_) {
    // It runs once per job: under a tight host budget its weights make room for the rest.
    executor(StageKind::kTextEncoder).ReleaseHost();
    release_text_encoder_ = false;
  }
  return text;
}

torch::Tensor Runtime::EncodeImageMoments(const GenerateRequest& r, const std::vector<uint8_t>& image_rgb) {
  torch::NoGradGuard no_grad;
  DeviceScope device;
  // [H, W, 3] uint8 → [1, 3, 1, H, W] in [-1, 1].
  torch::Tensor img = torch::from_blob(const_cast<uint8_t*>(image_rgb.data()), {r.height, r.width, 3}, torch::kUInt8)
                          .permute({2, 0, 1})
                          .to(torch::kFloat32)
                          .div(127.5)
                          .sub(1.0)
                          .unsqueeze(0)
                          .unsqueeze(2)
                          .contiguous()
                          .to(device_.device());
  return EncodeImage(img, ShapeOf(r));
}

torch::Tensor Runtime::DenoiseLatents(const GenerateRequest& r, const torch::Tensor& text,
                                      const torch::Tensor& moments, const GenerateHooks& hooks,
                                      const GuidanceBranch& branch) {
  const Manifest& m = package_.manifest();
  const bool cfg = r.guidance > 1.0;
  const bool split = cfg && branch != nullptr;
  const int batch = cfg && !split ? 2 : 1;
  const JobShape shape = ShapeOf(r);
  const auto sym = shape.symbols(m.vae);
  const int64_t f = sym.at("f"), h = sym.at("h"), w = sym.at("w");
  const int64_t lc = m.vae.latent_channels;
  torch::NoGradGuard no_grad;
  DeviceScope device;
  // diffusers' precision policy: the latents live in the denoiser's dtype (diffusers' prompt_embeds.dtype) and are
  // cast back to it after every scheduler step; the prediction and the guidance are float32.
  const auto latent_dtype = ToTorch(m.stage(StageKind::kDenoiser).dtype);
  const auto on_device = torch::TensorOptions(torch::kFloat32).device(device_.device());
  // Every draw is diffusers' (DiffusersNoise from the job's generator, in diffusers' order: the image posterior, the
  // initial latents, then the DPM sampler's noise), so a seed gives diffusers' video.
  at::Generator gen = JobGenerator(r.seed);
  auto noise_dtype = [&](at::ScalarType dtype) { return options_.f32_noise ? torch::kFloat32 : dtype; };
  torch::Tensor image_latents;
  if (m.image_conditioned) {
    if (!moments.defined()) throw Internal("image-to-video denoising needs the image encoder's moments");
    // A posterior sample, as CogVideoX-I2V uses (not the mean), in the image encoder's dtype as diffusers' latent
    // distribution draws it, then scaled into the denoiser's latent space in the latents' dtype.
    const torch::Tensor vae_moments = moments.to(ToTorch(m.stage(StageKind::kVaeEncoder).dtype));
    const torch::Tensor mean = vae_moments.narrow(1, 0, lc);
    const torch::Tensor logvar = vae_moments.narrow(1, lc, lc).clamp(-30.0, 20.0);
    const torch::Tensor sample =
        mean + torch::exp(0.5 * logvar) * DiffusersNoise(mean.sizes(), noise_dtype(mean.scalar_type()), gen,
                                                         device_.device()).to(mean.scalar_type());
    torch::Tensor first = sample.to(latent_dtype).permute({0, 2, 1, 3, 4}) * m.vae.scaling_factor;  // [1, 1, lc, h, w]
    image_latents = torch::cat({first, torch::zeros({1, f - 1, lc, h, w}, on_device.dtype(latent_dtype))}, 1);
  }

  torch::Tensor latents =
      DiffusersNoise({1, f, lc, h, w}, noise_dtype(latent_dtype), gen, device_.device()).to(latent_dtype);
  // The schedule tables are host memory, not the device's (a GPU step reads their 0-d entries as scalars).
  const auto sampler = [&] {
    HostScope host;
    return Sampler::Make(m.scheduler, r.steps);
  }();
  const std::vector<int>& timesteps = sampler->timesteps();
  JobShape denoise_shape = shape;
  denoise_shape.batch = batch;
  // Split guidance: this side conditions on the prompt (row 1 of [negative, positive]).
  const torch::Tensor local_text = split ? text.narrow(0, 1, 1) : text;
  const auto dk = StageKind::kDenoiser;
  StageExecutor& de = executor(dk);
  OnDevice(dk, [&] {
    StageUse use(de, stage_active[dk]);
    for (size_t i = 0; i < timesteps.size(); ++i) {
      if (hooks.cancelled && hooks.cancelled())
        throw Cancelled(fmt::format("cancelled before denoising step {} of {}", i + 1, timesteps.size()));
      const auto t0 = Clock::now();
      const int t = timesteps[i];
      const double scale = GuidanceScale(r.guidance, r.dynamic_cfg, r.steps, t);
      const bool more = i + 1 < timesteps.size();  // block:K's copy of block 0 behind the last block is for it
      torch::Tensor input = latents;
      if (image_latents.defined()) input = torch::cat({input, image_latents}, 2);
      input = input.to(torch::kFloat32);  // the denoiser's interface; it computes in its own dtype
      torch::Tensor v;
      if (split) {
        auto uncond = branch(input, t);
        const torch::Tensor cond =
            DenoiseStep(input, local_text, torch::full({1}, t, on_device.dtype(torch::kInt64)), denoise_shape, more);
        const torch::Tensor u = uncond();
        v = u + scale * (cond - u);
      } else {
        if (cfg) input = torch::cat({input, input}, 0);
        const torch::Tensor timestep = torch::full({batch}, t, on_device.dtype(torch::kInt64));
        v = DenoiseStep(input, local_text, timestep, denoise_shape, more);
        if (cfg) {
          const auto parts = v.chunk(2, 0);
          v = parts[0] + scale * (parts[1] - parts[0]);
        }
      }
      latents = sampler->Step(i, v, latents, gen).to(latent_dtype);
      device_.Synchronize();  // a step's time is the device's, not the time to queue it
      de.stats().step_seconds.push_back(Since(t0));
      if (observer_) observer_->OnEvent(RunEvent{fmt::format("step {}", i), "step", "compute", t0, Clock::now()});
      if (hooks.on_step) hooks.on_step(static_cast<int>(i + 1), static_cast<int>(timesteps.size()));
    }
    use.Finish();
    return 0;
  });
  // diffusers' decode_latents: permute, then 1/scaling_factor · latents, in the latents' dtype; the decoder takes f32.
  return (latents.permute({0, 2, 1, 3, 4}) * (1 / m.vae.scaling_factor)).to(torch::kFloat32).contiguous();
}

Video Runtime::DecodeVideo(const GenerateRequest& r, const torch::Tensor& z) {
  torch::NoGradGuard no_grad;
  const torch::Tensor decoded = DecodeLatents(z, ShapeOf(r));  // [1, 3, F, H, W], on the host
  HostScope host;
  const torch::Tensor frames =
      (decoded[0] * 0.5 + 0.5).clamp(0.0, 1.0).mul(255.0).round().to(torch::kUInt8).permute({1, 2, 3, 0}).contiguous();
  Video out;
  out.frames = static_cast<int>(frames.size(0));
  out.height = static_cast<int>(frames.size(1));
  out.width = static_cast<int>(frames.size(2));
  out.rgb.assign(frames.data_ptr<uint8_t>(), frames.data_ptr<uint8_t>() + frames.numel());
  return out;
}

Video Runtime::Generate(const GenerateRequest& r, const std::vector<uint8_t>& image_rgb, const GenerateHooks& hooks) {
  torch::NoGradGuard no_grad;
  DeviceScope device;  // job tensors (embeddings, latents) live on the device between stages
  const torch::Tensor text = EncodePrompt(r);
  torch::Tensor moments;
  if (package_.manifest().image_conditioned) moments = EncodeImageMoments(r, image_rgb);
  const torch::Tensor z = DenoiseLatents(r, text, moments, hooks);
  return DecodeVideo(r, z);
}

}  // namespace reel
