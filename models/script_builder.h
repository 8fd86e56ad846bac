// Builds one TorchScript module from generated source and seeded random weights: the unit a stage package stores.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "common/stable_hash.h"  // StableHash: per-file seeds that do not depend on synthesis order

namespace reel {

class ScriptBuilder {
 public:
  // Weights are drawn from a generator seeded with `seed`, created in float32 and stored as `dtype`, so a
  // bf16 package holds the rounded values of the f32 package with the same seed.
  ScriptBuilder(const std::string& class_name, uint64_t seed, torch::Dtype dtype);

  void Normal(const std::string& name, std::vector<int64_t> shape, double std);
  void Constant(const std::string& name, std::vector<int64_t> shape, double value);
  // name_w [out, in] with std 1/sqrt(in) (keeps random activations bounded); name_b [out] if bias.
  void Linear(const std::string& name, int64_t in, int64_t out, bool bias = true);
  // name_w ones and, if bias, name_b zeros.
  void Norm(const std::string& name, int64_t dim, bool bias = true);
  // Convolution weight [out, in, k...] with std 1/sqrt(in·prod(k)), plus bias.
  void Conv(const std::string& name, int64_t in, int64_t out, std::vector<int64_t> kernel, bool bias = true);
  void Define(const std::string& source) { source_ += source; }
  // Weights registered after this stay float32 when the module is float16, as transformers keeps a model's
  // `_keep_in_fp32_modules` (T5's `wo`) under float16. The module says which through a `keep_in_f32()` method, so
  // the loader accepts them and a runtime conversion to float16 keeps them (runtime/stage_executor.cc).
  void KeepInF32(std::vector<std::string> names);

  torch::jit::Module Finish();

  // While one lives on this thread, builders make weights on the meta device: shapes and counts, no memory (a
  // manifest for planning without synthesizing gigabytes).
  class WeightlessScope {
   public:
    WeightlessScope();
    ~WeightlessScope();
    WeightlessScope(const WeightlessScope&) = delete;
    WeightlessScope& operator=(const WeightlessScope&) = delete;
  };
  static bool weightless();
  // What Finish() would compile and hold: the TorchScript source and each weight's name and shape, in the order
  // registered (what tools/export reads through reel_model_source, so exported parts have this same source).
  const std::string& source() const { return source_; }
  const std::vector<std::pair<std::string, std::vector<int64_t>>>& weight_shapes() const { return shapes_; }
  int64_t params() const { return params_; }
  int64_t bytes() const { return bytes_; }
  const std::vector<std::string>& keep_in_f32() const { return keep_in_f32_; }

 private:
  void Register(const std::string& name, const torch::Tensor& t);

  torch::jit::Module module_;
  torch::Generator gen_;
  torch::Dtype dtype_;
  std::string source_;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes_;
  int64_t params_ = 0;
  int64_t bytes_ = 0;
  std::vector<std::string> keep_in_f32_;
};

// The names a part's `keep_in_f32()` method lists (none when it has no such method).
std::vector<std::string> KeptInF32(const torch::jit::Module& part);

}  // namespace reel
