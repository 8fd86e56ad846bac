// Asking the kernel for transparent huge pages on a buffer. Debian's kernel gives them only to memory that asks
// (THP mode "madvise"); callers say when a buffer is worth it (runtime/device_memory.cc: large weights;
// transfer/tensor_stream.cc: a large receive buffer, written once front to back).
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>

namespace reel {

// Advises the whole pages inside [p, p + n) into huge pages when n is at least `min_bytes`. Only a hint: the
// kernel may ignore it, and nothing fails when it does.
inline void AdviseHugePages(const void* p, size_t n, size_t min_bytes) {
  constexpr uintptr_t kPage = 4096;
  if (n < min_bytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kPage - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace reel
