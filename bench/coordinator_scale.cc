// The coordinator core at scale, in simulation: W workers on H hosts of three GPU classes and N jobs of mixed
// shapes and priorities arriving at a fraction of the cluster's bound, driven through the real core with no faults.
// Prints simulated jobs/hour against the bound, queue wait p50/p99, and the core's own events/s on this thread;
// `--baseline` runs the same jobs with every worker holding every stage, FIFO (priorities ignored), no guidance
// split. The core's cost per event is measured twice: inside the run (wall clock around each step), and by replaying
// the run's events into a fresh core in a tight loop on this thread's CPU clock, which a shared machine's other
// load does not inflate. docs/BENCHMARKS.md ("Coordinator core at scale") has the command and figures.
#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "coordinator/coordinator_core.h"
#include "sim/cost.h"

namespace {

using namespace reel;
using core::Micros;

struct Options {
  int workers = 1000, hosts = 125, jobs = 100000;
  double load = 0.9;  // arrivals as a fraction of the bound
  bool baseline = false;
  bool unbounded_early = false;  // early dispatch as soon as a producer starts, not in its last handoff
  uint64_t seed = 1;
};

struct Bench {
  Options o;
  core::CoordinatorCore core;
  std::mt19937_64 rng;
  double now = 0;
  uint64_t seq = 0;
  struct Pending {
    double t;
    uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Pending& p) const { return t != p.t ? t > p.t : seq > p.seq; }
  };
  std::priority_queue<Pending, std::vector<Pending>, std::greater<>> q;
  std::map<std::string, double> speed;  // by address
  double core_seconds = 0;
  int64_t events = 0, ended = 0;
  std::vector<double> waits;
  std::vector<std::pair<Micros, core::Event>> log;  // every event stepped, for the replay

  static core::CoreOptions CoreOptionsOf(const Options& o) {
    core::CoreOptions c;
    c.models = {{"t2v", {{StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}, false}},
                {"i2v",
                 {{StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder},
                  true}}};
    c.planned = true;
    c.guidance_parallel = !o.baseline;
    c.max_queued_jobs = o.jobs + 1;
    c.ended_jobs_kept = 1000;
    c.worker_timeout_us = int64_t{1} << 60;  // no faults: leases never run out (no heartbeats are simulated)
    c.estimate = [](const core::JobShape& s, StageKind k) { return sim::EstimateOf(k, s); };
    c.bound_early_dispatch = !o.unbounded_early;
    return c;
  }
  // The denoiser on a share of the cluster's speed in proportion to its share of the work, as the planner's
  // throughput objective places replicas, and the encoders with the decoder on the rest (they are small beside a
  // GPU's memory, and the text encoder's share alone would round down to one slow worker). Workers go in name
  // order to whichever side is furthest below its share, so both get a mix of GPU classes.
  std::map<StageKind, double> share;
  std::map<std::string, core::Assignments> Split(const std::vector<core::cmd::PlanWorker>& workers) const {
    std::map<std::string, core::Assignments> out;
    double total = 0;
    for (const auto& [k, w] : share) total += w;
    const double denoise =
        total > 0 && share.count(StageKind::kDenoiser) ? share.at(StageKind::kDenoiser) / total : 0.5;
    double speeds = 0;
    for (const auto& w : workers) speeds += speed.at(w.name + ":1");
    double to_denoiser = 0, to_rest = 0;
    for (size_t i = 0; i < workers.size(); ++i) {
      const double s = speed.at(workers[i].name + ":1");
      // Every side gets one worker (a lone worker holds everything); then the one furthest below its share.
      const bool both = workers.size() == 1;
      const bool denoiser = i == 0   ? true
                            : i == 1 ? false
                                     : to_denoiser / (denoise * speeds) <= to_rest / ((1 - denoise) * speeds);
      (denoiser ? to_denoiser : to_rest) += s;
      for (const auto& [model, info] : core.options().models)
        for (StageKind k : info.stages)
          if (both || (k == StageKind::kDenoiser) == denoiser) out[workers[i].name][model].push_back({k, {}});
    }
    return out;
  }

  explicit Bench(const Options& opts) : o(opts), core(CoreOptionsOf(opts)), rng(opts.seed) {}

  void At(double t, std::function<void()> fn) { q.push({std::max(t, now), ++seq, std::move(fn)}); }
  Micros Now() const { return static_cast<Micros>(now * 1e6) + 1; }

  void Step(const core::Event& e) {
    log.emplace_back(Now(), e);
    const auto start = std::chrono::steady_clock::now();
    core::StepResult r = core.Step(Now(), e);
    core_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++events;
    for (auto& c : r.commands) Execute(c);
    // As the adapter's monitor does: a tick when the core asks for one (an early dispatch falls due, a re-plan
    // settles), besides the cadence.
    if (const Micros wake = core.NextWake(); wake > 0 && wake != woken) {
      woken = wake;
      At(static_cast<double>(wake - 1) / 1e6, [this] { Step(core::ev::Tick{}); });
    }
  }
  Micros woken = 0;

  void Execute(core::Command& c) {
    if (auto* run = std::get_if<core::cmd::RunStage>(&c)) {
      const core::Job* j = core.FindJob(run->job_id);
      double seconds = sim::CostOf(run->kind, j->shape).seconds / speed[run->address];
      if (!run->peer_id.empty()) seconds *= sim::kSplitShare;
      // An early-dispatched consumer computes once its producer is done: approximated by the producer's time left.
      for (const auto& in : run->inputs)
        if (in.address != "" && !j->outputs.count(in.name))
          for (const auto& s : j->stages)
            if (s.attempt == in.attempt) seconds += std::max(0.0, sim::CostOf(s.kind, j->shape).seconds - (now - s.started / 1e6));
      core::ev::StageResult result;
      result.attempt = run->attempt;
      const char* out = run->kind == StageKind::kTextEncoder  ? "text"
                        : run->kind == StageKind::kVaeEncoder ? "image_moments"
                        : run->kind == StageKind::kDenoiser   ? "latents"
                                                              : "video.mp4";
      result.outputs.push_back({out, 1 << 20});
      At(now + seconds, [this, result] { Step(result); });
    } else if (auto* load = std::get_if<core::cmd::LoadWorker>(&c)) {
      core::ev::Loaded done{load->worker_id, true, {}, {}, load->want, load->held, ""};
      for (const auto& [model, a] : load->want)
        for (const auto& s : a) done.holds.insert({model, s.kind});
      At(now + 1, [this, done] { Step(done); });
    } else if (auto* store = std::get_if<core::cmd::StoreOutput>(&c)) {
      At(now + 0.01, [this, job = store->job_id, attempt = store->attempt] {
        const core::Job* j = core.FindJob(job);
        if (j) waits.push_back((j->started - j->submitted) / 1e6);
        ++ended;
        Step(core::ev::OutputStored{job, attempt, "out", "", 1, 9});
      });
    } else if (auto* replan = std::get_if<core::cmd::Replan>(&c)) {
      core::ev::Planned p;
      p.generation = replan->generation;
      p.workers = o.baseline ? sim::SimPlan(replan->workers, core.options().models, -1) : Split(replan->workers);
      At(now + 0.01, [this, p] { Step(p); });
    }
  }
};

double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "coordinator_scale: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atof(argv[++i]);
    };
    if (a == "--workers") o.workers = static_cast<int>(next());
    else if (a == "--hosts") o.hosts = static_cast<int>(next());
    else if (a == "--jobs") o.jobs = static_cast<int>(next());
    else if (a == "--load") o.load = next();
    else if (a == "--baseline") o.baseline = true;
    else if (a == "--unbounded-early") o.unbounded_early = true;
    else {
      std::fprintf(stderr, "coordinator_scale: '%s': accepted --workers N --hosts N --jobs N --load F --baseline --unbounded-early\n",
                   a.c_str());
      return 2;
    }
  }
  if (o.workers < 1 || o.hosts < 1 || o.jobs < 1 || !(o.load > 0)) {
    std::fprintf(stderr, "coordinator_scale: --workers, --hosts, --jobs and --load must be positive\n");
    return 2;
  }
  Bench b(o);
  // Workers: three GPU classes (speed 1, 2, 3) in turn by host.
  double total_speed = 0;
  for (int i = 0; i < o.workers; ++i) {
    const int host = i % o.hosts;
    const double speed = 1.0 + host % 3;
    const std::string name = fmt::format("w{}", i), address = name + ":1";
    b.speed[address] = speed;
    total_speed += speed;
    core::ev::Register r;
    r.name = name;
    r.address = address;
    r.host = fmt::format("h{}", host);
    r.device = "cuda:0";
    r.capacity_bytes = int64_t{80} << 30;
    b.At(0, [&b, r] { b.Step(r); });
  }
  // Jobs: the simulator's mix (two models, 9 or 17 frames, 2-12 steps, a third guided, a quarter prioritised).
  std::vector<core::ev::Submit> jobs;
  double work = 0;
  for (int i = 0; i < o.jobs; ++i) {
    core::ev::Submit s;
    s.shape = {b.rng() % 4 == 0 ? "i2v" : "t2v", b.rng() % 2 ? 9 : 17, 64, 64, static_cast<int>(2 + b.rng() % 11),
               b.rng() % 3 == 0 ? 6.0 : 1.0};
    s.priority = o.baseline ? 0 : (b.rng() % 4 == 0 ? static_cast<int>(1 + b.rng() % 3) : 0);
    for (StageKind k : b.core.options().models.at(s.shape.model).stages) {
      work += sim::CostOf(k, s.shape).seconds;
      b.share[k] += sim::CostOf(k, s.shape).seconds;
    }
    jobs.push_back(s);
  }
  // The bound: every worker busy all the time at its speed, no handoffs.
  const double bound_per_hour = 3600 * total_speed / (work / o.jobs);
  const double interval = 3600 / (bound_per_hour * o.load);
  for (int i = 0; i < o.jobs; ++i) b.At(5 + i * interval, [&b, s = jobs[i]] { b.Step(s); });
  // The adapter's monitor: a tick a second (leases, the settled re-plan).
  std::function<void()> tick = [&] {
    b.Step(core::ev::Tick{});
    if (b.ended < o.jobs) b.At(b.now + 1, tick);
  };
  b.At(0.5, tick);
  const auto start = std::chrono::steady_clock::now();
  double first = -1, last = 0;
  while (!b.q.empty() && b.ended < o.jobs) {
    auto p = b.q.top();
    b.q.pop();
    b.now = p.t;
    p.fn();
    if (b.ended > 0 && first < 0) first = b.now;
    last = b.now;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The same events into a fresh core: deterministic, so it makes the same decisions, with nothing else between
  // its steps.
  double replay = 0;
  {
    core::CoordinatorCore fresh(Bench::CoreOptionsOf(o));
    size_t commands = 0;
    const double cpu = ThreadCpuSeconds();
    for (const auto& [t, e] : b.log) commands += fresh.Step(t, e).commands.size();
    replay = ThreadCpuSeconds() - cpu;
    if (fresh.jobs().size() != b.core.jobs().size() || fresh.next_seq() != b.core.next_seq() ||
        fresh.RunningJobs() != b.core.RunningJobs() || commands == 0) {
      std::fprintf(stderr, "coordinator_scale: the replay did not reach the run's state\n");
      return 1;
    }
  }
  const double span = last - 5;
  std::printf("%s: %d workers on %d hosts, %d jobs offered at %.0f%% of the bound\n",
              o.baseline ? "baseline (every stage everywhere, FIFO)" : "reel (denoiser apart, priorities, split choice)",
              o.workers, o.hosts, o.jobs, o.load * 100);
  std::printf("  jobs/hour %.0f of a bound of %.0f (%.3f); queue wait p50 %.2f s, p99 %.2f s\n",
              b.ended / span * 3600, bound_per_hour, b.ended / span * 3600 / bound_per_hour,
              Percentile(b.waits, 0.5), Percentile(b.waits, 0.99));
  std::printf("  core in the run: %lld events in %.2f s (wall clock) = %.0f events/s (%.1f us/event); whole run %.1f s\n",
              static_cast<long long>(b.events), b.core_seconds, b.events / b.core_seconds,
              1e6 * b.core_seconds / static_cast<double>(b.events), wall);
  std::printf("  core replayed: %lld events in %.2f s of one thread's CPU = %.0f events/s (%.1f us/event)\n",
              static_cast<long long>(b.events), replay, b.events / replay, 1e6 * replay / static_cast<double>(b.events));
  return 0;
}
