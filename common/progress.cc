#include "common/progress.h"

#include <unistd.h>

#include <spdlog/spdlog.h>

namespace reel {

std::string FormatDuration(double seconds) {
  if (seconds < 0) seconds = 0;
  const int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02d:%02d", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string label, int total) : Progress(std::move(label), total, ::isatty(STDERR_FILENO)) {}

Progress::Progress(std::string label, int total, bool interactive)
    : label_(std::move(label)), total_(total), interactive_(interactive), start_(std::chrono::steady_clock::now()) {
  if (interactive_) Step(0);
}

Progress::~Progress() { Finish(); }

void Progress::Step(int done) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = done > 0 ? elapsed / done * (total_ - done) : 0.0;
  if (!interactive_) {
    if (done > 0)
      spdlog::info("{} step {}/{} elapsed {} eta {}", label_, done, total_, FormatDuration(elapsed),
                   FormatDuration(eta));
    return;
  }
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? done * kWidth / total_ : kWidth;
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r%s [%s] %d/%d %s<%s   ", label_.c_str(), bar.c_str(), done, total_,
               FormatDuration(elapsed).c_str(), done > 0 ? FormatDuration(eta).c_str() : "--:--");
  std::fflush(stderr);
}

void Progress::Finish() {
  if (finished_) return;
  finished_ = true;
  if (interactive_) std::fputc('\n', stderr);
}

}  // namespace reel
