#include "models/script_builder.h"

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>

namespace reel {

ScriptBuilder::ScriptBuilder(const std::string& class_name, uint64_t seed, torch::Dtype dtype)
    : module_(class_name), gen_(at::make_generator<at::CPUGeneratorImpl>(seed)), dtype_(dtype) {}

void ScriptBuilder::Register(const std::string& name, const torch::Tensor& t) {
  const bool keep = dtype_ == torch::kFloat16 &&
                    std::find(keep_in_f32_.begin(), keep_in_f32_.end(), name) != keep_in_f32_.end();
  const torch::Dtype dtype = keep ? torch::kFloat32 : dtype_;
  module_.register_parameter(name, t.to(dtype).contiguous(), /*is_buffer=*/false);
  shapes_.emplace_back(name, t.sizes().vec());
  params_ += t.numel();
  bytes_ += t.numel() * static_cast<int64_t>(torch::elementSize(dtype));
}

void ScriptBuilder::KeepInF32(std::vector<std::string> names) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "\"" : ", \"") + n + "\"";
  source_ += "\ndef keep_in_f32(self) -> List[str]:\n    return [" + list + "]\n";
  keep_in_f32_.insert(keep_in_f32_.end(), names.begin(), names.end());
}

std::vector<std::string> KeptInF32(const torch::jit::Module& part) {
  std::vector<std::string> out;
  if (auto method = part.find_method("keep_in_f32"))
    for (const auto& v : (*method)(std::vector<c10::IValue>{}).toListRef()) out.push_back(v.toStringRef());
  return out;
}

namespace {
thread_local int weightless_depth = 0;
}  // namespace

ScriptBuilder::WeightlessScope::WeightlessScope() { ++weightless_depth; }
ScriptBuilder::WeightlessScope::~WeightlessScope() { --weightless_depth; }
bool ScriptBuilder::weightless() { return weightless_depth > 0; }

void ScriptBuilder::Normal(const std::string& name, std::vector<int64_t> shape, double std) {
  if (weightless()) return Register(name, torch::empty(shape, torch::TensorOptions(torch::kFloat32).device(torch::kMeta)));
  torch::Tensor t = torch::randn(shape, gen_, torch::kFloat32);
  t.mul_(std);
  Register(name, t);
}

void ScriptBuilder::Constant(const std::string& name, std::vector<int64_t> shape, double value) {
  if (weightless()) return Register(name, torch::empty(shape, torch::TensorOptions(torch::kFloat32).device(torch::kMeta)));
  Register(name, torch::full(shape, value, torch::kFloat32));
}

void ScriptBuilder::Linear(const std::string& name, int64_t in, int64_t out, bool bias) {
  Normal(name + "_w", {out, in}, 1.0 / std::sqrt(static_cast<double>(in)));
  if (bias) Normal(name + "_b", {out}, 0.02);
}

void ScriptBuilder::Norm(const std::string& name, int64_t dim, bool bias) {
  Constant(name + "_w", {dim}, 1.0);
  if (bias) Constant(name + "_b", {dim}, 0.0);
}

void ScriptBuilder::Conv(const std::string& name, int64_t in, int64_t out, std::vector<int64_t> kernel, bool bias) {
  int64_t fan_in = in;
  for (int64_t k : kernel) fan_in *= k;
  std::vector<int64_t> shape = {out, in};
  shape.insert(shape.end(), kernel.begin(), kernel.end());
  Normal(name + "_w", shape, 1.0 / std::sqrt(static_cast<double>(fan_in)));
  if (bias) Normal(name + "_b", {out}, 0.02);
}

torch::jit::Module ScriptBuilder::Finish() {
  module_.define(source_);
  module_.eval();
  return module_;
}

}  // namespace reel
