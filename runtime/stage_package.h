// A stage package loaded for execution: the manifest plus its TorchScript parts, checked against each other.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/script.h>

#include "package/manifest.h"

namespace reel {

struct LoadedStage {
  const StageManifest* manifest = nullptr;
  std::vector<torch::jit::Module> parts;  // in manifest order: module, or embed, blocks..., head
};

class StagePackage {
 public:
  // Loads the manifest and every TorchScript part; a missing, truncated or corrupt file or a parameter count
  // that disagrees with the manifest throws BadPackage naming the file and the field.
  // `only`: load just these stages (a worker holds the stages it is assigned); absent loads every stage.
  static StagePackage Load(const std::filesystem::path& dir,
                           const std::optional<std::set<StageKind>>& only = std::nullopt);

  const Manifest& manifest() const { return manifest_; }
  const std::filesystem::path& dir() const { return dir_; }
  const LoadedStage& stage(StageKind k) const;
  bool loaded(StageKind k) const { return stages_.count(k) != 0; }
  // Records that a stage's weights now run in `dtype` (the runtime converted them): its dtype and the dtype of
  // outputs that follow the weights change in the contract.
  void SetStageDtype(StageKind k, DType dtype);

  // Checks `t` against the manifest's contract at the given symbols (B, T, F, H, W, f, h, w); throws
  // BadPackage naming the stage, the tensor, the manifest's shape and the shape the TorchScript produced.
  void CheckTensor(StageKind k, bool output, size_t index, const torch::Tensor& t,
                   const std::map<std::string, int64_t>& symbols) const;

 private:
  std::filesystem::path dir_;
  Manifest manifest_;
  std::map<StageKind, LoadedStage> stages_;
};

torch::Dtype ToTorch(DType d);

}  // namespace reel
