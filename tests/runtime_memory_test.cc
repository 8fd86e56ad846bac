// Memory strategies on the simulated device: every offload mode gives the same frames as `none`; the device's
// accounting is exact for a module counted by hand and fails where a device of that size would; block:1 runs
// under a capacity that `none` cannot.
#include <cmath>
#include <numeric>
#include <set>
#include <iostream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "common/error.h"
#include "models/synth.h"
#include "runtime/device_memory.h"
#include "runtime/pipeline.h"
#include "runtime/recovery.h"
#include "runtime/stage_executor.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using reel::testing::ScratchDir;

class RuntimeMemory : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    scratch_ = new ScratchDir("memory");
    SynthOptions o;
    o.preset = "tiny";
    o.seed = 9;
    o.out = *scratch_ / "tiny";
    SynthesizePackage(o);
  }
  static void TearDownTestSuite() { delete scratch_; }
  void TearDown() override { DeviceMemory::Get().SetCapacity(0); }

  static GenerateRequest Request() { return reel::testing::SmallRequest(9, 64, 64, 1); }
  // Runs the tiny job with `options` under `capacity` (0 = unlimited) and returns the frames and device peak.
  static std::pair<Video, int64_t> Run(const RunOptions& options, int64_t capacity = 0) {
    StagePackage pkg = StagePackage::Load(*scratch_ / "tiny");
    auto& mem = DeviceMemory::Get();
    mem.SetCapacity(capacity);
    const int64_t base = mem.used();
    mem.ResetPeak();
    Video v;
    {
      Runtime rt(pkg, options);
      v = rt.Generate(Request(), {});
    }
    // TorchScript keeps the few constants it folds while optimising a graph on its first run (~200 bytes).
    EXPECT_LE(mem.used() - base, 1024) << "the run left device bytes behind";
    return {v, mem.peak() - base};
  }
  static RunOptions Offloaded(const std::string& mode) {
    RunOptions o;
    for (auto k : {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder})
      o.offload[k] = ParseOffload(mode, "--offload");
    return o;
  }
  static ScratchDir* scratch_;
};
ScratchDir* RuntimeMemory::scratch_ = nullptr;

TEST_F(RuntimeMemory, EveryOffloadModeGivesIdenticalFrames) {
  const auto [none, none_peak] = Run({});
  ASSERT_EQ(none.frames, 9);
  for (const std::string mode : {"model", "block:1", "block:2", "sequential"}) {
    const auto [v, peak] = Run(Offloaded(mode));
    EXPECT_EQ(v.rgb, none.rgb) << mode;
    EXPECT_LT(peak, none_peak) << mode << " should need less device memory than none";
  }
  RunOptions sliced;
  sliced.vae.slicing = true;
  EXPECT_EQ(Run(sliced).first.rgb, none.rgb) << "VAE slicing must equal whole decoding";
}

TEST_F(RuntimeMemory, Bf16WeightsRunAndStayClose) {
  // The same starting noise in both dtypes (diffusers' draw is another random stream in bf16).
  RunOptions o32;
  o32.f32_noise = true;
  const auto [f32, p32] = Run(o32);
  RunOptions o = o32;
  for (auto k : {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}) o.dtype[k] = DType::kBF16;
  const auto [bf16, p16] = Run(o);
  ASSERT_EQ(bf16.rgb.size(), f32.rgb.size());
  double err = 0;
  for (size_t i = 0; i < f32.rgb.size(); ++i) err += std::abs(int(f32.rgb[i]) - int(bf16.rgb[i]));
  EXPECT_LT(err / f32.rgb.size(), 20.0) << "mean absolute 8-bit difference";
  EXPECT_LT(p16, p32);
}

double Psnr(const Video& a, const Video& b) {
  double mse = 0;
  for (size_t i = 0; i < a.rgb.size(); ++i) {
    const double d = (double(a.rgb[i]) - double(b.rgb[i])) / 255.0;
    mse += d * d;
  }
  mse /= static_cast<double>(a.rgb.size());
  return mse == 0 ? 99.0 : 10.0 * std::log10(1.0 / mse);
}

// int8 storage with per-channel scales against bf16 weights: the error docs/MEMORY.md states.
TEST_F(RuntimeMemory, Int8WeightsStayCloseToBf16AndShrinkHostMemory) {
  RunOptions bf16, int8, f32;
  for (RunOptions* o : {&bf16, &int8, &f32}) o->f32_noise = true;  // the same starting noise in every dtype
  for (auto k : {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}) {
    bf16.dtype[k] = DType::kBF16;
    int8.int8[k] = true;
  }
  const Video ref32 = Run(f32).first, ref16 = Run(bf16).first, q = Run(int8).first;
  const double psnr_q = Psnr(q, ref16), psnr_16 = Psnr(ref16, ref32), psnr_q32 = Psnr(q, ref32);
  std::cout << "PSNR int8 vs bf16 " << psnr_q << " dB, int8 vs f32 " << psnr_q32 << " dB, bf16 vs f32 " << psnr_16
            << " dB\n";
  EXPECT_GT(psnr_q, 25.0);
  EXPECT_GT(psnr_q32, 25.0);
  StagePackage pkg = StagePackage::Load(*scratch_ / "tiny");
  int64_t float_bytes = 0;
  {
    Runtime rt(pkg, f32);
    float_bytes = rt.host_weight_bytes();
  }
  StagePackage pkg2 = StagePackage::Load(*scratch_ / "tiny");
  Runtime rt(pkg2, int8);
  EXPECT_LT(rt.host_weight_bytes(), float_bytes * 3 / 10);
}

TEST_F(RuntimeMemory, HostBudgetReleasesTheTextEncoderOrRefusesTheRun) {
  StagePackage pkg = StagePackage::Load(*scratch_ / "tiny");
  int64_t total = 0, te = 0;
  {
    Runtime rt(pkg, {});
    total = rt.host_weight_bytes();
    te = rt.executor(StageKind::kTextEncoder).weight_bytes();
  }
  RunOptions tight;
  tight.host_budget = total - te / 2;  // fits only once the text encoder has run and let go
  StagePackage p2 = StagePackage::Load(*scratch_ / "tiny");
  Video v;
  {
    Runtime rt(p2, tight);
    v = rt.Generate(Request(), {});
    EXPECT_EQ(rt.host_weight_bytes(), total - te);
  }
  EXPECT_EQ(v.rgb, Run({}).first.rgb);
  RunOptions too_tight;
  too_tight.host_budget = total - te - 1;
  StagePackage p3 = StagePackage::Load(*scratch_ / "tiny");
  try {
    Runtime rt(p3, too_tight);
    FAIL() << "the run cannot fit";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--host-memory"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--weights int8"), std::string::npos) << e.what();
  }
}

// A module whose bytes can be counted by hand: y = x·Wᵀ with W [256, 1024] f32 and x [64, 1024].
TEST_F(RuntimeMemory, AccountingIsExactForAHandCountedModule) {
  auto& mem = DeviceMemory::Get();
  torch::jit::Module m("Hand");
  m.register_parameter("w", torch::randn({256, 1024}), false);
  m.define("def forward(self, x):\n    return torch.matmul(x, self.w.t())\n");
  const int64_t weight = 256 * 1024 * 4, input = 64 * 1024 * 4, output = 64 * 256 * 4;
  const int64_t base = mem.used();
  mem.ResetPeak();
  {
    PlacedPart part(m, "hand.pt");
    part.ToDevice(reel::SimulatedDevice());
    EXPECT_EQ(mem.used() - base, weight);
    torch::Tensor y;
    {
      DeviceScope device;
      torch::NoGradGuard ng;
      torch::Tensor x = torch::randn({64, 1024});
      y = part.module().forward({x}).toTensor();
    }
    const int64_t counted = weight + input + output;
    EXPECT_NEAR(static_cast<double>(mem.peak() - base), static_cast<double>(counted), 0.05 * counted);
    EXPECT_GE(mem.peak() - base, counted);
    part.ToHost();
    y = torch::Tensor();
  }
  EXPECT_EQ(mem.used(), base);

  // Capacity just below what the forward needs: the allocation of the output fails, nothing leaks.
  PlacedPart part(m, "hand.pt");
  mem.SetCapacity(base + weight + input + output - 1);
  part.ToDevice(reel::SimulatedDevice());
  {
    DeviceScope device;
    torch::NoGradGuard ng;
    torch::Tensor x = torch::randn({64, 1024});
    EXPECT_THROW(part.module().forward({x}), std::exception);
    auto oom = TakeOutOfMemory();
    ASSERT_TRUE(oom.has_value());
    EXPECT_EQ(oom->requested, output);
    EXPECT_EQ(oom->capacity, base + weight + input + output - 1);
  }
  part.ToHost();
  EXPECT_EQ(mem.used(), base);
  // With exactly enough, it runs.
  mem.SetCapacity(base + weight + input + output);
  part.ToDevice(reel::SimulatedDevice());
  {
    DeviceScope device;
    torch::NoGradGuard ng;
    torch::Tensor x = torch::randn({64, 1024});
    EXPECT_NO_THROW(part.module().forward({x}));
  }
  part.ToHost();
}

// A prefetched block is counted from the moment its copy is queued, as a GPU's copy stream allocates the copy's
// destination then: while block b computes under block:1 the device holds the edges, block b and block b + 1
// whole, however far the copy thread has got (before, the count depended on it, and a loaded machine saw peaks a
// block lower). A call with none after it copies nothing in behind its last block.
TEST_F(RuntimeMemory, APrefetchedBlockIsCountedWhenItsCopyIsQueued) {
  const auto k = StageKind::kTextEncoder;
  StagePackage pkg = StagePackage::Load(*scratch_ / "tiny", std::set<StageKind>{k});
  const LoadedStage& stage = pkg.stage(k);
  const auto bytes_of = [](const torch::jit::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.named_parameters(/*recurse=*/false)) n += p.value.nbytes();
    return n;
  };
  std::vector<int64_t> block, edges_each;
  for (size_t i = 0; i < stage.parts.size(); ++i)
    (stage.manifest->parts[i].role == "block" ? block : edges_each).push_back(bytes_of(stage.parts[i]));
  ASSERT_GE(block.size(), 2u);
  int64_t edges = 0;
  for (int64_t b : edges_each) edges += b;
  const int64_t all_blocks = std::accumulate(block.begin(), block.end(), int64_t{0});
  auto& mem = DeviceMemory::Get();
  const int64_t base = mem.used();
  {
    StageExecutor e(k, stage, ParseOffload("block:1", "--offload"), SimulatedDevice(), nullptr);
    e.PlaceResident();
    e.Begin();
    EXPECT_EQ(mem.used() - base, edges);
    for (const bool another : {true, false}) {
      SCOPED_TRACE(another ? "a call with another after it" : "the last call");
      std::vector<int64_t> seen;
      e.RunBlocks([&](torch::jit::Module&) { seen.push_back(mem.used() - base); }, another);
      ASSERT_EQ(seen.size(), block.size());
      for (size_t b = 0; b < block.size(); ++b) {
        // After the last block, block 0 of the next call is copied in behind it, if there is a next call.
        const int64_t next = b + 1 < block.size() ? block[b + 1] : (another ? block[0] : 0);
        EXPECT_EQ(seen[b], edges + block[b] + next) << "block " << b;
      }
    }
    e.End();
    // Every block was copied once per call, and nothing behind the last call.
    EXPECT_EQ(e.stats().copied_bytes, 2 * all_blocks);
    EXPECT_EQ(mem.peak() - base, edges + block[0] + block[1]);
  }
  EXPECT_EQ(mem.used(), base);
}

// A guidance branch holds the denoiser across steps and calls Denoise once a step: under block:1 each step streams
// every block once, block 0 of the next step is copied in behind the last block, and nothing behind the last step.
TEST_F(RuntimeMemory, ABranchCopiesEachBlockOncePerStepAndNothingBehindItsLastStep) {
  const auto k = StageKind::kDenoiser;
  StagePackage pkg = StagePackage::Load(*scratch_ / "tiny", std::set<StageKind>{k});
  int64_t blocks = 0;
  const LoadedStage& stage = pkg.stage(k);
  for (size_t i = 0; i < stage.parts.size(); ++i)
    if (stage.manifest->parts[i].role == "block")
      for (const auto& p : stage.parts[i].named_parameters(/*recurse=*/false)) blocks += p.value.nbytes();
  RunOptions o;
  o.offload[k] = ParseOffload("block:1", "--offload");
  Runtime rt(pkg, o);
  const GenerateRequest r = Request();
  JobShape shape = rt.ShapeOf(r);
  shape.batch = 1;
  const Manifest& m = pkg.manifest();
  torch::NoGradGuard no_grad;
  DeviceScope device;
  const auto& latent_spec = m.stage(k).inputs.at(0);
  const int64_t f = (r.frames - 1) / m.vae.temporal_compression + 1;
  const torch::Tensor latents = torch::randn({1, f, std::get<int64_t>(latent_spec.shape[2]),
                                              r.height / m.vae.spatial_compression, r.width / m.vae.spatial_compression});
  const auto& text_spec = m.stage(k).inputs.at(1);
  const torch::Tensor text =
      torch::randn({1, m.tokenizer.max_length, std::get<int64_t>(text_spec.shape[2])}).to(ToTorch(text_spec.dtype));
  const int steps = 3;
  rt.executor(k).stats() = StageStats{};
  rt.BeginStage(k);
  for (int i = 0; i < steps; ++i)
    rt.Denoise(latents, text, torch::full({1}, 999 - 300 * i, torch::kInt64), shape, /*last_step=*/i + 1 == steps);
  rt.EndStage(k);
  EXPECT_EQ(rt.executor(k).stats().copied_bytes, steps * blocks);
}

// A prefetch that does not fit fails when it is queued, as on a GPU, naming the bytes; the device keeps nothing.
TEST_F(RuntimeMemory, APrepaymentThatDoesNotFitFailsAtOnceAndLeavesNothing) {
  auto& mem = DeviceMemory::Get();
  const int64_t base = mem.used();
  mem.SetCapacity(base + (1 << 20));
  EXPECT_THROW(DevicePrepayment((1 << 20) + 1), std::exception);
  const auto oom = TakeOutOfMemory();
  ASSERT_TRUE(oom.has_value());
  EXPECT_EQ(oom->requested, (1 << 20) + 1);
  EXPECT_EQ(mem.used(), base);
  torch::Tensor b;
  {
    // What fits is counted at once; allocations in its scope draw on it (the count does not move), what goes
    // beyond it is counted as usual, and what is left is given back.
    DevicePrepayment paid(4096);
    EXPECT_EQ(mem.used(), base + 4096);
    torch::Tensor a;
    {
      DeviceScope device;
      PrepaidScope scope(&paid);
      a = torch::empty({512}, torch::kFloat32);  // 2048 bytes
      EXPECT_EQ(mem.used(), base + 4096);
      EXPECT_EQ(paid.left(), 2048);
      b = torch::empty({1024}, torch::kFloat32);  // 4096: 2048 drawn, 2048 more counted
      EXPECT_EQ(mem.used(), base + 6144);
      EXPECT_EQ(paid.left(), 0);
    }
    a = torch::Tensor();
    EXPECT_EQ(mem.used(), base + 4096);
  }
  EXPECT_EQ(mem.used(), base + 4096);  // b lives on
  {
    DevicePrepayment unused(1000);
  }
  EXPECT_EQ(mem.used(), base + 4096);
  b = torch::Tensor();
  EXPECT_EQ(mem.used(), base);
}

TEST_F(RuntimeMemory, NoneRunsOutJustUnderItsPeakWhereBlockOffloadFits) {
  const auto [none, none_peak] = Run({});
  const int64_t cap = DeviceMemory::Get().used() + none_peak - 1;
  try {
    Run({}, cap);
    FAIL() << "none must not fit one byte under its own peak";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDeviceOutOfMemory);
    EXPECT_NE(std::string(e.what()).find("out of memory in stage"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(strategy none)"), std::string::npos) << e.what();
  }
  const auto [blocked, peak] = Run(Offloaded("block:1"), cap);
  EXPECT_EQ(blocked.rgb, none.rgb);
  EXPECT_LT(peak, none_peak);
}

}  // namespace
}  // namespace reel

namespace reel {
namespace {

// Offloads of every stage and the VAE settings, as one line, to follow the ladder.
std::string Describe(const RunOptions& o, const Manifest& m) {
  std::string s;
  for (const auto& [k, st] : m.stages) {
    auto it = o.offload.find(k);
    s += fmt::format("{}={} ", StageKindName(k), it == o.offload.end() ? "none" : it->second.ToString());
  }
  return s + fmt::format("slicing={} tile={}", o.vae.slicing, o.vae.tile);
}

TEST(OomRecovery, TheLadderFreesOtherStagesThenCheapensTheFailedOneAndEnds) {
  ScratchDir dir("oom-ladder");
  SynthOptions so;
  so.preset = "tiny";
  so.out = dir / "tiny";
  const Manifest m = SynthesizePackage(so);
  // The denoiser keeps failing: the other stages leave the device first (largest first), then the denoiser
  // streams fewer blocks, then one at a time, then nothing is left.
  std::vector<std::string> steps;
  RunOptions o;
  std::string why;
  while (auto next = CheaperAfterOom(o, m, StageKind::kDenoiser, &why)) {
    steps.push_back(why);
    o = *next;
    ASSERT_LT(steps.size(), 10u) << Describe(o, m);
  }
  ASSERT_EQ(steps.size(), 4u) << ::testing::PrintToString(steps);
  // tiny's decoder holds more bytes than its text encoder.
  ASSERT_GT(m.stage(StageKind::kVaeDecoder).bytes(), m.stage(StageKind::kTextEncoder).bytes());
  EXPECT_EQ(steps[0], "vae_decoder: none -> model");
  EXPECT_EQ(steps[1], "text_encoder: none -> model");
  EXPECT_EQ(steps[2], "denoiser: none -> block:1");
  EXPECT_EQ(steps[3], "denoiser: block:1 -> sequential");

  // The decoder, with the others already off the device: tiles, then slices, then smaller tiles, then model.
  RunOptions d;
  d.offload[StageKind::kTextEncoder] = ParseOffload("model", "t");
  d.offload[StageKind::kDenoiser] = ParseOffload("model", "t");
  steps.clear();
  while (auto next = CheaperAfterOom(d, m, StageKind::kVaeDecoder, &why)) {
    steps.push_back(why);
    d = *next;
    ASSERT_LT(steps.size(), 10u);
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"vae_decoder: whole -> tiling=256", "vae_decoder: tiling=256 -> slicing+tiling=256",
                                             "vae_decoder: slicing+tiling=256 -> slicing+tiling=128",
                                             "vae_decoder: slicing+tiling=128 -> slicing+tiling=64",
                                             "vae_decoder: none -> model"}));

  // At 128×128 pixels, tiles of 256 and 128 decode the frame whole (no saving): the ladder goes straight to 64.
  RunOptions small = d;
  small.offload[StageKind::kVaeDecoder] = ParseOffload("none", "t");
  small.vae = {};
  steps.clear();
  while (auto next = CheaperAfterOom(small, m, StageKind::kVaeDecoder, &why, 128)) {
    steps.push_back(why);
    small = *next;
    ASSERT_LT(steps.size(), 10u);
  }
  EXPECT_EQ(steps, (std::vector<std::string>{"vae_decoder: whole -> tiling=64", "vae_decoder: tiling=64 -> slicing+tiling=64",
                                             "vae_decoder: none -> model"}));
}

}  // namespace
}  // namespace reel
