#include "runtime/pipeline.h"

#include <chrono>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "common/error.h"
#include "package/tokenizer.h"
#include "runtime/scheduler.h"

namespace reel {

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs one TorchScript call; a failure inside it is the package's fault (shapes the manifest promised but the
// module does not accept), so it is reported as BadPackage naming the file.
template <typename Fn>
auto CallPart(const StagePackage& p, StageKind k, size_t part, Fn&& fn) {
  try {
    torch::NoGradGuard no_grad;
    return fn(p.stage(k).parts[part]);
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    throw BadPackage(fmt::format("package {}: {} failed on inputs shaped as the manifest says: {}", p.dir().string(),
                                 p.manifest().stage(k).parts[part].file, msg.substr(0, msg.find('\n'))));
  }
}

std::map<std::string, int64_t> Symbols(const StagePackage& p, const JobShape& s) {
  return s.symbols(p.manifest().vae);
}

}  // namespace

torch::Tensor EncodeText(const StagePackage& p, const torch::Tensor& ids, int batch) {
  const auto k = StageKind::kTextEncoder;
  JobShape shape;
  shape.batch = batch;
  shape.text_tokens = static_cast<int>(ids.size(1));
  const auto sym = Symbols(p, shape);
  p.CheckTensor(k, false, 0, ids, sym);
  const size_t n = p.stage(k).parts.size();
  auto embedded = CallPart(p, k, 0, [&](torch::jit::Module m) { return m.forward({ids}).toTuple(); });
  torch::Tensor h = embedded->elements()[0].toTensor();
  const torch::Tensor bias = embedded->elements()[1].toTensor();
  for (size_t i = 1; i + 1 < n; ++i)
    h = CallPart(p, k, i, [&](torch::jit::Module m) { return m.forward({h, bias}).toTensor(); });
  h = CallPart(p, k, n - 1, [&](torch::jit::Module m) { return m.forward({h}).toTensor(); });
  p.CheckTensor(k, true, 0, h, sym);
  return h;
}

torch::Tensor EncodeImage(const StagePackage& p, const torch::Tensor& image, const JobShape& shape) {
  const auto k = StageKind::kVaeEncoder;
  const auto sym = Symbols(p, shape);
  p.CheckTensor(k, false, 0, image, sym);
  torch::Tensor moments = CallPart(p, k, 0, [&](torch::jit::Module m) { return m.forward({image}).toTensor(); });
  p.CheckTensor(k, true, 0, moments, sym);
  return moments;
}

torch::Tensor Denoise(const StagePackage& p, const torch::Tensor& latents, const torch::Tensor& text,
                      const torch::Tensor& timestep, const JobShape& shape) {
  const auto k = StageKind::kDenoiser;
  const auto sym = Symbols(p, shape);
  p.CheckTensor(k, false, 0, latents, sym);
  p.CheckTensor(k, false, 1, text, sym);
  p.CheckTensor(k, false, 2, timestep, sym);
  const size_t n = p.stage(k).parts.size();
  auto e = CallPart(p, k, 0, [&](torch::jit::Module m) { return m.forward({latents, text, timestep}).toTuple(); });
  const auto& el = e->elements();
  torch::Tensor video = el[0].toTensor(), txt = el[1].toTensor();
  const torch::Tensor emb = el[2].toTensor(), cos = el[3].toTensor(), sin = el[4].toTensor();
  for (size_t i = 1; i + 1 < n; ++i) {
    auto out = CallPart(p, k, i, [&](torch::jit::Module m) { return m.forward({video, txt, emb, cos, sin}).toTuple(); });
    video = out->elements()[0].toTensor();
    txt = out->elements()[1].toTensor();
  }
  const int64_t f = latents.size(1), h = latents.size(3), w = latents.size(4);
  torch::Tensor v = CallPart(p, k, n - 1, [&](torch::jit::Module m) {
    return m.forward({video, emb, f, h, w}).toTensor();
  });
  p.CheckTensor(k, true, 0, v, sym);
  return v;
}

torch::Tensor DecodeLatents(const StagePackage& p, const torch::Tensor& latents, const JobShape& shape) {
  const auto k = StageKind::kVaeDecoder;
  const auto sym = Symbols(p, shape);
  p.CheckTensor(k, false, 0, latents, sym);
  torch::Tensor video = CallPart(p, k, 0, [&](torch::jit::Module m) { return m.forward({latents}).toTensor(); });
  p.CheckTensor(k, true, 0, video, sym);
  return video;
}

Video Generate(const StagePackage& package, const GenerateRequest& r, const std::vector<uint8_t>& image_rgb,
               const GenerateHooks& hooks, StageTimes* times) {
  const Manifest& m = package.manifest();
  const bool cfg = r.guidance > 1.0;
  const int batch = cfg ? 2 : 1;
  JobShape shape;
  shape.frames = r.frames;
  shape.height = r.height;
  shape.width = r.width;
  shape.text_tokens = m.tokenizer.max_length;
  const auto sym = shape.symbols(m.vae);
  const int64_t f = sym.at("f"), h = sym.at("h"), w = sym.at("w");
  const int64_t lc = m.vae.latent_channels;
  StageTimes local;
  StageTimes& t = times ? *times : local;
  torch::NoGradGuard no_grad;

  // Text: negative first, as diffusers concatenates [negative, positive].
  auto t0 = Clock::now();
  const auto tokenizer = MakeTokenizer(m.tokenizer, package.dir());
  std::vector<int64_t> ids;
  if (cfg) ids = tokenizer->Encode(r.negative_prompt);
  const auto pos = tokenizer->Encode(r.prompt);
  ids.insert(ids.end(), pos.begin(), pos.end());
  const torch::Tensor id_tensor =
      torch::tensor(ids, torch::kInt64).view({batch, static_cast<int64_t>(m.tokenizer.max_length)});
  const auto text_dtype = ToTorch(m.stage(StageKind::kDenoiser).inputs.at(1).dtype);
  const torch::Tensor text = EncodeText(package, id_tensor, batch).to(text_dtype);
  t.text_encode = Since(t0);

  auto gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  torch::Tensor image_latents;
  if (m.image_conditioned) {
    t0 = Clock::now();
    // [H, W, 3] uint8 → [1, 3, 1, H, W] in [-1, 1].
    torch::Tensor img = torch::from_blob(const_cast<uint8_t*>(image_rgb.data()), {r.height, r.width, 3}, torch::kUInt8)
                            .permute({2, 0, 1})
                            .to(torch::kFloat32)
                            .div(127.5)
                            .sub(1.0)
                            .unsqueeze(0)
                            .unsqueeze(2)
                            .contiguous();
    JobShape one = shape;
    one.batch = 1;
    const torch::Tensor moments = EncodeImage(package, img, one);
    const torch::Tensor mean = moments.narrow(1, 0, lc);
    const torch::Tensor logvar = moments.narrow(1, lc, lc).clamp(-30.0, 20.0);
    // A posterior sample, as CogVideoX-I2V uses (not the mean), scaled into the denoiser's latent space.
    const torch::Tensor sample = mean + torch::exp(0.5 * logvar) * torch::randn(mean.sizes(), gen, torch::kFloat32);
    torch::Tensor first = (sample * m.vae.scaling_factor).permute({0, 2, 1, 3, 4});  // [1, 1, lc, h, w]
    image_latents = torch::cat({first, torch::zeros({1, f - 1, lc, h, w}, torch::kFloat32)}, 1);
    t.image_encode = Since(t0);
  }

  t0 = Clock::now();
  torch::Tensor latents = torch::randn({1, f, lc, h, w}, gen, torch::kFloat32);
  const DdimScheduler scheduler(m.scheduler);
  const auto plan = scheduler.Plan(r.steps);
  JobShape denoise_shape = shape;
  denoise_shape.batch = batch;
  for (size_t i = 0; i < plan.size(); ++i) {
    const auto& step = plan[i];
    torch::Tensor input = latents;
    if (image_latents.defined()) input = torch::cat({input, image_latents}, 2);
    if (cfg) input = torch::cat({input, input}, 0);
    const torch::Tensor timestep = torch::full({batch}, step.timestep, torch::kInt64);
    torch::Tensor v = Denoise(package, input, text, timestep, denoise_shape);
    if (cfg) {
      const auto parts = v.chunk(2, 0);
      v = parts[0] + r.guidance * (parts[1] - parts[0]);
    }
    latents = latents * step.c_sample + v * step.c_model;
    if (hooks.on_step) hooks.on_step(static_cast<int>(i + 1), static_cast<int>(plan.size()));
  }
  t.denoise = Since(t0);

  t0 = Clock::now();
  const torch::Tensor z = (latents.permute({0, 2, 1, 3, 4}) / m.vae.scaling_factor).contiguous();
  JobShape one = shape;
  one.batch = 1;
  const torch::Tensor decoded = DecodeLatents(package, z, one);  // [1, 3, F, H, W]
  t.decode = Since(t0);

  const torch::Tensor frames = (decoded[0] * 0.5 + 0.5)
                                   .clamp(0.0, 1.0)
                                   .mul(255.0)
                                   .round()
                                   .to(torch::kUInt8)
                                   .permute({1, 2, 3, 0})
                                   .contiguous();
  Video out;
  out.frames = static_cast<int>(frames.size(0));
  out.height = static_cast<int>(frames.size(1));
  out.width = static_cast<int>(frames.size(2));
  out.rgb.assign(frames.data_ptr<uint8_t>(), frames.data_ptr<uint8_t>() + frames.numel());
  return out;
}

}  // namespace reel
