// Where names from requests may lead on disk: model packages only from configured model roots (no `..`, no symlink
// out of them), and request-supplied names used in file names kept to one plain component.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "package/manifest.h"

namespace reel {

// True when `path` is `root` or lies below it. Both must already be canonical.
bool IsWithin(const std::filesystem::path& path, const std::filesystem::path& root);

class ModelRoots {
 public:
  // `roots` as given with `flag` (each an existing directory); none given: `fallback` alone (which need not exist
  // yet: the model cache is created on first use). Throws InvalidArgument naming the flag and the value.
  ModelRoots(const std::vector<std::string>& roots, const std::filesystem::path& fallback,
             const std::string& flag = "--model-root");

  // The canonical package directory `model` names (relative to the working directory, symlinks and `..`
  // resolved) when it lies under a root. Throws InvalidArgument naming `what`, the value, where it leads and the
  // roots otherwise.
  std::filesystem::path Confine(const std::string& model, const std::string& what) const;

  // Every file a package's manifest names (stage parts, tokenizer) must resolve under a root as well, so a symlink
  // inside a package cannot lead out. Throws InvalidArgument naming the file.
  void ConfinePackage(const std::filesystem::path& dir, const Manifest& manifest) const;

  const std::vector<std::filesystem::path>& roots() const { return roots_; }
  std::string List() const;  // "a, b" for messages

 private:
  std::vector<std::filesystem::path> roots_;
};

// A request-supplied name that becomes part of a file name: 1 to 128 of A-Z a-z 0-9 . _ - and not "." or "..".
// Throws InvalidArgument naming `what` otherwise.
void CheckNameComponent(const std::string& name, const std::string& what);

}  // namespace reel
