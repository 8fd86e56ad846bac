// reel-sim: runs random schedules of the coordinator core in the simulator (sim/world.h) and checks its
// invariants. A failing seed prints its schedule and event trace, shrunk; `--seed S` replays one byte for byte.
//   reel-sim --schedules 10000            CI's run (ctest sim_schedules)
//   reel-sim --schedules 1000000 --first-seed 7   soak
//   reel-sim --seed 123 [--trace]         one schedule
//   --revert-register-holds / --revert-split-choice   bring back bug (a) / (b) to see the simulator find it
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "sim/world.h"

namespace {

int Usage(const std::string& why) {
  std::fprintf(stderr,
               "reel-sim: %s\nusage: reel-sim [--schedules N] [--first-seed S] [--seed S] [--trace] "
               "[--revert-register-holds] [--revert-split-choice]\n",
               why.c_str());
  return 2;
}

bool ParseCount(const char* text, uint64_t* out) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (!end || *end != '\0' || text[0] == '-' || text[0] == '\0') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t schedules = 1000, first = 1, seed = 0;
  bool one = false, trace = false, revert_a = false, revert_b = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](uint64_t* out) {
      if (i + 1 >= argc || !ParseCount(argv[++i], out)) return false;
      return true;
    };
    if (a == "--schedules") {
      if (!value(&schedules) || schedules == 0)
        return Usage(fmt::format("--schedules {}: accepted a whole number of 1 or more", i < argc ? argv[i] : ""));
    } else if (a == "--first-seed") {
      if (!value(&first)) return Usage(fmt::format("--first-seed {}: accepted a whole number", i < argc ? argv[i] : ""));
    } else if (a == "--seed") {
      if (!value(&seed)) return Usage(fmt::format("--seed {}: accepted a whole number", i < argc ? argv[i] : ""));
      one = true;
    } else if (a == "--trace") {
      trace = true;
    } else if (a == "--revert-register-holds") {
      revert_a = true;
    } else if (a == "--revert-split-choice") {
      revert_b = true;
    } else {
      return Usage(fmt::format("'{}': not an option", a));
    }
  }
  if (one) first = seed, schedules = 1;
  const auto start = std::chrono::steady_clock::now();
  int64_t events = 0, succeeded = 0, failed = 0;
  double sim_seconds = 0;
  for (uint64_t s = first; s < first + schedules; ++s) {
    reel::sim::Schedule schedule = reel::sim::RandomSchedule(s);
    schedule.revert_register_holds = revert_a;
    schedule.revert_split_choice = revert_b;
    reel::sim::RunOptions options;
    options.trace = one && trace;
    const reel::sim::Outcome o = reel::sim::Run(schedule, options);
    events += o.events;
    succeeded += o.succeeded;
    failed += o.failed;
    sim_seconds += o.sim_seconds;
    if (options.trace)
      for (const auto& line : o.trace) std::printf("%s\n", line.c_str());
    if (o.ok()) continue;
    std::printf("seed %llu: %s\n", static_cast<unsigned long long>(s), o.violation.c_str());
    const reel::sim::Schedule shrunk = reel::sim::Shrink(schedule);
    options.trace = true;
    const reel::sim::Outcome again = reel::sim::Run(shrunk, options);
    std::printf("shrunk to:\n%s", reel::sim::Describe(shrunk).c_str());
    std::printf("which fails with: %s\ntrace:\n", again.violation.c_str());
    for (const auto& line : again.trace) std::printf("%s\n", line.c_str());
    std::printf("replay: reel-sim --seed %llu --trace%s%s\n", static_cast<unsigned long long>(s),
                revert_a ? " --revert-register-holds" : "", revert_b ? " --revert-split-choice" : "");
    return 1;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu schedule(s) from seed %llu: every invariant held; %lld core events (%.0f/s), %.0f simulated "
              "seconds, %lld jobs succeeded, %lld failed; %.1f s\n",
              static_cast<unsigned long long>(schedules), static_cast<unsigned long long>(first),
              static_cast<long long>(events), events / std::max(wall, 1e-9), sim_seconds,
              static_cast<long long>(succeeded), static_cast<long long>(failed), wall);
  return 0;
}
