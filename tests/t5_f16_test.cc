// T5 in float16 as transformers runs it (models/t5_script.cc): `wo` stays float32 in a float16 block, whether the
// block is built in float16 or converted to it at run time, and the block's output matches between the two.
// Parity with transformers itself: tools/export/tests/test_t5_f16.py.
#include <gtest/gtest.h>

#include "models/presets.h"
#include "models/script_builder.h"
#include "models/t5_script.h"
#include "runtime/stage_executor.h"

namespace reel {
namespace {

torch::jit::Module Block(torch::Dtype dtype) {
  ScriptBuilder b("Reel_t5_block", 11, dtype);
  BuildT5Block(FindPreset("tiny")->t5, b);  // 64 wide, 4 heads
  return b.Finish();
}

std::map<std::string, torch::Dtype> Dtypes(const torch::jit::Module& m) {
  std::map<std::string, torch::Dtype> out;
  for (const auto& p : m.named_parameters()) out[p.name] = p.value.scalar_type();
  return out;
}

TEST(T5Half, WoStaysFloat32BuiltOrConverted) {
  torch::NoGradGuard no_grad;
  auto built = Block(torch::kFloat16);
  EXPECT_EQ(KeptInF32(built), std::vector<std::string>{"wo_w"});
  auto dtypes = Dtypes(built);
  EXPECT_EQ(dtypes.at("wo_w"), torch::kFloat32);
  EXPECT_EQ(dtypes.at("wi0_w"), torch::kFloat16);
  EXPECT_EQ(dtypes.at("q_w"), torch::kFloat16);

  PlacedPart converted(Block(torch::kFloat32), "block");
  converted.ConvertHost(torch::kFloat16);
  EXPECT_EQ(Dtypes(converted.module()), dtypes);
  PlacedPart bf16(Block(torch::kFloat32), "block");
  bf16.ConvertHost(torch::kBFloat16);  // transformers keeps wo in float32 under float16 only
  EXPECT_EQ(Dtypes(bf16.module()).at("wo_w"), torch::kBFloat16);

  // The same weights (one seed) give the same float16 block either way; its stream turns float32 after `wo`, as
  // transformers' does by type promotion.
  const torch::Tensor x = torch::randn({1, 8, 64}).to(torch::kFloat16);
  const torch::Tensor bias = torch::zeros({1, 4, 8, 8});
  const torch::Tensor a = built.forward({x, bias}).toTensor();
  const torch::Tensor b = converted.module().forward({x, bias}).toTensor();
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(a, b));
}

TEST(T5Half, Float16OverflowIsClampedNotInf) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({1, 8, 64}) * 100;
  const torch::Tensor bias = torch::zeros({1, 4, 8, 8});
  auto f32 = Block(torch::kFloat32);
  f32.setattr("o_w", f32.attr("o_w").toTensor() * 1e5);  // attention output past float16's 65504
  EXPECT_GT(f32.forward({x, bias}).toTensor().abs().max().item<float>(), 65504.0f);
  auto f16 = Block(torch::kFloat16);
  f16.setattr("o_w", (f16.attr("o_w").toTensor().to(torch::kFloat32) * 1e5).to(torch::kFloat16));
  const torch::Tensor y = f16.forward({x.to(torch::kFloat16), bias}).toTensor();
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());  // clamped to ±64504 where it held an inf, as transformers'
  EXPECT_GE(y.abs().max().item<float>(), 60000.0f);
}

}  // namespace
}  // namespace reel
