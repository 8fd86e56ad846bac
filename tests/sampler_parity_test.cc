// Reel's sampling against diffusers itself (tests/sampler_parity.py runs diffusers from the project's venv): the
// DDIM and DPM scheduler steps (DPM noise included) and the initial latents bit for bit, the dynamic-CFG guidance
// scale of every step, and whole pipelines (`reel generate` against CogVideoXPipeline on one tiny checkpoint) frame
// by frame.
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/synth.h"
#include "runtime/pipeline.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "test_util.h"

namespace reel {
namespace {

using reel::testing::Quote;
using reel::testing::RunCommand;
using reel::testing::ScratchDir;

const std::string kHelper = std::string(REEL_SOURCE_DIR) + "/tests/sampler_parity.py";

std::string Python(const std::string& args) { return std::string(REEL_PYTHON) + " " + args; }

// Reads the tensors sampler_parity.py lists as `name dtype d0,d1,...` (raw bytes in DIR/name.bin).
std::map<std::string, torch::Tensor> ReadTensors(const std::filesystem::path& dir, const std::string& listing) {
  const std::map<std::string, torch::ScalarType> dtypes = {
      {"f32", torch::kFloat32}, {"f64", torch::kFloat64}, {"bf16", torch::kBFloat16}, {"f16", torch::kFloat16}};
  std::map<std::string, torch::Tensor> out;
  std::istringstream lines(listing);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream in(line);
    std::string name, dtype, dims;
    if (!(in >> name >> dtype >> dims) || !dtypes.count(dtype)) continue;
    std::ifstream f(dir / (name + ".bin"), std::ios::binary);
    if (!f) continue;
    std::vector<int64_t> shape;
    std::istringstream d(dims);
    for (std::string x; std::getline(d, x, ',');)
      if (x != "-") shape.push_back(std::stoll(x));
    torch::Tensor t = torch::empty(shape, dtypes.at(dtype));
    f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    if (f.gcount() == static_cast<std::streamsize>(t.nbytes())) out[name] = t;
  }
  return out;
}

// Bit-for-bit equality, with the largest difference in the message when they differ.
::testing::AssertionResult SameBits(const torch::Tensor& got, const torch::Tensor& want) {
  if (got.scalar_type() != want.scalar_type() || got.sizes() != want.sizes())
    return ::testing::AssertionFailure() << "dtype/shape " << got.scalar_type() << got.sizes() << " vs "
                                         << want.scalar_type() << want.sizes();
  const torch::Tensor a = got.contiguous(), b = want.contiguous();
  if (std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0) return ::testing::AssertionSuccess();
  const double diff = (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
  const int64_t n = a.ne(b).sum().item<int64_t>();
  return ::testing::AssertionFailure() << n << " of " << a.numel() << " values differ, by up to " << diff;
}

SchedulerSpec Spec(const std::string& kind, double snr_shift) {
  SchedulerSpec s;
  s.kind = kind;
  s.snr_shift_scale = snr_shift;
  return s;
}

// The cases of sampler_parity.py's CASES, as manifests record them.
struct StepCase {
  std::string name;
  SchedulerSpec spec;
  int steps;
};

std::vector<StepCase> StepCases() {
  SchedulerSpec eps_linear = Spec("cogvideox_ddim", 1.0);
  eps_linear.prediction_type = "epsilon";
  eps_linear.beta_schedule = "linear";
  eps_linear.timestep_spacing = "linspace";
  eps_linear.rescale_betas_zero_snr = false;
  eps_linear.set_alpha_to_one = false;
  SchedulerSpec eps_linspace = Spec("cogvideox_dpm", 2.0);
  eps_linspace.prediction_type = "epsilon";
  eps_linspace.timestep_spacing = "linspace";
  eps_linspace.set_alpha_to_one = false;
  return {{"ddim_5b_f32", Spec("cogvideox_ddim", 1.0), 6},  {"ddim_2b_bf16", Spec("cogvideox_ddim", 3.0), 5},
          {"ddim_eps_linear", eps_linear, 4},                {"dpm_5b_f32", Spec("cogvideox_dpm", 1.0), 6},
          {"dpm_2b_bf16", Spec("cogvideox_dpm", 3.0), 7},    {"dpm_5b_f16", Spec("cogvideox_dpm", 1.0), 3},
          {"dpm_eps_linspace", eps_linspace, 5},             {"dpm_one_step", Spec("cogvideox_dpm", 1.0), 1}};
}

// Each scheduler step as CogVideoXPipeline's loop makes it (the latents drawn from the generator seeded 7, a
// prediction per step, the DPM noise from that generator, the cast to the latents' dtype after each step): Reel's
// latents equal diffusers' bit for bit after every step, in f32, bf16 and f16.
TEST(SamplerParity, StepsAreDiffusersBitForBit) {
  ScratchDir dir("sampler-steps");
  const auto r = RunCommand(Python(Quote(kHelper) + " steps " + Quote(dir.path().string())));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto t = ReadTensors(dir.path(), r.output);
  for (const auto& c : StepCases()) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(t.count(c.name + ".alphas")) << r.output;
    EXPECT_TRUE(SameBits(DiffusersAlphasCumprod(c.spec), t.at(c.name + ".alphas")));
    auto sampler = Sampler::Make(c.spec, c.steps);
    ASSERT_EQ(static_cast<int>(sampler->timesteps().size()), c.steps);
    at::Generator gen = JobGenerator(7);
    const torch::Tensor want0 = t.at(c.name + ".latents0");
    torch::Tensor latents = DiffusersNoise(want0.sizes(), want0.scalar_type(), gen);
    ASSERT_TRUE(SameBits(latents, want0));
    for (int i = 0; i < c.steps; ++i) {
      SCOPED_TRACE(::testing::Message() << "step " << i);
      latents = sampler->Step(i, t.at(c.name + ".output" + std::to_string(i)), latents, gen).to(want0.scalar_type());
      ASSERT_TRUE(SameBits(latents, t.at(c.name + ".latents" + std::to_string(i + 1))));
    }
  }
}

// How many draws each DPM step takes from the generator (diffusers' order, which the bit-for-bit test above holds
// Reel to), and that the last step lands on x̂0 whatever the noise (ᾱ_prev = 1 zeroes the noise term).
TEST(SamplerParity, DpmDrawsOnceOnTheFirstAndLastStepsAndTwiceBetween) {
  DpmSampler s(Spec("cogvideox_dpm", 1.0), 4);
  EXPECT_EQ(s.Draws(0), 1);
  EXPECT_EQ(s.Draws(1), 2);
  EXPECT_EQ(s.Draws(2), 2);
  EXPECT_EQ(s.Draws(3), 1);
  const torch::Tensor x = torch::randn({1, 2, 4, 3, 3}), v = torch::randn({1, 2, 4, 3, 3});
  EXPECT_THROW(s.StepWithNoise(0, v, x, {}), Error);
  DpmSampler last(Spec("cogvideox_dpm", 1.0), 1);
  const torch::Tensor a = last.StepWithNoise(0, v, x, {torch::randn_like(x)});
  const torch::Tensor b = last.StepWithNoise(0, v, x, {torch::zeros_like(x)});
  EXPECT_TRUE(SameBits(a, b));
}

// CogVideoXPipeline.prepare_latents with torch.Generator("cpu").manual_seed(seed), in f32, bf16 and f16: Reel's
// initial latents for the same seed, job shape and dtype are the same bits (the shape [1, F, C, H, W] of a 9-frame
// 64×96 job).
TEST(SamplerParity, InitialLatentsAreDiffusersPrepareLatents) {
  ScratchDir dir("sampler-latents");
  const auto r = RunCommand(Python(Quote(kHelper) + " latents " + Quote(dir.path().string())));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto t = ReadTensors(dir.path(), r.output);
  ASSERT_EQ(t.size(), 9u) << r.output;
  for (const uint64_t seed : {uint64_t{0}, uint64_t{42}, (uint64_t{1} << 40) + 3}) {
    for (const auto& [name, dtype] : std::map<std::string, torch::ScalarType>{
             {"f32", torch::kFloat32}, {"bf16", torch::kBFloat16}, {"f16", torch::kFloat16}}) {
      SCOPED_TRACE(::testing::Message() << "seed " << seed << " " << name);
      at::Generator gen = JobGenerator(seed);
      EXPECT_TRUE(SameBits(DiffusersNoise({1, 3, 16, 8, 12}, dtype, gen),
                           t.at("prepare_latents." + std::to_string(seed) + "." + name)));
    }
  }
}

// The guidance scale of every step of CogVideoXPipeline.__call__ with use_dynamic_cfg (read by its step callback)
// for several step counts and scales: Reel's is the same double.
TEST(SamplerParity, DynamicGuidanceIsDiffusersEveryStep) {
  const auto r = RunCommand(Python(Quote(kHelper) + " guidance"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  int checked = 0;
  std::map<int, int> steps_seen;
  while (std::getline(lines, line)) {
    std::istringstream in(line);
    int n = 0, t = 0;
    double g = 0, want = 0;
    if (!(in >> n >> g >> t >> want)) continue;
    const double got = GuidanceScale(g, true, n, t);
    EXPECT_EQ(got, want) << "N=" << n << " g=" << g << " t=" << t;
    EXPECT_EQ(GuidanceScale(g, false, n, t), g);
    ++steps_seen[n];
    ++checked;
  }
  // N = 1, 4, 13, 50, each at three scales.
  EXPECT_EQ(steps_seen, (std::map<int, int>{{1, 3}, {4, 12}, {13, 39}, {50, 150}})) << r.output;
  EXPECT_EQ(checked, 204);
}

// diffusers' precision policy: the latents are kept in the denoiser's dtype (cast after every step), so in bf16 and
// f16 the latents the loop hands the decoder are values of that dtype; in f32 they are not rounded to one.
TEST(SamplerParity, LatentsKeepTheDenoisersDtype) {
  ScratchDir dir("sampler-policy");
  SynthOptions o;
  o.preset = "tiny";
  o.seed = 3;
  o.out = dir / "tiny";
  SynthesizePackage(o);
  GenerateRequest r = reel::testing::SmallRequest(9, 64, 64, 5);
  r.steps = 3;
  for (const DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dt));
    StagePackage pkg = StagePackage::Load(dir / "tiny");
    RunOptions options;
    options.dtype[StageKind::kDenoiser] = dt;
    Runtime rt(pkg, options);
    const torch::Tensor z = rt.DenoiseLatents(r, rt.EncodePrompt(r), {});
    ASSERT_EQ(z.scalar_type(), torch::kFloat32);
    const bool rounded = z.equal(z.to(ToTorch(dt)).to(torch::kFloat32));
    if (dt == DType::kF32)
      EXPECT_FALSE(z.equal(z.to(torch::kBFloat16).to(torch::kFloat32)));
    else
      EXPECT_TRUE(rounded);
  }
}

// Whole pipelines: a tiny CogVideoXPipeline with random weights (bench/diffusers_pipeline.py checkpoint), exported
// with tools/export, run by diffusers (its own noise from the seed) and by `reel generate --seed` with the same job.
// ctest runs each test in its own process, so each builds only the checkpoint it needs.
class PipelineParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new ScratchDir("sampler-pipeline"); }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // Builds the checkpoint with the scheduler class, then exports it once per dtype; returns the package directory.
  static std::string Package(const std::string& scheduler, const std::string& dtype) {
    const std::string ckpt = (dir_->path() / ("ckpt-" + scheduler)).string();
    if (!std::filesystem::exists(ckpt + "/model_index.json")) {
      const auto c = RunCommand(Python(Quote(std::string(REEL_SOURCE_DIR) + "/bench/diffusers_pipeline.py") +
                                       " checkpoint --case tiny --scheduler " + scheduler + " --out " + Quote(ckpt)));
      EXPECT_EQ(c.exit_code, 0) << c.output;
    }
    const std::string pkg = (dir_->path() / ("pkg-" + scheduler + "-" + dtype)).string();
    if (!std::filesystem::exists(pkg + "/manifest.json")) {
      const auto e = RunCommand(
          "REEL_BUILD_DIR=" + Quote(std::filesystem::path(REEL_BINARY).parent_path().parent_path().string()) + " " +
          Python(Quote(std::string(REEL_SOURCE_DIR) + "/tools/export/reel_export.py") + " --checkpoint " +
                 Quote((dir_->path() / ("ckpt-" + scheduler)).string()) + " --out " + Quote(pkg) + " --dtype " +
                 dtype + " --name tiny-" + scheduler + "-" + dtype));
      EXPECT_EQ(e.exit_code, 0) << e.output;
    }
    return pkg;
  }

  struct Agreement {
    int max = -1;
    double mean = 0, psnr = 0;
  };

  // Runs the job on both sides and compares the frames (8-bit levels).
  static Agreement Compare(const std::string& scheduler, const std::string& dtype, const std::string& job) {
    const std::string pkg = Package(scheduler, dtype);
    const auto tag = scheduler + "-" + dtype + "-" + std::to_string(std::hash<std::string>()(job) % 100000);
    const std::string frames = (dir_->path() / ("reel-" + tag)).string();
    const std::string npy = (dir_->path() / ("diffusers-" + tag + ".npy")).string();
    const std::string prompt = "a red fox running through fresh snow";
    const auto g = RunCommand(std::string(REEL_BINARY) + " generate --model " + Quote(pkg) + " --prompt " +
                              Quote(prompt) + " " + job + " --threads 2 --out " +
                              Quote((dir_->path() / (tag + ".mp4")).string()) + " --frames-dir " + Quote(frames));
    EXPECT_EQ(g.exit_code, 0) << g.output;
    const auto d = RunCommand(
        Python(Quote(std::string(REEL_SOURCE_DIR) + "/bench/diffusers_pipeline.py") + " run --checkpoint " +
               Quote((dir_->path() / ("ckpt-" + scheduler)).string()) + " --dtype " + dtype + " " + job +
               " --threads 2 --prompt " + Quote(prompt) + " --json " +
               Quote((dir_->path() / (tag + ".json")).string()) + " --frames-out " + Quote(npy)));
    EXPECT_EQ(d.exit_code, 0) << d.output;
    const auto c = RunCommand(Python(Quote(kHelper) + " compare " + Quote(frames) + " " + Quote(npy)));
    Agreement a;
    const auto at = c.output.rfind("max ");
    EXPECT_NE(at, std::string::npos) << c.output;
    if (at == std::string::npos) return a;
    std::istringstream in(c.output.substr(at));
    std::string w;
    in >> w >> a.max >> w >> a.mean >> w >> a.psnr;
    std::printf("%s %s [%s]: max %d levels, mean %.6f, PSNR %.2f dB\n", scheduler.c_str(), dtype.c_str(), job.c_str(),
                a.max, a.mean, a.psnr);
    return a;
  }

  static ScratchDir* dir_;
};
ScratchDir* PipelineParity::dir_ = nullptr;

const std::string kJob = "--frames 9 --height 64 --width 64 --steps 5 --guidance 6 --seed 42";

TEST_F(PipelineParity, DdimWithGuidanceIsDiffusersWithinOneLevelInF32) {
  const Agreement a = Compare("ddim", "f32", kJob);
  EXPECT_GE(a.max, 0);
  EXPECT_LE(a.max, 1);
}

TEST_F(PipelineParity, DynamicGuidanceIsDiffusersWithinOneLevelInF32) {
  const Agreement a = Compare("ddim", "f32", kJob + " --dynamic-cfg");
  EXPECT_GE(a.max, 0);
  EXPECT_LE(a.max, 1);
}

TEST_F(PipelineParity, DpmIsDiffusersWithinOneLevelInF32) {
  // Its noise term is drawn at every step from the job's generator on both sides: equal only if every draw is.
  const Agreement a = Compare("dpm", "f32", kJob);
  EXPECT_GE(a.max, 0);
  EXPECT_LE(a.max, 1);
}

TEST_F(PipelineParity, Bf16IsDiffusersBf16Above40Db) {
  // bf16 latents as diffusers keeps them, and parts computing the libraries' ops in their dtypes: measured max 1
  // level, 53.8 dB, where diffusers' postprocess rounds x * 0.5 + 0.5 to bf16 before the levels (44.8 dB before T5's
  // GELU and the norms followed the libraries; docs/STAGE_PACKAGE.md, Parity).
  const Agreement a = Compare("ddim", "bf16", kJob);
  EXPECT_GE(a.max, 0);
  EXPECT_GE(a.psnr, 40.0);
}

}  // namespace
}  // namespace reel
