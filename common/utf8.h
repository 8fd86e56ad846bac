// UTF-8 as Reel accepts it in text from outside (prompts, model names, job ids): well formed, no overlong forms, no
// surrogates, nothing above U+10FFFF. One definition for the checks that refuse text and for Printable, which shows it.
#pragma once

#include <cstddef>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"

namespace reel {

// The length of the well-formed UTF-8 sequence starting at s[i] (1 for ASCII), or 0 when none starts there.
inline size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return 1;
  const size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
  const auto c1 = static_cast<unsigned char>(s[i + 1]);
  if (len == 3 && ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0))) return 0;  // overlong, surrogate
  if (len == 4 && ((c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 >= 0x90))) return 0;  // overlong, > U+10FFFF
  return len;
}

// The offset of the first byte that does not begin a well-formed sequence; nullopt for valid UTF-8.
inline std::optional<size_t> InvalidUtf8Offset(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::nullopt;
}

// "WHAT: not valid UTF-8 (byte 0xff at offset 17 of 40); accepted UTF-8 text", or "" for valid text.
inline std::string Utf8Problem(std::string_view what, std::string_view s) {
  const auto at = InvalidUtf8Offset(s);
  if (!at) return "";
  char detail[96];
  std::snprintf(detail, sizeof detail, ": not valid UTF-8 (byte 0x%02x at offset %zu of %zu); accepted UTF-8 text",
                static_cast<unsigned char>(s[*at]), *at, s.size());
  return std::string(what) + detail;
}

// Throws InvalidArgument(Utf8Problem(...)) unless `s` is valid UTF-8.
inline void RequireUtf8(std::string_view what, std::string_view s) {
  if (std::string problem = Utf8Problem(what, s); !problem.empty()) throw InvalidArgument(problem);
}

}  // namespace reel
