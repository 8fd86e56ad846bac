// Progress for long loops: a redrawn bar (step, elapsed, ETA) on a terminal, plain log lines otherwise.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace reel {

class Progress {
 public:
  // `interactive` defaults to whether stderr is a terminal.
  Progress(std::string label, int total);
  Progress(std::string label, int total, bool interactive);
  ~Progress();
  void Step(int done);  // `done` steps of `total` are complete
  void Finish();

 private:
  std::string label_;
  int total_;
  bool interactive_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

std::string FormatDuration(double seconds);

}  // namespace reel
