// Host memory as Linux reports it (/proc), and the byte sizes users type on the command line.
#pragma once

#include <cstdint>
#include <string>

namespace reel {

// Resident set size of this process now (/proc/self/statm). Throws IoError when /proc cannot be read.
int64_t HostRssBytes();
// Highest resident set size of this process so far (VmHWM in /proc/self/status). Throws IoError likewise.
int64_t HostPeakRssBytes();

struct MachineMemoryInfo {
  int64_t total_bytes = 0;
  int64_t available_bytes = 0;  // MemAvailable: what can be allocated without swapping
};
// From /proc/meminfo. Throws IoError when it cannot be read or lacks MemTotal/MemAvailable.
MachineMemoryInfo MachineMemory();

// "12GiB", "512MiB", "1.5G", "24GB", "1000000" -> bytes. KiB..TiB and bare K/M/G/T are powers of 1024,
// KB..TB are powers of 1000, case-insensitive. Throws
// InvalidArgument("<flag> <value>: accepted a size such as 12GiB, 512MiB or 1000000 (bytes)").
int64_t ParseSize(const std::string& value, const std::string& flag);

// 1610612736 -> "1.50 GiB"; below 1 KiB plain bytes ("512 B").
std::string FormatBytes(int64_t bytes);

}  // namespace reel
