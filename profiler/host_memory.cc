// /proc readers and size parsing. Reads are plain file reads: the sampler calls HostRssBytes() every few ms.
#include "profiler/host_memory.h"

#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "common/error.h"

namespace reel {
namespace {

std::string ReadProcFile(const char* path) {
  std::ifstream in(path);
  if (!in) throw IoError(std::string("cannot read ") + path + ": " + std::strerror(errno));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The "<key>: <n> kB" lines of /proc/self/status and /proc/meminfo.
int64_t KibibyteField(const std::string& text, const std::string& key, const char* path) {
  size_t at = 0;
  while ((at = text.find(key + ":", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') {
      long long kib = 0;
      if (std::sscanf(text.c_str() + at + key.size() + 1, "%lld", &kib) == 1) return static_cast<int64_t>(kib) * 1024;
      break;
    }
    at += key.size();
  }
  throw IoError(std::string("cannot read ") + path + ": no " + key + " line");
}

}  // namespace

int64_t HostRssBytes() {
  // statm is one short line, cheaper to parse than status; its unit is pages.
  const std::string text = ReadProcFile("/proc/self/statm");
  long long size = 0, resident = 0;
  if (std::sscanf(text.c_str(), "%lld %lld", &size, &resident) != 2)
    throw IoError("cannot read /proc/self/statm: unexpected content '" + text + "'");
  return static_cast<int64_t>(resident) * ::sysconf(_SC_PAGESIZE);
}

int64_t HostPeakRssBytes() { return KibibyteField(ReadProcFile("/proc/self/status"), "VmHWM", "/proc/self/status"); }

MachineMemoryInfo MachineMemory() {
  const std::string text = ReadProcFile("/proc/meminfo");
  return {KibibyteField(text, "MemTotal", "/proc/meminfo"), KibibyteField(text, "MemAvailable", "/proc/meminfo")};
}

int64_t ParseSize(const std::string& value, const std::string& flag) {
  const auto fail = [&]() -> Error {
    return InvalidArgument(flag + " " + value + ": accepted a size such as 12GiB, 512MiB or 1000000 (bytes)");
  };
  size_t i = 0;
  // Integer and fraction are kept as integers so "1.5G" is exact and large sizes lose no bytes to rounding.
  unsigned __int128 whole = 0, frac = 0, frac_scale = 1;
  size_t digits = 0;
  while (i < value.size() && std::isdigit(static_cast<unsigned char>(value[i]))) {
    whole = whole * 10 + (value[i++] - '0');
    if (whole > std::numeric_limits<int64_t>::max()) throw fail();
    ++digits;
  }
  if (i < value.size() && value[i] == '.') {
    ++i;
    while (i < value.size() && std::isdigit(static_cast<unsigned char>(value[i]))) {
      if (frac_scale < 1'000'000'000'000'000ULL) {  // further digits are below a byte for any unit
        frac = frac * 10 + (value[i] - '0');
        frac_scale *= 10;
      }
      ++i;
      ++digits;
    }
  }
  if (digits == 0) throw fail();
  std::string suffix;
  for (; i < value.size(); ++i) suffix += static_cast<char>(std::tolower(static_cast<unsigned char>(value[i])));
  // Bare K/M/G/T are binary because that is what `free -h` and most ML tooling mean by them.
  static const std::pair<const char*, unsigned __int128> kUnits[] = {
      {"", 1},           {"b", 1},
      {"k", 1ULL << 10}, {"kib", 1ULL << 10}, {"kb", 1000ULL},
      {"m", 1ULL << 20}, {"mib", 1ULL << 20}, {"mb", 1000'000ULL},
      {"g", 1ULL << 30}, {"gib", 1ULL << 30}, {"gb", 1000'000'000ULL},
      {"t", 1ULL << 40}, {"tib", 1ULL << 40}, {"tb", 1000'000'000'000ULL}};
  unsigned __int128 unit = 0;
  for (const auto& [name, u] : kUnits)
    if (suffix == name) unit = u;
  if (unit == 0) throw fail();
  if (unit == 1 && frac != 0) throw fail();  // a fraction of a byte
  const unsigned __int128 bytes = whole * unit + (frac * unit) / frac_scale;
  if (bytes > static_cast<unsigned __int128>(std::numeric_limits<int64_t>::max())) throw fail();
  return static_cast<int64_t>(bytes);
}

std::string FormatBytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  // Magnitude in double: llabs(INT64_MIN) would overflow.
  double v = bytes < 0 ? -static_cast<double>(bytes) : static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[48];
  if (u == 0) std::snprintf(buf, sizeof buf, "%s%lld B", bytes < 0 ? "-" : "", static_cast<long long>(v));
  else std::snprintf(buf, sizeof buf, "%s%.2f %s", bytes < 0 ? "-" : "", v, units[u]);
  return buf;
}

}  // namespace reel
