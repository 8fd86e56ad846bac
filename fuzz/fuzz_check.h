// What every fuzz target asserts beyond "no crash, no leak, no UB": a refusal is a reel::Error of the expected
// kind whose text is one line of bounded length, and a property that fails aborts with what broke.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "common/error.h"

namespace reel::fuzz {

// Long enough for a source path, a field path and a value shown with Printable; far below what a hostile input
// could put into an unbounded message.
inline constexpr size_t kMaxErrorBytes = 600;

[[noreturn]] inline void Fail(const char* what, std::string_view detail) {
  const int shown = static_cast<int>(detail.size() > 2000 ? 2000 : detail.size());
  std::fprintf(stderr, "fuzz property failed: %s: %.*s\n", what, shown, detail.data());
  std::abort();
}

inline void CheckErrorLine(std::string_view message) {
  if (message.empty()) Fail("empty error message", "");
  if (message.find('\n') != std::string_view::npos || message.find('\r') != std::string_view::npos)
    Fail("error message is more than one line", message);
  if (message.size() > kMaxErrorBytes) Fail("error message is too long", message);
}

inline void CheckError(const Error& e, ErrorKind want) {
  if (e.kind() != want) Fail("unexpected error kind", e.what());
  CheckErrorLine(e.what());
}

// With REEL_FUZZ_EXPLAIN=1 a target prints what it made of each input, one tab-separated line on stderr
// ("REEL_FUZZ_RESULT<TAB>accepted|refused<TAB>text"): fuzz/error_table.sh builds docs/FUZZING.md's table from
// these lines, so the table shows what the code says, not what someone wrote down.
inline bool Explain() {
  static const bool on = [] {
    const char* v = std::getenv("REEL_FUZZ_EXPLAIN");
    return v && *v && *v != '0';
  }();
  return on;
}

inline void Report(std::string_view outcome, std::string_view text) {
  if (Explain())
    std::fprintf(stderr, "REEL_FUZZ_RESULT\t%.*s\t%.*s\n", static_cast<int>(outcome.size()), outcome.data(),
                 static_cast<int>(text.size()), text.data());
}

}  // namespace reel::fuzz

#define REEL_FUZZ_CHECK(cond, detail)                        \
  do {                                                       \
    if (!(cond)) ::reel::fuzz::Fail(#cond, (detail));        \
  } while (0)
