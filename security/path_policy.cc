#include "security/path_policy.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/error.h"

namespace reel {

namespace fs = std::filesystem;

bool IsWithin(const fs::path& path, const fs::path& root) {
  // Component by component: /models-evil is not under /models.
  auto p = path.begin();
  for (auto r = root.begin(); r != root.end(); ++r, ++p) {
    if (r->empty()) continue;  // a trailing separator
    if (p == path.end() || *p != *r) return false;
  }
  return true;
}

ModelRoots::ModelRoots(const std::vector<std::string>& roots, const fs::path& fallback, const std::string& flag) {
  std::error_code ec;
  for (const auto& r : roots) {
    if (r.empty() || !fs::is_directory(r, ec))
      throw InvalidArgument(fmt::format("{} '{}': not a directory; accepted an existing directory of model packages",
                                        flag, r));
    roots_.push_back(fs::canonical(r, ec));
  }
  if (roots_.empty()) roots_.push_back(fs::weakly_canonical(fs::absolute(fallback), ec));
}

std::string ModelRoots::List() const {
  std::string out;
  for (const auto& r : roots_) out += (out.empty() ? "" : ", ") + r.string();
  return out;
}

fs::path ModelRoots::Confine(const std::string& model, const std::string& what) const {
  std::error_code ec;
  if (model.empty() || model.find('\0') != std::string::npos)
    throw InvalidArgument(fmt::format("{} '{}': accepted a preset name or a package directory under a model root ({})",
                                      what, model, List()));
  // Symlinks in the part that exists are followed before `..` is applied, as the kernel would.
  const fs::path resolved = fs::weakly_canonical(fs::absolute(model, ec), ec);
  if (!ec)
    for (const auto& r : roots_)
      if (IsWithin(resolved, r)) return resolved;
  throw InvalidArgument(fmt::format("{} '{}': leads to {}, outside the model roots ({}); accepted a preset name or a "
                                    "package directory under a --model-root",
                                    what, model, ec ? std::string("an unresolvable path") : resolved.string(), List()));
}

void ModelRoots::ConfinePackage(const fs::path& dir, const Manifest& m) const {
  std::vector<std::string> files;
  for (const auto& [kind, stage] : m.stages)
    for (const auto& part : stage.parts) files.push_back(part.file);
  if (!m.tokenizer.file.empty()) files.push_back(m.tokenizer.file);
  for (const auto& f : files) {
    std::error_code ec;
    const fs::path resolved = fs::weakly_canonical(dir / f, ec);
    const bool inside =
        !ec && std::any_of(roots_.begin(), roots_.end(), [&](const fs::path& r) { return IsWithin(resolved, r); });
    if (!inside)
      throw InvalidArgument(fmt::format("package {}: file '{}' leads to {}, outside the model roots ({}); accepted "
                                        "files that stay under a --model-root",
                                        dir.string(), f, ec ? std::string("an unresolvable path") : resolved.string(),
                                        List()));
  }
}

void CheckNameComponent(const std::string& name, const std::string& what) {
  const bool plain = !name.empty() && name.size() <= 128 && name != "." && name != ".." &&
                     std::all_of(name.begin(), name.end(), [](char c) {
                       return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                              c == '_' || c == '-';
                     });
  if (!plain)
    throw InvalidArgument(fmt::format("{} '{}': accepted 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-' (not "
                                      "'.' or '..')",
                                      what, name.substr(0, 200)));
}

}  // namespace reel
