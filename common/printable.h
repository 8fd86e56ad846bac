// Untrusted text (a manifest's strings, a client's model or file name) as it may appear inside an error: one line
// of bounded length, so that every error stays one clear line whatever the input held.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>

namespace reel {

// `s` with control characters and bytes that are not UTF-8 written as \xNN, cut at `max_bytes` of the input with
// "…" and the full length appended ("aaaa… (70000 bytes)"). Valid UTF-8 (prompts, names in any script) is kept.
inline std::string Printable(std::string_view s, size_t max_bytes = 96) {
  std::string out;
  const size_t n = s.size() < max_bytes ? s.size() : max_bytes;
  auto escape = [&](unsigned char c) {
    char hex[5];
    std::snprintf(hex, sizeof hex, "\\x%02x", c);
    out += hex;
  };
  for (size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      escape(c);
      ++i;
      continue;
    }
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    // A UTF-8 sequence is kept whole when it is well formed and ends before the cut; otherwise its bytes are escaped.
    const size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    bool ok = len != 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (ok && len == 3) {  // no overlong forms, no surrogates
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xe0 && c1 < 0xa0) && !(c == 0xed && c1 >= 0xa0);
    }
    if (ok && len == 4) {
      const auto c1 = static_cast<unsigned char>(s[i + 1]);
      ok = !(c == 0xf0 && c1 < 0x90) && !(c == 0xf4 && c1 >= 0x90);
    }
    if (!ok) {
      escape(c);
      ++i;
      continue;
    }
    if (i + len > n) break;  // a character across the cut is left out whole
    out.append(s.substr(i, len));
    i += len;
  }
  if (s.size() > max_bytes) out += "… (" + std::to_string(s.size()) + " bytes)";
  return out;
}

}  // namespace reel
