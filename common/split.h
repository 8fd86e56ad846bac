// Comma-separated flag values ("none,block:4,sequential", "24GiB,80GiB"), split the same way everywhere.
#pragma once

#include <string>
#include <vector>

namespace reel {

// Every item between separators, empty ones included ("a,,b" -> a, "", b; "" -> one empty item), so a caller's
// validation names the bad item instead of skipping it.
inline std::vector<std::string> SplitList(const std::string& value, char sep = ',') {
  std::vector<std::string> out;
  for (size_t start = 0;;) {
    const size_t end = value.find(sep, start);
    out.push_back(value.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

}  // namespace reel
