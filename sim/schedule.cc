#include "sim/schedule.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>

namespace reel::sim {

const char* FaultName(FaultKind k) {
  switch (k) {
    case FaultKind::kCrash: return "crash";
    case FaultKind::kHang: return "hang";
    case FaultKind::kSlow: return "slow";
    case FaultKind::kOom: return "oom";
    case FaultKind::kDropHeartbeats: return "drop-heartbeats";
    case FaultKind::kDuplicateResult: return "duplicate-result";
    case FaultKind::kLateResult: return "late-result";
    case FaultKind::kLoseResult: return "lose-result";
    case FaultKind::kPartition: return "partition";
    case FaultKind::kCoordinatorCrash: return "coordinator-crash";
    case FaultKind::kDropReply: return "drop-reply";
  }
  return "?";
}

Schedule RandomSchedule(uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  auto uniform = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  auto pick = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  Schedule s;
  s.seed = seed;
  const int workers = pick(1, 5);
  const int hosts = pick(1, workers);
  for (int i = 0; i < workers; ++i) {
    WorkerSpec w;
    w.name = fmt::format("w{}", i);
    w.host = fmt::format("h{}", i % hosts);
    w.capacity_bytes = int64_t{pick(24, 40)} << 30;  // every stage of both models and the largest run fit
    w.speed = pick(0, 2) == 0 ? 2.0 : 1.0;  // two GPU classes
    s.workers.push_back(w);
  }
  const int jobs = pick(1, 12);
  for (int i = 0; i < jobs; ++i) {
    JobSpec j;
    j.at = uniform(0, 40);
    j.model = pick(0, 3) == 0 ? "i2v" : "t2v";
    j.priority = pick(0, 3) == 0 ? pick(1, 3) : 0;
    j.guidance = pick(0, 1) ? 6.0 : 1.0;
    j.frames = pick(0, 1) ? 9 : 17;
    j.steps = pick(2, 12);
    j.request_id = pick(0, 1) ? fmt::format("r{}", i) : "";
    s.jobs.push_back(j);
  }
  std::sort(s.jobs.begin(), s.jobs.end(), [](const JobSpec& a, const JobSpec& b) { return a.at < b.at; });
  const int faults = pick(0, 6);
  for (int i = 0; i < faults; ++i) {
    Fault f;
    f.at = uniform(0, 60);
    f.kind = static_cast<FaultKind>(pick(0, static_cast<int>(FaultKind::kDropReply)));
    f.worker = pick(0, workers - 1);
    f.other = pick(0, workers - 1);
    f.duration = pick(0, 1) ? uniform(0.5, 4) : uniform(4, 15);  // shorter and longer than the lease
    f.factor = uniform(2, 6);
    s.faults.push_back(f);
  }
  std::sort(s.faults.begin(), s.faults.end(), [](const Fault& a, const Fault& b) { return a.at < b.at; });
  s.guidance_parallel = pick(0, 3) != 0;
  s.everywhere = pick(0, 3) == 0;
  // Drawn last, so every earlier draw of a seed is what it was before jobs had an objective.
  for (auto& j : s.jobs) j.latency = pick(0, 2) == 0;
  return s;
}

std::string Describe(const Schedule& s) {
  std::string out = fmt::format("seed {}{}{}{}{}\n", s.seed, s.guidance_parallel ? "" : ", no guidance-parallel",
                                s.everywhere ? ", every stage on every worker" : "",
                                s.revert_register_holds ? ", fix (a) reverted" : "",
                                s.revert_split_choice ? ", fix (b) reverted" : "");
  for (const auto& w : s.workers)
    out += fmt::format("  worker {} on {}: {} GiB, speed {}\n", w.name, w.host, w.capacity_bytes >> 30, w.speed);
  for (const auto& j : s.jobs)
    out += fmt::format("  job at {:.3f} s: {} {} frames {} steps guidance {} priority {}{}\n", j.at, j.model, j.frames,
                       j.steps, j.guidance, j.priority,
                       (j.request_id.empty() ? "" : " request " + j.request_id) + (j.latency ? " latency" : ""));
  for (const auto& f : s.faults)
    out += fmt::format("  fault at {:.3f} s: {} w{} (other w{}, {:.2f} s, x{:.1f})\n", f.at, FaultName(f.kind), f.worker,
                       f.other, f.duration, f.factor);
  return out;
}

}  // namespace reel::sim
