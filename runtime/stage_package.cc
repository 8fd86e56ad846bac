#include "runtime/stage_package.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/error.h"
#include "models/script_builder.h"
#include "runtime/device_memory.h"

namespace reel {
namespace fs = std::filesystem;

torch::Dtype ToTorch(DType d) {
  switch (d) {
    case DType::kBF16: return torch::kBFloat16;
    case DType::kF16: return torch::kFloat16;
    case DType::kI64: return torch::kInt64;
    default: return torch::kFloat32;
  }
}

namespace {
std::string FirstLine(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace

StagePackage StagePackage::Load(const fs::path& dir, const std::optional<std::set<StageKind>>& only) {
  StagePackage p;
  p.dir_ = dir;
  p.manifest_ = LoadManifest(dir);
  for (const auto& [kind, sm] : p.manifest_.stages) {
    if (only && !only->count(kind)) continue;
    LoadedStage st;
    for (size_t i = 0; i < sm.parts.size(); ++i) {
      const auto& part = sm.parts[i];
      const std::string field = fmt::format("stages.{}.parts[{}]", StageKindName(kind), i);
      torch::jit::Module m;
      try {
        WeightsScope weights;  // the host weights: large ones in huge pages
        m = torch::jit::load((dir / part.file).string());
      } catch (const c10::Error& e) {
        throw BadPackage(fmt::format("package {}: {} ({}) is not a readable TorchScript file, truncated or corrupt: {}",
                                     dir.string(), part.file, field, FirstLine(e.what_without_backtrace())));
      }
      m.eval();
      int64_t params = 0, bytes = 0;
      const auto keep = KeptInF32(m);  // float32 in a float16 part, as transformers keeps them
      for (const auto& p : m.named_parameters()) {
        const auto& t = p.value;
        params += t.numel();
        bytes += t.numel() * static_cast<int64_t>(t.element_size());
        const bool kept = sm.dtype == DType::kF16 && t.scalar_type() == torch::kFloat32 &&
                          std::find(keep.begin(), keep.end(), p.name) != keep.end();
        if (t.scalar_type() != ToTorch(sm.dtype) && !kept)
          throw BadPackage(fmt::format("package {}: {} holds {} weights but {}.dtype is '{}'", dir.string(),
                                       part.file, c10::toString(t.scalar_type()),
                                       fmt::format("stages.{}", StageKindName(kind)), DTypeName(sm.dtype)));
      }
      if (params != part.params)
        throw BadPackage(fmt::format("package {}: {} has {} parameters but {}.params says {}", dir.string(),
                                     part.file, params, field, part.params));
      if (bytes != part.bytes)
        throw BadPackage(fmt::format("package {}: {} has {} bytes of weights but {}.bytes says {}", dir.string(),
                                     part.file, bytes, field, part.bytes));
      st.parts.push_back(std::move(m));
    }
    st.manifest = &p.manifest_.stages.at(kind);
    p.stages_[kind] = std::move(st);
  }
  return p;
}

const LoadedStage& StagePackage::stage(StageKind k) const {
  auto it = stages_.find(k);
  if (it == stages_.end())
    throw BadPackage(fmt::format("package {}: has no {} stage", dir_.string(), StageKindName(k)));
  return it->second;
}

void StagePackage::SetStageDtype(StageKind k, DType dtype) {
  auto& sm = manifest_.stages.at(k);
  if (k == StageKind::kTextEncoder)
    for (auto& t : sm.outputs)
      if (t.dtype == sm.dtype) t.dtype = dtype;
  sm.dtype = dtype;
}

void StagePackage::CheckTensor(StageKind k, bool output, size_t index, const torch::Tensor& t,
                               const std::map<std::string, int64_t>& symbols) const {
  const auto& sm = manifest_.stage(k);
  const auto& spec = (output ? sm.outputs : sm.inputs).at(index);
  const std::vector<int64_t> want = ResolveShape(spec, symbols);
  const std::vector<int64_t> got(t.sizes().begin(), t.sizes().end());
  const std::string field =
      fmt::format("stages.{}.{}[{}] '{}'", StageKindName(k), output ? "outputs" : "inputs", index, spec.name);
  if (got != want)
    throw BadPackage(fmt::format("package {}: {} is {} = {} but the TorchScript {} {}", dir_.string(), field,
                                 FormatDims(spec.shape), FormatShape(want), output ? "returned" : "was given",
                                 FormatShape(got)));
  if (t.scalar_type() != ToTorch(spec.dtype))
    throw BadPackage(fmt::format("package {}: {} has dtype '{}' but the TorchScript {} {}", dir_.string(), field,
                                 DTypeName(spec.dtype), output ? "returned" : "was given",
                                 c10::toString(t.scalar_type())));
}

}  // namespace reel
