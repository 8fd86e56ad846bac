// Output files appear whole or not at all: writers fill a temporary file beside the target, then rename it.
#pragma once

#include <filesystem>
#include <string>

namespace reel {

class AtomicFile {
 public:
  // Checks that the target's directory exists and is writable; throws InvalidArgument naming `what` otherwise.
  AtomicFile(const std::filesystem::path& target, const std::string& what);
  ~AtomicFile();  // removes the temporary file unless Commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::filesystem::path& temp_path() const { return temp_; }
  const std::filesystem::path& target() const { return target_; }
  void Commit();  // atomically renames the temporary file onto the target

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  bool committed_ = false;
};

// Throws InvalidArgument("<what> <dir>: ...") unless `dir` exists, is a directory and is writable.
void RequireWritableDirectory(const std::filesystem::path& dir, const std::string& what);

}  // namespace reel
