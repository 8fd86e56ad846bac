// Untrusted text (a manifest's strings, a client's model or file name) as it may appear inside an error: one line
// of bounded length, so that every error stays one clear line whatever the input held.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>
#include <string_view>

#include "common/utf8.h"

namespace reel {

// `s` with control characters (C0, DEL, C1) and bytes that are not UTF-8 written as \xNN, cut at `max_bytes` of the
// input with "…" and the full length appended ("aaaa… (70000 bytes)"). Valid UTF-8 (prompts, names in any script)
// is kept.
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
    // C1 controls (U+0080 to U+009F) too: some terminals act on them as on ESC sequences.
    const size_t len = Utf8SequenceLength(s, i);
    if (len == 0 || (c == 0xc2 && static_cast<unsigned char>(s[i + 1]) < 0xa0)) {
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

// Stored text shown on a terminal (a job's prompt, model, error): every byte Printable would escape is escaped, and
// nothing is cut.
inline std::string TerminalText(std::string_view s) { return Printable(s, std::string_view::npos); }

}  // namespace reel
