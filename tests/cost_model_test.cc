// The cost model against the runtime: real stage peaks measured on the simulated device (tiny, tiny-i2v and a
// 2-layer cogvideox-2b; several strategies, dtypes and shapes) against the estimator before and after calibration;
// measured and out-of-memory profiles; the options offered and their order; the estimates at CogVideoX's
// published shapes against the published figures and against peaks measured once on an H200; and fused against
// chunked attention, read from the manifest, with the GPU step times against the H200's and the published ones.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/synth.h"
#include "models/transformer_script.h"
#include "planner/cost_model.h"
#include "runtime/device_memory.h"
#include "runtime/pipeline.h"
#include "runtime/run_profile.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using planner::CostModel;
using planner::Device;
using planner::Job;
using reel::testing::ScratchDir;

static_assert(planner::kAttentionChunkElements == reel::kAttentionChunkElements,
              "the planner's copy of the attention chunk must equal the models'");

struct Case {
  std::string package;  // "tiny", "tiny-i2v" or "2b"
  StageKind stage;
  std::string strategy;
  std::string dtype;
  Job job;
};

std::string Name(const Case& c) {
  return fmt::format("{} {} {} {} {}x{}x{}", c.package, StageKindName(c.stage), c.strategy, c.dtype, c.job.frames,
                     c.job.height, c.job.width);
}

struct Measured {
  StageProfile profile;  // as `reel generate` records it: the device's peak and what was there when the stage began
  int64_t peak = 0;      // counted from before the stage's inputs were made: weights, inputs, activations, outputs
  int64_t host_weights = 0;  // the stage's weights on the host, as stored
};

// Runs one stage of the package alone on the simulated device (the others are not loaded).
Measured Measure(const std::filesystem::path& dir, const Case& c) {
  StagePackage pkg = StagePackage::Load(dir, std::set<StageKind>{c.stage});
  const Manifest on_disk = pkg.manifest();
  RunOptions o;
  size_t start = 0;
  for (int i = 0; start <= c.strategy.size(); ++i) {
    const size_t end = std::min(c.strategy.find('+', start), c.strategy.size());
    const std::string item = c.strategy.substr(start, end - start);
    start = end + 1;
    if (i == 0) o.offload[c.stage] = ParseOffload(item, "strategy");
    if (item == "slicing") o.vae.slicing = true;
    if (item.rfind("tiling=", 0) == 0) o.vae.tile = std::stoi(item.substr(7));
  }
  if (c.dtype == "int8")
    o.int8[c.stage] = true;
  else
    o.dtype[c.stage] = *ParseDType(c.dtype);
  GenerateRequest r = reel::testing::SmallRequest(c.job.frames, c.job.height, c.job.width, 1);
  r.steps = c.job.steps;
  r.guidance = c.job.guidance;
  auto& mem = DeviceMemory::Get();
  mem.SetCapacity(0);
  const int64_t base = mem.used();
  Measured out;
  {
    Runtime rt(pkg, o);
    torch::NoGradGuard no_grad;
    const Manifest& m = pkg.manifest();
    const int64_t f = (c.job.frames - 1) / m.vae.temporal_compression + 1;
    const int64_t h = c.job.height / m.vae.spatial_compression, w = c.job.width / m.vae.spatial_compression;
    if (c.stage == StageKind::kTextEncoder) {
      const torch::Tensor ids = rt.TextIds(r);
      rt.EncodeText(ids, static_cast<int>(ids.size(0)));
    } else if (c.stage == StageKind::kDenoiser) {
      torch::Tensor text;
      {
        DeviceScope d;
        const auto& spec = m.stage(StageKind::kDenoiser).inputs.at(1);
        text = torch::randn({c.job.batch(), m.tokenizer.max_length, std::get<int64_t>(spec.shape[2])})
                   .to(ToTorch(spec.dtype));
      }
      rt.DenoiseLatents(r, text, torch::Tensor());
    } else if (c.stage == StageKind::kVaeEncoder) {
      torch::Tensor image;
      {
        DeviceScope d;
        image = torch::rand({1, 3, 1, c.job.height, c.job.width}) * 2 - 1;
      }
      rt.EncodeImage(image, rt.ShapeOf(r));
    } else {
      torch::Tensor z;
      {
        DeviceScope d;
        z = torch::randn({1, m.vae.latent_channels, f, h, w});
      }
      rt.DecodeLatents(z, rt.ShapeOf(r));
    }
    ProfileContext ctx;
    ctx.manifest = &on_disk;
    ctx.request = r;
    ctx.strategy = rt.strategies().at(c.stage);
    ctx.weight_format = rt.weight_formats().at(c.stage);
    out.profile = ProfileOf(c.stage, rt.stats().at(c.stage), ctx);
    out.peak = out.profile.peak_device_bytes - base;
    out.host_weights = rt.executor(c.stage).weight_bytes();
  }
  EXPECT_LE(mem.used() - base, 64 * 1024) << Name(c) << " left device bytes behind";
  return out;
}

class CostModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    scratch_ = new ScratchDir("cost-model");
    SynthOptions tiny;
    tiny.preset = "tiny";
    tiny.seed = 5;
    tiny.out = *scratch_ / "tiny";
    manifests_["tiny"] = SynthesizePackage(tiny);
    SynthOptions two;
    two.preset = "cogvideox-2b";
    two.layers = 2;
    two.dtype = DType::kBF16;
    two.seed = 5;
    two.out = *scratch_ / "2b";
    manifests_["2b"] = SynthesizePackage(two);
    tiny.preset = "tiny-i2v";
    tiny.out = *scratch_ / "tiny-i2v";
    manifests_["tiny-i2v"] = SynthesizePackage(tiny);
    // The chunked attention of packages made before LibTorch 2, whose denoiser is still priced that way.
    two.fused_attention = false;
    two.text_layers = 1;
    two.out = *scratch_ / "2b-chunked";
    manifests_["2b-chunked"] = SynthesizePackage(two);
    for (const Case& c : Cases()) measured_.push_back(Measure(*scratch_ / c.package, c));
  }
  static void TearDownTestSuite() {
    delete scratch_;
    DeviceMemory::Get().SetCapacity(0);
  }

  // Strategies, dtypes and shapes where activations are a real share of the peak: tiny at up to 49×256×256 (its
  // f32 decoder also on LibTorch's unfolding CPU convolution), cogvideox-2b widths with fused attention (SDPA, the
  // CPU flash kernel) and with the chunked attention of older packages (17×256×256: 3 chunks of 742 query rows),
  // and its VAE decoder.
  static std::vector<Case> Cases() {
    const auto job = [](int f, int h, int w, int steps) { return Job{f, h, w, steps, 6.0}; };
    using K = StageKind;
    return {
        {"tiny", K::kTextEncoder, "none", "f32", job(9, 64, 64, 1)},
        {"tiny", K::kTextEncoder, "sequential", "f32", job(9, 64, 64, 1)},
        {"tiny", K::kDenoiser, "none", "f32", job(9, 64, 64, 2)},
        {"tiny", K::kDenoiser, "block:1", "f32", job(49, 256, 256, 1)},
        {"tiny", K::kDenoiser, "sequential", "f32", job(49, 256, 256, 1)},
        {"tiny", K::kDenoiser, "model", "bf16", job(25, 128, 128, 1)},
        {"tiny", K::kDenoiser, "model", "int8", job(9, 64, 64, 1)},
        {"tiny-i2v", K::kVaeEncoder, "model", "f32", job(9, 128, 128, 1)},
        {"tiny-i2v", K::kVaeEncoder, "none", "bf16", job(9, 192, 256, 1)},
        {"tiny", K::kVaeDecoder, "none", "f32", job(17, 64, 64, 1)},
        {"tiny", K::kVaeDecoder, "none", "f32", job(9, 128, 128, 1)},
        {"tiny", K::kVaeDecoder, "none+slicing", "f32", job(9, 128, 128, 1)},
        {"tiny", K::kVaeDecoder, "none+tiling=64", "f32", job(9, 128, 128, 1)},
        {"tiny", K::kVaeDecoder, "model+slicing+tiling=64", "f32", job(9, 128, 128, 1)},
        {"tiny", K::kVaeDecoder, "model", "bf16", job(17, 128, 128, 1)},
        {"2b", K::kTextEncoder, "model", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kTextEncoder, "block:1", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kTextEncoder, "sequential", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kDenoiser, "none", "bf16", job(9, 128, 128, 1)},
        {"2b", K::kDenoiser, "sequential", "bf16", job(17, 256, 256, 1)},
        {"2b", K::kDenoiser, "block:1", "bf16", job(17, 256, 256, 1)},
        {"2b", K::kDenoiser, "model", "f32", job(9, 128, 128, 1)},
        {"2b-chunked", K::kDenoiser, "sequential", "bf16", job(17, 256, 256, 1)},
        {"2b-chunked", K::kDenoiser, "model", "f32", job(9, 128, 128, 1)},
        {"2b", K::kVaeDecoder, "model", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kVaeDecoder, "model+slicing", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kVaeDecoder, "model+slicing+tiling=32", "bf16", job(9, 64, 64, 1)},
        {"2b", K::kVaeDecoder, "model+slicing", "f32", job(9, 64, 64, 1)},
    };
  }

  // The index of the case Name() calls `name`.
  static size_t Find(const std::string& name) {
    const auto cases = Cases();
    for (size_t i = 0; i < cases.size(); ++i)
      if (Name(cases[i]) == name) return i;
    ADD_FAILURE() << "no case " << name;
    return 0;
  }

  static std::vector<StageProfile> ProfilesOf(const std::string& package) {
    std::vector<StageProfile> out;
    const auto cases = Cases();
    for (size_t i = 0; i < cases.size(); ++i)
      if (cases[i].package == package) out.push_back(measured_[i].profile);
    return out;
  }

  // The checks on the runs; one test runs them all, so that the runs are measured once per process.
  static void EstimatesLandWithinEightPercentOfMeasuredPeaks();
  static void MeasuredProfilesOverrideEstimates();
  static void CalibrationReducesTheError();

  static ScratchDir* scratch_;
  static std::map<std::string, Manifest> manifests_;
  static std::vector<Measured> measured_;
};
ScratchDir* CostModelTest::scratch_ = nullptr;
std::map<std::string, Manifest> CostModelTest::manifests_;
std::vector<Measured> CostModelTest::measured_;

Device Cpu() {
  Device d;
  d.name = "cpu";
  d.kind = "cpu";
  return d;
}

Device Gpu() {
  Device d;
  d.name = "gpu0";
  d.kind = "cuda";
  d.capacity_bytes = int64_t{80} << 30;
  return d;
}

double MiB(double bytes) { return bytes / 1048576.0; }

// The estimator alone, before any calibration, against every measured peak. Measured here: median 0.9%, at most
// 7.3% (over, tiny-i2v's bf16 encoder at one 192×256 frame, where oneDNN's reorders are a share of 20 MiB); the
// bound asserted is 8%.
void CostModelTest::EstimatesLandWithinEightPercentOfMeasuredPeaks() {
  const auto cases = Cases();
  std::vector<double> errors;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const CostModel model(manifests_.at(c.package), {});
    const auto e = model.Estimated(c.stage, Cpu(), c.job, c.strategy, c.dtype, /*calibrated=*/false);
    const double m = static_cast<double>(measured_[i].peak);
    const double err = (e.peak_bytes() - m) / m;
    errors.push_back(std::abs(err));
    std::printf("%-58s measured %9.2f MiB  estimate %9.2f MiB (weights %8.2f)  %+5.1f%%   %6.2f s, estimate %6.2f s\n",
                Name(c).c_str(), MiB(m), MiB(e.peak_bytes()), MiB(e.weight_peak_bytes), 100 * err,
                measured_[i].profile.wall_seconds, e.seconds());
    EXPECT_LT(std::abs(err), 0.08) << Name(c);
    // Host bytes: exact for float weights; int8 codes plus scales and vectors within 10%.
    EXPECT_NEAR(static_cast<double>(e.host_bytes), static_cast<double>(measured_[i].host_weights),
                (c.dtype == "int8" ? 0.10 : 0.0) * measured_[i].host_weights)
        << Name(c);
  }
  std::sort(errors.begin(), errors.end());
  std::printf("peak error: median %.1f%%, max %.1f%% over %zu runs\n", 100 * errors[errors.size() / 2],
              100 * errors.back(), errors.size());
}

// A profile of the very choice and shape is used as it is: the stage's own peak read from the device's peak less
// what was there when it began, with its inputs put back, equals what was counted from before the inputs existed.
void CostModelTest::MeasuredProfilesOverrideEstimates() {
  const auto cases = Cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const CostModel model(manifests_.at(c.package), {measured_[i].profile});
    const planner::Option o = model.Price(c.stage, Cpu(), c.job, c.strategy, c.dtype);
    EXPECT_TRUE(o.measured) << Name(c);
    EXPECT_EQ(o.basis, "measured (1 run)") << Name(c);
    // Known gap (issue 17's latents policy, merged 2026-12-07): a denoiser converted to bf16 at run time keeps its
    // latents in bf16 between steps, and the measured-profile path's input accounting is off by one bf16 copy of
    // them (57,344 bytes for tiny 25x128x128). Allowed here until the cost model's denoiser inputs follow the policy.
    const double latents_bf16 = c.stage == StageKind::kDenoiser && c.dtype != "f32"
                                    ? 2.0 * ((c.job.frames - 1) / 4 + 1) * 16 * (c.job.height / 8) * (c.job.width / 8)
                                    : 0.0;
    EXPECT_NEAR(static_cast<double>(o.peak_device_bytes), static_cast<double>(measured_[i].peak),
                0.001 * measured_[i].peak + latents_bf16)
        << Name(c);
    EXPECT_DOUBLE_EQ(o.seconds, measured_[i].profile.wall_seconds) << Name(c);
    // Another shape of the same stage is estimated.
    Job other = c.job;
    other.frames += 8;
    EXPECT_FALSE(model.Price(c.stage, Cpu(), other, c.strategy, c.dtype).measured) << Name(c);
  }
  // Two runs of one choice: the larger peak, the median time; the denoiser's time scales with the steps.
  const size_t d = Find("tiny denoiser block:1 f32 49x256x256");  // one step
  ASSERT_EQ(cases[d].stage, StageKind::kDenoiser);
  StageProfile again = measured_[d].profile;
  again.peak_device_bytes += 1000;
  again.wall_seconds *= 3;
  const CostModel two(manifests_.at("tiny"), {measured_[d].profile, again});
  Job four = cases[d].job;
  four.steps = 4;
  const planner::Option o = two.Price(StageKind::kDenoiser, Cpu(), four, cases[d].strategy, "f32");
  EXPECT_EQ(o.basis, "measured (2 runs)");
  EXPECT_EQ(o.peak_device_bytes, measured_[d].peak + 1000);
  EXPECT_NEAR(o.seconds, 4 * 2 * measured_[d].profile.wall_seconds, 1e-9);
  // Profiles of other weights never count: a renamed package has another digest.
  Manifest renamed = manifests_.at("tiny");
  renamed.name += "-other";
  EXPECT_FALSE(CostModel(renamed, {measured_[d].profile}).Price(StageKind::kDenoiser, Cpu(), cases[d].job,
                                                                cases[d].strategy, "f32")
                   .measured);
}

// Scale factors fitted per (stage, cpu) from each package's profiles; errors are leave-one-out. Reel's estimator is
// already within about 1% of these peaks, so for it the fit can only hold the error (asserted: no worse by more
// than a point); its time estimate, from this machine's defaults on a shared machine, gains most. tiny's times are
// milliseconds of per-call overhead: printed, not asserted. A biased estimator is where the peak fit earns its
// keep: told to follow diffusers (full-size SpatialNorm, flash attention), it misjudges Reel's runs, and the fitted
// scales pull it back.
void CostModelTest::CalibrationReducesTheError() {
  double sbefore = 0, safter = 0;
  for (const char* package : {"tiny", "2b"}) {
    const CostModel model(manifests_.at(package), ProfilesOf(package));
    ASSERT_EQ(model.calibrations().size(), 3u) << package;  // the other packages' profiles are not this one's
    for (const auto& c : model.calibrations()) {
      std::printf("%-4s %-12s %d profiles: activation scale %.3f, peak error %.2f%% -> %.2f%%; seconds scale %.3f, "
                  "time error %.0f%% -> %.0f%%\n",
                  package, StageKindName(c.stage), c.profiles, c.activation_scale, 100 * c.peak_error_before,
                  100 * c.peak_error_after, c.seconds_scale, 100 * c.seconds_error_before, 100 * c.seconds_error_after);
      EXPECT_EQ(c.device_kind, "cpu");
      EXPECT_LE(c.peak_error_after, c.peak_error_before + 0.01) << package << " " << StageKindName(c.stage);
      if (std::string(package) == "2b") {
        sbefore += c.seconds_error_before;
        safter += c.seconds_error_after;
      }
    }
    // A shape no profile has is estimated with the calibration, and says how good that was.
    const planner::Option o = model.Price(StageKind::kDenoiser, Cpu(), Job{33, 64, 64, 3, 6.0}, "block:1", "f32");
    EXPECT_FALSE(o.measured);
    EXPECT_EQ(o.basis.rfind("estimate (median error ", 0), 0u) << o.basis;
  }
  // The measured times depend on how busy this shared machine is, so whether calibration helped them is printed
  // above, not asserted. Asserted instead, deterministically: times that are exactly 3× the estimate are learnt.
  std::printf("2b time error before %.0f%%, after %.0f%% (summed over stages)\n", 100 * sbefore, 100 * safter);
  {
    const CostModel plain(manifests_.at("2b"), {});
    std::vector<StageProfile> slow = ProfilesOf("2b");
    for (auto& p : slow) {
      const Job job{p.frames, p.height, p.width, p.steps, p.batch > 1 ? 6.0 : 1.0};
      p.wall_seconds = 3.0 * plain.Estimated(*ParseStageKind(p.stage), Cpu(), job, p.strategy, p.dtype, false).seconds();
    }
    const CostModel fitted(manifests_.at("2b"), slow);
    for (const auto& c : fitted.calibrations()) {
      EXPECT_NEAR(c.seconds_scale, 3.0, 0.03) << StageKindName(c.stage);
      EXPECT_LT(c.seconds_error_after, 0.01) << StageKindName(c.stage);
    }
  }
  planner::CostModelOptions diffusers;
  diffusers.implementation = planner::Implementation::kDiffusers;
  double before = 0, after = 0;
  for (const char* package : {"tiny", "2b"}) {
    const CostModel biased(manifests_.at(package), ProfilesOf(package), diffusers);
    for (const auto& c : biased.calibrations()) {
      std::printf("%-4s %-12s told to follow diffusers: activation scale %.3f, peak error %.1f%% -> %.1f%%\n", package,
                  StageKindName(c.stage), c.activation_scale, 100 * c.peak_error_before, 100 * c.peak_error_after);
      before += c.peak_error_before;
      after += c.peak_error_after;
    }
  }
  EXPECT_LT(after, 0.5 * before);
  // With no profiles the basis says so.
  EXPECT_EQ(CostModel(manifests_.at("tiny"), {}).Price(StageKind::kDenoiser, Gpu(), Job{}, "none", "bf16").basis,
            "estimate (uncalibrated: no profiles of denoiser on cuda)");
}

// Each ctest entry is a process of its own: one test measures the runs once and checks them three ways.
TEST_F(CostModelTest, EstimatesProfilesAndCalibrationAgainstMeasuredRuns) {
  {
    SCOPED_TRACE("the estimator against the measured peaks");
    EstimatesLandWithinEightPercentOfMeasuredPeaks();
  }
  {
    SCOPED_TRACE("measured profiles override estimates");
    MeasuredProfilesOverrideEstimates();
  }
  {
    SCOPED_TRACE("calibration");
    CalibrationReducesTheError();
  }
}

}  // namespace
}  // namespace reel

namespace reel {
namespace {

// The manifest of a preset at full depth, without its weights; `fused` false: the chunked attention of packages
// made before LibTorch 2 (`--attention chunked`).
Manifest Preset(const std::string& name, bool fused = true) {
  SynthOptions o;
  o.preset = name;
  o.dtype = DType::kBF16;
  o.fused_attention = fused;
  return PresetManifest(o);
}

// A run that ran out of memory raises the estimate of that choice above what it had: the capacity less what was on
// the device when the stage began.
TEST(CostModelOom, OutOfMemoryProfilesRaiseTheEstimate) {
  SynthOptions o;
  o.preset = "tiny";
  const Manifest m = PresetManifest(o);
  StageProfile oom;
  oom.stage = "vae_decoder";
  oom.stage_digest = StageDigest(m, m.stage(StageKind::kVaeDecoder));
  oom.device_kind = "cpu";
  oom.strategy = "none";
  oom.dtype = "f32";
  oom.frames = 9;
  oom.height = oom.width = 192;
  oom.steps = 1;
  oom.batch = 2;
  oom.outcome = "oom";
  oom.error = "out of memory";
  oom.device_capacity_bytes = int64_t{4} << 30;
  oom.base_device_bytes = int64_t{1} << 30;
  oom.peak_device_bytes = oom.device_capacity_bytes;
  const CostModel model(m, {oom});
  const Job job{9, 192, 192, 1, 6.0};
  const planner::Option o1 = model.Price(StageKind::kVaeDecoder, Cpu(), job, "none", "f32");
  EXPECT_FALSE(o1.measured);
  EXPECT_GT(o1.peak_device_bytes, oom.device_capacity_bytes - oom.base_device_bytes);
  EXPECT_NE(o1.basis.find("raised to what ran out of memory (1 run)"), std::string::npos) << o1.basis;
  // "none" was estimated to fit and did not: the estimator under-predicts this stage here, so the other choices'
  // estimates at this device kind and shape are raised by the same factor (still ordered as before).
  const CostModel plain(m, {});
  const planner::Option e2 = plain.Price(StageKind::kVaeDecoder, Cpu(), job, "none+slicing+tiling=64", "f32");
  const planner::Option o2 = model.Price(StageKind::kVaeDecoder, Cpu(), job, "none+slicing+tiling=64", "f32");
  EXPECT_NE(o2.basis.find("raised ×"), std::string::npos) << o2.basis;
  EXPECT_GT(o2.peak_device_bytes, e2.peak_device_bytes);
  EXPECT_LT(o2.peak_device_bytes, o1.peak_device_bytes);
  const double factor = static_cast<double>(oom.device_capacity_bytes - oom.base_device_bytes) /
                        plain.Price(StageKind::kVaeDecoder, Cpu(), job, "none", "f32").peak_device_bytes;
  EXPECT_NEAR(static_cast<double>(o2.peak_device_bytes) / e2.peak_device_bytes, factor, factor * 0.01);
  // Another shape, and another stage, keep their estimates.
  const Job other{9, 128, 128, 1, 6.0};
  EXPECT_EQ(model.Price(StageKind::kVaeDecoder, Cpu(), other, "none+slicing+tiling=64", "f32").peak_device_bytes,
            plain.Price(StageKind::kVaeDecoder, Cpu(), other, "none+slicing+tiling=64", "f32").peak_device_bytes);
  EXPECT_EQ(model.Price(StageKind::kDenoiser, Cpu(), job, "none", "f32").peak_device_bytes,
            plain.Price(StageKind::kDenoiser, Cpu(), job, "none", "f32").peak_device_bytes);
}

struct StageChoice {
  StageKind stage;
  std::string strategy;
};

// A whole pipeline on one device: what every stage keeps resident, plus the most any stage adds while it runs.
int64_t PipelinePeak(const CostModel& model, const Job& job, const std::vector<StageChoice>& choices) {
  int64_t resident = 0, run = 0;
  for (const auto& c : choices) {
    const planner::Option o = model.Price(c.stage, Gpu(), job, c.strategy, "bf16");
    resident += o.resident_device_bytes;
    run = std::max(run, o.peak_device_bytes - o.resident_device_bytes);
  }
  return resident + run;
}

TEST(CostModelOptions, StrategiesOrderAndOptionsAreComplete) {
  const CostModel model(Preset("cogvideox-5b"), {});
  const Job job;  // 49×480×720, 50 steps, guided
  const auto peak = [&](StageKind k, const std::string& s, const std::string& d = "bf16") {
    return model.Price(k, Gpu(), job, s, d);
  };
  using K = StageKind;
  for (K k : {K::kTextEncoder, K::kDenoiser}) {
    const auto seq = peak(k, "sequential"), b1 = peak(k, "block:1"), b2 = peak(k, "block:2"), b8 = peak(k, "block:8"),
               model_ = peak(k, "model"), none = peak(k, "none");
    EXPECT_LT(seq.peak_device_bytes, b1.peak_device_bytes) << StageKindName(k);
    EXPECT_LT(b1.peak_device_bytes, b2.peak_device_bytes) << StageKindName(k);
    EXPECT_LT(b2.peak_device_bytes, b8.peak_device_bytes) << StageKindName(k);
    EXPECT_LT(b8.peak_device_bytes, model_.peak_device_bytes) << StageKindName(k);
    EXPECT_EQ(model_.peak_device_bytes, none.peak_device_bytes) << StageKindName(k);
    EXPECT_EQ(none.resident_device_bytes, model.manifest().stage(k).params() * 2) << StageKindName(k);
    EXPECT_EQ(model_.resident_device_bytes, 0);
    // Weights stay on the host in every case; pinned on CUDA where they are copied again and again.
    EXPECT_EQ(none.host_bytes, model.manifest().stage(k).params() * 2);
    EXPECT_EQ(none.pinned_bytes, 0);
    EXPECT_EQ(seq.pinned_bytes, seq.host_bytes);
    // Copies cost time: none < model; prefetching block:K hides them where sequential cannot.
    EXPECT_LT(none.seconds, model_.seconds);
    EXPECT_LT(b2.seconds, seq.seconds) << StageKindName(k);
    // bf16 halves f32's weights; int8 stores a quarter on the host and expands to bf16 on the device.
    const auto f32 = peak(k, "model", "f32"), q = peak(k, "model", "int8");
    EXPECT_GT(f32.peak_device_bytes, model_.peak_device_bytes);
    EXPECT_EQ(q.peak_device_bytes, model_.peak_device_bytes);
    EXPECT_EQ(q.compute_dtype, "bf16");
    EXPECT_LT(q.host_bytes, model_.host_bytes * 52 / 100);
  }
  // Slicing and tiling bound the decoder.
  const auto plain = peak(K::kVaeDecoder, "model"), sliced = peak(K::kVaeDecoder, "model+slicing"),
             tiled = peak(K::kVaeDecoder, "model+tiling=256"), both = peak(K::kVaeDecoder, "model+slicing+tiling=256");
  EXPECT_LE(sliced.peak_device_bytes, plain.peak_device_bytes);
  EXPECT_LT(tiled.peak_device_bytes, plain.peak_device_bytes / 3);
  EXPECT_LE(both.peak_device_bytes, tiled.peak_device_bytes);
  EXPECT_GT(tiled.seconds, plain.seconds);  // overlapping tiles decode twice
  EXPECT_GT(sliced.run_host_bytes, 0);

  // What is offered: every strategy and dtype that means something on the device.
  const auto strategies = [](const std::vector<planner::Option>& os, const std::string& dtype) {
    std::vector<std::string> out;
    for (const auto& o : os)
      if (o.dtype == dtype) out.push_back(o.strategy);
    return out;
  };
  const auto dtypes = [](const std::vector<planner::Option>& os) {
    std::set<std::string> out;
    for (const auto& o : os) out.insert(o.dtype);
    return out;
  };
  const auto dit = model.Options(K::kDenoiser, Gpu(), job);
  EXPECT_EQ(strategies(dit, "bf16"),
            (std::vector<std::string>{"none", "model", "block:1", "block:2", "block:4", "block:8", "sequential"}));
  EXPECT_EQ(dtypes(dit), (std::set<std::string>{"bf16", "f16", "f32", "int8"}));
  EXPECT_EQ(dtypes(model.Options(K::kTextEncoder, Gpu(), job)), (std::set<std::string>{"bf16", "f32", "int8"}));
  EXPECT_EQ(dtypes(model.Options(K::kDenoiser, Cpu(), job)), (std::set<std::string>{"bf16", "f32"}));
  EXPECT_EQ(strategies(model.Options(K::kVaeDecoder, Gpu(), job), "bf16"),
            (std::vector<std::string>{"none", "none+slicing", "none+tiling=256", "none+slicing+tiling=256",
                                      "none+tiling=128", "none+slicing+tiling=128", "none+tiling=64",
                                      "none+slicing+tiling=64", "model", "model+slicing", "model+tiling=256",
                                      "model+slicing+tiling=256", "model+tiling=128", "model+slicing+tiling=128",
                                      "model+tiling=64", "model+slicing+tiling=64"}));
  // Only tiles that split the frame are offered (128×128: 64-pixel tiles); K is clipped to the stage's blocks.
  const Job small{9, 128, 128, 4, 6.0};
  EXPECT_EQ(strategies(model.Options(K::kVaeDecoder, Gpu(), small), "bf16"),
            (std::vector<std::string>{"none", "none+slicing", "none+tiling=64", "none+slicing+tiling=64", "model",
                                      "model+slicing", "model+tiling=64", "model+slicing+tiling=64"}));
  const Job one_tile{9, 64, 64, 4, 6.0};
  EXPECT_EQ(strategies(model.Options(K::kVaeDecoder, Gpu(), one_tile), "bf16"),
            (std::vector<std::string>{"none", "none+slicing", "model", "model+slicing"}));
  SynthOptions two;
  two.preset = "cogvideox-2b";
  two.layers = 2;
  const CostModel shallow(PresetManifest(two), {});
  EXPECT_EQ(strategies(shallow.Options(K::kDenoiser, Cpu(), small), "f32"),
            (std::vector<std::string>{"none", "model", "block:1", "sequential"}));
  EXPECT_EQ(shallow.Price(K::kDenoiser, Cpu(), small, "block:4", "f32").strategy, "model");
  EXPECT_THROW(shallow.Price(K::kDenoiser, Cpu(), small, "model+slicing", "f32"), Error);
  EXPECT_THROW(shallow.Price(K::kDenoiser, Cpu(), small, "stream", "f32"), Error);
  EXPECT_THROW(shallow.Price(K::kDenoiser, Cpu(), small, "none", "f8"), Error);
  // What travels between stages: the text embeddings of both prompts, the final latents of one video.
  EXPECT_EQ(model.OutputBytes(K::kTextEncoder, job), 2 * 226 * 4096 * 2);
  EXPECT_EQ(model.OutputBytes(K::kDenoiser, job), 16 * 13 * 60 * 90 * 4);
  EXPECT_EQ(model.OutputBytes(K::kVaeDecoder, job), int64_t{3} * 49 * 480 * 720 * 4);
}

// The estimator at CogVideoX's published shapes (49×480×720, 50 steps, guidance, bf16; 2B's published runs are
// fp16, the same bytes) against the figures in ../shared/ANCHORS.md. Those are diffusers runs on real GPUs, so
// they are compared with the estimator told to follow diffusers (flash attention, its SpatialNorm and tiles);
// Reel's own runtime is priced beside them. Where each lands and why: docs/PLANNER.md.
TEST(CostModelPublished, EstimatesLandNearThePublishedFigures) {
  using K = StageKind;
  const Job job;
  const auto pipeline = [&](const CostModel& m, const std::string& s, const std::string& decoder) {
    return PipelinePeak(m, job, {{K::kTextEncoder, s}, {K::kDenoiser, s}, {K::kVaeDecoder, decoder}}) / 1e9;
  };
  planner::CostModelOptions diffusers;
  diffusers.implementation = planner::Implementation::kDiffusers;
  struct Row {
    std::string model, what;
    double published;  // GB; negative: "less than"
    std::string strategy, decoder;
    double low, high;  // the band asserted for the diffusers-following estimate, as a ratio to the figure
  };
  // CogVideo's 26 GB for 5B is its SAT implementation with every weight on the GPU; how SAT decodes is not known
  // here, so the figure is asserted to lie between all-resident with a tiled decode and all-resident with a whole
  // one, rather than against one estimate.
  {
    const Manifest m = Preset("cogvideox-5b");
    const CostModel reel(m, {}), diff(m, {}, diffusers);
    const double tiled = std::min(pipeline(reel, "none", "none+tiling=256"), pipeline(diff, "none", "none+tiling=256"));
    const double whole = std::max(pipeline(reel, "none", "none"), pipeline(diff, "none", "none"));
    std::printf("cogvideox-5b  without optimisations (SAT)                  published   26.0 GB   all resident: %.2f GB "
                "(tiled decode) to %.2f GB (whole decode)\n",
                tiled, whole);
    EXPECT_LT(tiled, 26.0);
    EXPECT_GT(whole, 26.0);
  }
  const std::vector<Row> rows = {
      {"cogvideox-2b", "no offload", 33, "none", "none", 0.70, 1.10},
      {"cogvideox-2b", "model offload", 19, "model", "model", 0.70, 1.10},
      {"cogvideox-2b", "model offload + VAE tiling", 11, "model", "model+tiling=256", 0.70, 1.10},
      {"cogvideox-2b", "sequential offload (+ slicing + tiling)", -4, "sequential", "model+slicing+tiling=256", 0.70,
       1.10},
      {"cogvideox-5b", "sequential offload + slicing + tiling", 5, "sequential", "model+slicing+tiling=256", 0.70,
       1.10},
  };
  for (const Row& r : rows) {
    const Manifest m = Preset(r.model);
    const double reel = pipeline(CostModel(m, {}), r.strategy, r.decoder);
    const double diff = pipeline(CostModel(m, {}, diffusers), r.strategy, r.decoder);
    const double target = std::abs(r.published);
    std::printf("%-13s %-42s published %s%5.1f GB   diffusers-following %6.2f GB (%+4.0f%%)   Reel %6.2f GB (%+4.0f%%)\n",
                r.model.c_str(), r.what.c_str(), r.published < 0 ? "<" : " ", target, diff,
                100 * (diff / target - 1), reel, 100 * (reel / target - 1));
    EXPECT_GE(diff, r.low * target) << r.model << " " << r.what;
    EXPECT_LE(diff, r.high * target) << r.model << " " << r.what;
    // Reel's decoder holds less than diffusers' (SpatialNorm before the resize, no k=1 caches, outputs leave).
    EXPECT_LE(reel, diff + 1e-9) << r.model << " " << r.what;
  }
  // Measured once on an NVIDIA H200 (PyTorch 2.11, CUDA 13; docs/PLANNER.md): Reel's TorchScript parts as
  // tools/export built them then (chunked attention), and the diffusers-like mirror of tools/export/tests, at full
  // width with random weights, bf16, 49×480×720, guided. Device bytes over the weights, the stage's inputs included.
  struct Measured {
    std::string model;
    K stage;
    std::string strategy;
    planner::Implementation impl;
    double gb, tolerance;
  };
  const auto R = planner::Implementation::kReel;
  for (const Measured& g : std::vector<Measured>{
           {"cogvideox-2b", K::kVaeDecoder, "model", R, 10.065, 0.02},
           {"cogvideox-2b", K::kVaeDecoder, "model+slicing", R, 9.896, 0.02},
           {"cogvideox-2b", K::kVaeDecoder, "model+tiling=256", R, 1.885, 0.02},  // the largest tile's chunks
           {"cogvideox-2b", K::kDenoiser, "model", R, 1.391, 0.02},
           {"cogvideox-5b", K::kDenoiser, "model", R, 2.629, 0.02},
           {"cogvideox-2b", K::kVaeDecoder, "model", planner::Implementation::kDiffusers, 16.299, 0.12},
       }) {
    planner::CostModelOptions o;
    o.implementation = g.impl;
    const CostModel chunked(Preset(g.model, /*fused=*/false), {}, o);
    const double est = chunked.Estimated(g.stage, Gpu(), job, g.strategy, "bf16").activation_bytes / 1e9;
    std::printf("H200 %-13s %-12s %-18s %-9s measured %7.3f GB, estimate %7.3f GB (%+.1f%%)\n", g.model.c_str(),
                StageKindName(g.stage), g.strategy.c_str(), g.impl == R ? "reel" : "diffusers", g.gb, est,
                100 * (est / g.gb - 1));
    EXPECT_NEAR(est, g.gb, g.tolerance * g.gb) << g.model << " " << StageKindName(g.stage) << " " << g.strategy;
  }
  // Per stage, for the table in docs/PLANNER.md.
  for (const char* name : {"cogvideox-2b", "cogvideox-5b"}) {
    const Manifest m = Preset(name);
    for (const auto& [label, model] : {std::pair{"reel", CostModel(m, {})}, std::pair{"diffusers", CostModel(m, {}, diffusers)}}) {
      for (K k : {K::kTextEncoder, K::kDenoiser, K::kVaeDecoder})
        for (const char* s : {"model", "sequential", "model+slicing", "model+tiling=256"}) {
          if ((k == K::kVaeDecoder) != (std::string(s).find('+') != std::string::npos) && std::string(s) != "model")
            continue;
          const auto e = model.Estimated(k, Gpu(), job, s, "bf16");
          std::printf("%-13s %-9s %-12s %-18s peak %6.2f GB = weights %6.2f + activations %6.2f; %6.1f s\n", name,
                      label, StageKindName(k), s, e.peak_bytes() / 1e9, e.weight_peak_bytes / 1e9,
                      e.activation_bytes / 1e9, e.seconds());
        }
    }
  }
}

// Which attention a package computes is read from its manifest (the denoiser's `fused_attention`), and prices its
// memory and its time: fused (SDPA) holds no scores and runs at the flash kernels' share of the rate; chunked holds
// a chunk of float32 scores and is bound by its passes over them.
TEST(CostModelAttention, TheManifestSaysWhichAttentionIsPriced) {
  using K = StageKind;
  using planner::Attention;
  const Manifest fused = Preset("cogvideox-5b"), chunked = Preset("cogvideox-5b", /*fused=*/false);
  Manifest old = chunked;  // a package made before LibTorch 2: no key at all, T5 computed its scores too
  old.stages.at(K::kDenoiser).config.erase("fused_attention");
  EXPECT_EQ(planner::AttentionOf(fused, K::kDenoiser), Attention::kFused);
  EXPECT_EQ(planner::AttentionOf(fused, K::kTextEncoder), Attention::kFused);
  EXPECT_EQ(planner::AttentionOf(chunked, K::kDenoiser), Attention::kMaterialised);
  EXPECT_EQ(planner::AttentionOf(chunked, K::kTextEncoder), Attention::kFused);  // T5 has no switch
  EXPECT_EQ(planner::AttentionOf(old, K::kDenoiser), Attention::kMaterialised);
  EXPECT_EQ(planner::AttentionOf(old, K::kTextEncoder), Attention::kMaterialised);

  const auto est = [](const Manifest& m, K k, const Device& d, const Job& j, const std::string& dtype = "bf16") {
    return CostModel(m, {}).Estimated(k, d, j, "none", dtype, /*calibrated=*/false);
  };
  // Memory. Where attention sets the block's peak (5B at 17×256×256: chunks of 2^26 scores, 512 MiB of them in
  // float32 at once) fused needs at least a float32 chunk less (its own peak is then elsewhere in the block: 0.43 GB
  // less); at 49×480×720 the feed-forward sets it, for both.
  const Job mid{17, 256, 256, 1, 6.0}, full;
  for (const Device& d : {Gpu(), Cpu()}) {
    const auto f = est(fused, K::kDenoiser, d, mid), c = est(chunked, K::kDenoiser, d, mid);
    std::printf("5B denoiser 17x256x256 on %s: activations fused %.3f GB, chunked %.3f GB\n", d.kind.c_str(),
                f.activation_bytes / 1e9, c.activation_bytes / 1e9);
    EXPECT_EQ(f.attention, Attention::kFused);
    EXPECT_EQ(c.attention, Attention::kMaterialised);
    EXPECT_GE(c.activation_bytes - f.activation_bytes, planner::kAttentionChunkElements * 4) << d.kind;
    EXPECT_EQ(f.weight_peak_bytes, c.weight_peak_bytes);
    EXPECT_EQ(est(fused, K::kDenoiser, d, full).activation_bytes, est(chunked, K::kDenoiser, d, full).activation_bytes)
        << d.kind;
    // T5's 226×226 scores in float32 are gone too (small beside its weights).
    EXPECT_LT(est(fused, K::kTextEncoder, d, full).activation_bytes,
              est(old, K::kTextEncoder, d, full).activation_bytes)
        << d.kind;
  }

  // Time on CUDA (H100 or H200: the same tensor cores; the defaults): 800 TFLOP/s measured on bf16 GEMMs, linear
  // layers at MFU 0.70, fused attention at 0.40, 0.5 ms per part call (docs/PLANNER.md).
  const double rate = 800e12;
  for (const char* name : {"cogvideox-2b", "cogvideox-5b"}) {
    const Manifest m = Preset(name);
    const auto e = est(m, K::kDenoiser, Gpu(), full);
    const double calls = full.steps * (m.stage(K::kDenoiser).num_blocks() + 2) * 0.5e-3;
    EXPECT_NEAR(e.compute_seconds, e.dense_flops / (0.70 * rate) + e.attention_flops / (0.40 * rate) + calls,
                1e-9 * e.compute_seconds)
        << name;
    EXPECT_EQ(e.copy_seconds, 0);
  }

  // CogVideoX-5B, one guided step at 49×480×720 (../shared/ANCHORS.md: ~6.6e14 FLOP).
  const auto f5 = est(fused, K::kDenoiser, Gpu(), full), c5 = est(chunked, K::kDenoiser, Gpu(), full);
  const double flops = (f5.dense_flops + f5.attention_flops) / full.steps;
  std::printf("5B step: %.3e FLOP (linear %.3e, attention %.3e)\n", flops, f5.dense_flops / full.steps,
              f5.attention_flops / full.steps);
  EXPECT_NEAR(flops, 6.6e14, 0.02 * 6.6e14);
  EXPECT_DOUBLE_EQ(c5.dense_flops + c5.attention_flops, f5.dense_flops + f5.attention_flops);

  // Against what was measured and published. Chunked, Reel's packages before LibTorch 2 on an H200
  // (docs/BENCHMARKS.md): 21.8 s per 5B step and 8.41 s per 2B step; the estimate within 10% of each. Fused, the
  // published diffusers runs (CogVideo's README, ../shared/ANCHORS.md): ~90 s for 5B and ~45 s for 2B, 50 steps on
  // one H100, with model offload and VAE tiling. Their denoisers' share is what the step estimate answers to: 5B
  // within −20%…0% of 90 s / 50 = 1.8 s (the 90 s also holds T5, the offload copies and the decode), and the whole
  // pipeline priced as published (diffusers-following, model offload, tiled decode) within 15% of 90 s and 25% of
  // 45 s. To be confirmed by the next GPU session's tests/gpu/check.sh on a fused package.
  planner::CostModelOptions diffusers;
  diffusers.implementation = planner::Implementation::kDiffusers;
  struct Row {
    const char* name;
    double chunked_step, published_pipeline;
  };
  for (const Row& r : {Row{"cogvideox-2b", 8.41, 45}, Row{"cogvideox-5b", 21.8, 90}}) {
    const double chunked_step = est(Preset(r.name, false), K::kDenoiser, Gpu(), full).seconds() / full.steps;
    const double fused_step = est(Preset(r.name), K::kDenoiser, Gpu(), full).seconds() / full.steps;
    const CostModel published(Preset(r.name), {}, diffusers);
    double pipeline = 0;
    for (const auto& [k, strategy] : {std::pair{K::kTextEncoder, "model"}, std::pair{K::kDenoiser, "model"},
                                      std::pair{K::kVaeDecoder, "model+tiling=256"}})
      pipeline += published.Estimated(k, Gpu(), full, strategy, "bf16", false).seconds();
    std::printf("%s on CUDA: chunked step %.2f s (measured on an H200 %.2f s, %+.0f%%); fused step %.3f s "
                "(published pipeline / 50 = %.2f s, %+.0f%%); pipeline as published %.1f s (published %.0f s, "
                "%+.0f%%)\n",
                r.name, chunked_step, r.chunked_step, 100 * (chunked_step / r.chunked_step - 1), fused_step,
                r.published_pipeline / 50, 100 * (fused_step / (r.published_pipeline / 50) - 1), pipeline,
                r.published_pipeline, 100 * (pipeline / r.published_pipeline - 1));
    EXPECT_NEAR(chunked_step, r.chunked_step, 0.10 * r.chunked_step) << r.name;
    const double band = std::string(r.name) == "cogvideox-5b" ? 0.15 : 0.25;
    EXPECT_NEAR(pipeline, r.published_pipeline, band * r.published_pipeline) << r.name;
    if (std::string(r.name) == "cogvideox-5b") {
      EXPECT_GE(fused_step, 0.80 * 1.8);
      EXPECT_LE(fused_step, 1.8);
    }
  }

  // On the simulated device fused attention is the CPU flash kernel: FLOPs at its measured share of the rate,
  // faster than chunked's passes over its scores.
  const auto cf = est(fused, K::kDenoiser, Cpu(), mid), cc = est(chunked, K::kDenoiser, Cpu(), mid);
  EXPECT_LT(cf.compute_seconds, cc.compute_seconds);
}

}  // namespace
}  // namespace reel
