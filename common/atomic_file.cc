#include "common/atomic_file.h"

#include <unistd.h>

#include <atomic>
#include <system_error>

#include "common/error.h"

namespace reel {
namespace fs = std::filesystem;

void RequireWritableDirectory(const fs::path& dir, const std::string& what) {
  const fs::path d = dir.empty() ? fs::path(".") : dir;
  std::error_code ec;
  if (!fs::exists(d, ec)) throw InvalidArgument(what + " " + d.string() + ": directory does not exist");
  if (!fs::is_directory(d, ec)) throw InvalidArgument(what + " " + d.string() + ": not a directory");
  if (::access(d.c_str(), W_OK | X_OK) != 0)
    throw InvalidArgument(what + " " + d.string() + ": directory is not writable");
}

AtomicFile::AtomicFile(const fs::path& target, const std::string& what) : target_(target) {
  RequireWritableDirectory(target.parent_path(), what);
  static std::atomic<int> counter{0};
  temp_ = target;
  temp_ += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

AtomicFile::~AtomicFile() {
  if (!committed_) {
    std::error_code ec;
    fs::remove(temp_, ec);
  }
}

void AtomicFile::Commit() {
  std::error_code ec;
  fs::rename(temp_, target_, ec);
  if (ec) throw IoError("cannot move " + temp_.string() + " to " + target_.string() + ": " + ec.message());
  committed_ = true;
}

}  // namespace reel
