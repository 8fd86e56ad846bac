// One error convention for Reel: reel::Error carries a kind and one user-facing line that names the input,
// the value and what would be accepted. Thrown at clear boundaries, caught by the CLI and the services.
#pragma once

#include <stdexcept>
#include <string>

namespace reel {

enum class ErrorKind {
  kInvalidArgument,  // bad user input: flags, files, request fields
  kNotFound,         // a named thing does not exist
  kBadPackage,       // a stage package is missing, truncated or inconsistent
  kDeviceOutOfMemory,
  kIo,               // the file system refused
  kCancelled,        // the job was cancelled while it ran
  kUnavailable,      // a peer (coordinator, worker) cannot be reached
  kInternal,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

inline Error InvalidArgument(const std::string& m) { return Error(ErrorKind::kInvalidArgument, m); }
inline Error NotFound(const std::string& m) { return Error(ErrorKind::kNotFound, m); }
inline Error BadPackage(const std::string& m) { return Error(ErrorKind::kBadPackage, m); }
inline Error IoError(const std::string& m) { return Error(ErrorKind::kIo, m); }
inline Error Cancelled(const std::string& m) { return Error(ErrorKind::kCancelled, m); }
inline Error Unavailable(const std::string& m) { return Error(ErrorKind::kUnavailable, m); }
inline Error Internal(const std::string& m) { return Error(ErrorKind::kInternal, m); }

// Process exit code for an error kind: 2 for bad input of any sort, 3 for device OOM, 1 otherwise.
int ExitCodeFor(ErrorKind kind);

}  // namespace reel
