#include "common/error.h"

namespace reel {

int ExitCodeFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kNotFound:
    case ErrorKind::kBadPackage:
      return 2;
    case ErrorKind::kDeviceOutOfMemory:
      return 3;
    default:
      return 1;
  }
}

}  // namespace reel
