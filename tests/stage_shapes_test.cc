// Each stage's output shapes for the tiny preset and for a one-layer cogvideox-5b-i2v package, run through
// the real TorchScript files a synthesized package holds.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "models/synth.h"
#include "runtime/pipeline.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using reel::testing::ScratchDir;

std::vector<int64_t> Sizes(const torch::Tensor& t) { return {t.sizes().begin(), t.sizes().end()}; }

class StageShapes : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    scratch_ = new ScratchDir("shapes");
  }
  static void TearDownTestSuite() { delete scratch_; }
  static std::unique_ptr<StagePackage> Synth(const std::string& preset, std::optional<int> layers) {
    SynthOptions o;
    o.preset = preset;
    o.layers = layers;
    o.seed = 3;
    o.out = *scratch_ / (preset + "-pkg");
    SynthesizePackage(o);
    return std::make_unique<StagePackage>(StagePackage::Load(o.out));
  }
  static ScratchDir* scratch_;
};
ScratchDir* StageShapes::scratch_ = nullptr;

TEST_F(StageShapes, Tiny) {
  auto pkg = Synth("tiny", std::nullopt);
  Runtime p(*pkg, {});
  const auto& m = p.package().manifest();
  EXPECT_EQ(m.stage(StageKind::kDenoiser).num_blocks(), 2);
  JobShape s;
  s.batch = 2;
  s.frames = 9;
  s.height = 64;
  s.width = 48;
  s.text_tokens = m.tokenizer.max_length;
  const torch::Tensor ids = torch::randint(3, 300, {2, s.text_tokens}, torch::kInt64);
  const torch::Tensor text = p.EncodeText(ids, 2);
  EXPECT_EQ(Sizes(text), (std::vector<int64_t>{2, 32, 64}));
  const torch::Tensor latents = torch::randn({2, 3, 16, 8, 6});
  const torch::Tensor t = torch::full({2}, 999, torch::kInt64);
  const torch::Tensor v = p.Denoise(latents, text, t, s);
  EXPECT_EQ(Sizes(v), (std::vector<int64_t>{2, 3, 16, 8, 6}));
  EXPECT_TRUE(torch::isfinite(v).all().item<bool>());
  s.batch = 1;
  const torch::Tensor video = p.DecodeLatents(torch::randn({1, 16, 3, 8, 6}), s);
  EXPECT_EQ(Sizes(video), (std::vector<int64_t>{1, 3, 9, 64, 48}));
  // 17 frames: 5 latent frames, decoded in chunks of 2 with the causal cache.
  s.frames = 17;
  EXPECT_EQ(Sizes(p.DecodeLatents(torch::randn({1, 16, 5, 8, 6}), s)), (std::vector<int64_t>{1, 3, 17, 64, 48}));
}

TEST_F(StageShapes, TinyImageToVideo) {
  auto pkg = Synth("tiny-i2v", std::nullopt);
  Runtime p(*pkg, {});
  JobShape s;
  s.frames = 9;
  s.height = 32;
  s.width = 32;
  s.text_tokens = p.package().manifest().tokenizer.max_length;
  const torch::Tensor moments = p.EncodeImage(torch::rand({1, 3, 1, 32, 32}) * 2 - 1, s);
  EXPECT_EQ(Sizes(moments), (std::vector<int64_t>{1, 32, 1, 4, 4}));
  s.batch = 2;
  const torch::Tensor text = p.EncodeText(torch::randint(3, 300, {2, s.text_tokens}, torch::kInt64), 2);
  const torch::Tensor v = p.Denoise(torch::randn({2, 3, 32, 4, 4}), text, torch::full({2}, 500, torch::kInt64), s);
  EXPECT_EQ(Sizes(v), (std::vector<int64_t>{2, 3, 16, 4, 4}));
}

// The real widths and depths of CogVideoX-5B-I2V with one block per stack: T5 at 4096 wide over 226 tokens,
// the 3072-wide transformer with learned positions and RoPE at 480x720, the full VAE.
TEST_F(StageShapes, Cogvideox5bI2vOneLayer) {
  auto pkg = Synth("cogvideox-5b-i2v", 1);
  Runtime p(*pkg, {});
  const auto& m = p.package().manifest();
  EXPECT_EQ(m.stage(StageKind::kDenoiser).config.at("inner_dim"), 3072);
  // Parameter counts from ../shared/COGVIDEOX.md §9: one transformer block and the two halves of the VAE.
  EXPECT_EQ(m.stage(StageKind::kDenoiser).parts[1].params, 132197632);
  EXPECT_EQ(m.stage(StageKind::kVaeEncoder).params(), 92215456);
  EXPECT_EQ(m.stage(StageKind::kVaeDecoder).params(), 123368451);
  EXPECT_EQ(m.stage(StageKind::kTextEncoder).parts[1].params, 192946176);

  JobShape s;
  s.batch = 2;
  s.frames = 1;
  s.height = 480;
  s.width = 720;
  s.text_tokens = 226;
  const torch::Tensor text = p.EncodeText(torch::randint(3, 300, {2, 226}, torch::kInt64), 2);
  EXPECT_EQ(Sizes(text), (std::vector<int64_t>{2, 226, 4096}));
  const torch::Tensor v = p.Denoise(torch::randn({2, 1, 32, 60, 90}), text, torch::full({2}, 999, torch::kInt64), s);
  EXPECT_EQ(Sizes(v), (std::vector<int64_t>{2, 1, 16, 60, 90}));
  EXPECT_TRUE(torch::isfinite(v).all().item<bool>());

  // The VAE has no size limit of its own: check it at a small size and 9 frames (3 latent frames).
  JobShape small;
  small.frames = 9;
  small.height = 64;
  small.width = 64;
  EXPECT_EQ(Sizes(p.EncodeImage(torch::rand({1, 3, 1, 64, 64}), small)), (std::vector<int64_t>{1, 32, 1, 8, 8}));
  EXPECT_EQ(Sizes(p.DecodeLatents(torch::randn({1, 16, 3, 8, 8}), small)), (std::vector<int64_t>{1, 3, 9, 64, 64}));
}

TEST_F(StageShapes, SynthesisIsDeterministicFromTheSeed) {
  SynthOptions a;
  a.preset = "tiny";
  a.seed = 11;
  a.out = *scratch_ / "seed-a";
  SynthesizePackage(a);
  SynthOptions b = a;
  b.out = *scratch_ / "seed-b";
  SynthesizePackage(b);
  SynthOptions c = a;
  c.seed = 12;
  c.out = *scratch_ / "seed-c";
  SynthesizePackage(c);
  auto weights = [](const std::filesystem::path& dir) {
    return torch::jit::load((dir / "denoiser/block_001.pt").string()).attr("q_w").toTensor();
  };
  EXPECT_TRUE(torch::equal(weights(a.out), weights(b.out)));
  EXPECT_FALSE(torch::equal(weights(a.out), weights(c.out)));
}

TEST_F(StageShapes, PresetManifestWithoutWeightsEqualsTheSynthesizedOne) {
  for (const std::string preset : {"tiny", "tiny-i2v"}) {
    SynthOptions o;
    o.preset = preset;
    o.seed = 4;
    o.dtype = DType::kBF16;
    o.out = *scratch_ / (preset + "-manifest");
    const Manifest written = SynthesizePackage(o);
    EXPECT_EQ(ManifestToJson(PresetManifest(o)), ManifestToJson(written)) << preset;
  }
  // The full presets in about a second and no memory: CogVideoX-5B's transformer holds ~5.6B parameters.
  SynthOptions big;
  big.preset = "cogvideox-5b";
  big.dtype = DType::kBF16;
  const Manifest m = PresetManifest(big);
  int64_t params = 0;
  for (const auto& p : m.stage(StageKind::kDenoiser).parts) params += p.params;
  EXPECT_GT(params, 5'000'000'000);
  EXPECT_LT(params, 6'000'000'000);
  EXPECT_EQ(m.stage(StageKind::kDenoiser).bytes(), params * 2);
}

}  // namespace
}  // namespace reel
