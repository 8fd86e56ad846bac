// The placement search against the exhaustive reference on random small instances, the plan checker against
// planted violations, infeasible problems, the explanations, and the memory rules on hand-made machines.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "common/error.h"
#include "planner/search.h"
#include "tests/planner_util.h"

namespace reel::planner {
namespace {

using reel::testing::GiBOption;
using reel::testing::kGiB;
constexpr int64_t kMiB = int64_t{1} << 20;

std::string Joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += x + "\n";
  return s;
}

bool AnyContains(const std::vector<std::string>& v, const std::string& part) {
  return std::any_of(v.begin(), v.end(), [&](const std::string& x) { return x.find(part) != std::string::npos; });
}

// A machine of `devices` devices of `capacity_gib` on hosts of `per_host` devices with `ram_gib` each; margin 0
// so that the numbers in the tests are the limits.
Problem Machine(int devices, double capacity_gib, int per_host = 8, double ram_gib = 0) {
  Problem p;
  p.machine.margin = 0;
  for (int d = 0; d < devices; ++d) {
    const std::string host = "host" + std::to_string(d / per_host);
    if (d % per_host == 0) p.machine.hosts.push_back({host, static_cast<int64_t>(ram_gib * kGiB), 0});
    Device dev;
    dev.name = "gpu" + std::to_string(d);
    dev.host = host;
    dev.capacity_bytes = static_cast<int64_t>(capacity_gib * kGiB);
    p.machine.devices.push_back(dev);
  }
  return p;
}

void AddStage(Problem& p, StageKind kind, const std::vector<Option>& options, int64_t output_bytes = 0) {
  StageOptions st;
  st.stage = kind;
  st.output_bytes = output_bytes;
  st.per_device.assign(p.machine.devices.size(), options);
  p.stages.push_back(st);
}

// Random instances: up to 4 devices on 1–2 hosts, up to 4 stages, up to `max_options` options per (stage,
// device), some too big for any device, tight host RAM and pinned budgets now and then, and seconds drawn from a
// small set half the time so that ties happen. To exercise the symmetry reduction, some devices copy the one
// before (same host, same options), and some machines are two identical hosts.
Problem RandomProblem(std::mt19937_64& rng, int max_options) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  static const StageKind kinds[] = {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser,
                                    StageKind::kVaeDecoder};
  Problem p;
  p.machine.margin = chance(0.5) ? 0.1 : 0;
  const bool twin_hosts = chance(0.3);
  const int devices = twin_hosts ? 2 * pick(1, 2) : pick(1, 4);
  const int hosts = twin_hosts ? 2 : pick(1, std::min(2, devices));
  for (int h = 0; h < hosts; ++h) {
    const int64_t ram = std::vector<int64_t>{0, 8 * kGiB, 16 * kGiB, 24 * kGiB, 48 * kGiB}[pick(0, 4)];
    p.machine.hosts.push_back({"host" + std::to_string(h), ram, chance(0.3) ? 6 * kGiB : 0});
  }
  if (twin_hosts) p.machine.hosts[1] = {"host1", p.machine.hosts[0].ram_bytes, p.machine.hosts[0].pinned_budget_bytes};
  // copy_of[d]: the device whose options d repeats, or -1.
  std::vector<int> copy_of(devices, -1);
  for (int d = 0; d < devices; ++d) {
    Device dev;
    dev.name = "gpu" + std::to_string(d);
    if (twin_hosts && d >= devices / 2)
      copy_of[d] = d - devices / 2;
    else if (d > 0 && chance(0.4))
      copy_of[d] = d - 1;
    if (copy_of[d] >= 0) {
      dev.host = twin_hosts ? "host" + std::to_string(d * 2 / devices) : p.machine.devices[d - 1].host;
      dev.capacity_bytes = p.machine.devices[copy_of[d]].capacity_bytes;
    } else {
      dev.host = twin_hosts ? "host0" : "host" + std::to_string(pick(0, hosts - 1));
      dev.capacity_bytes = std::vector<int64_t>{8 * kGiB, 16 * kGiB, 24 * kGiB}[pick(0, 2)];
    }
    p.machine.devices.push_back(dev);
  }
  const int stages = pick(1, 4);
  for (int s = 0; s < stages; ++s) {
    StageOptions st;
    st.stage = kinds[s];
    st.output_bytes = int64_t{pick(0, 2048)} * kMiB;
    for (int d = 0; d < devices; ++d) {
      if (copy_of[d] >= 0) {
        st.per_device.push_back(st.per_device[copy_of[d]]);
        continue;
      }
      std::vector<Option> opts;
      const int n = chance(0.1) ? 0 : pick(1, max_options);
      for (int i = 0; i < n; ++i) {
        Option o;
        o.strategy = std::vector<std::string>{"none", "model", "block:2", "sequential"}[pick(0, 3)];
        o.dtype = std::vector<std::string>{"bf16", "f32", "int8"}[pick(0, 2)];
        o.resident_device_bytes = int64_t{pick(0, 48)} * kGiB / 4;
        o.peak_device_bytes = o.resident_device_bytes + int64_t{pick(0, 40)} * kGiB / 4;
        if (chance(0.1)) o.peak_device_bytes += 30 * kGiB;  // fits nowhere
        o.host_bytes = chance(0.5) ? int64_t{pick(0, 40)} * kGiB / 4 : 0;
        o.pinned_bytes = chance(0.5) ? o.host_bytes / 2 : 0;
        o.run_host_bytes = chance(0.5) ? int64_t{pick(0, 16)} * kGiB / 4 : 0;
        o.seconds = chance(0.5) ? pick(1, 8) : std::uniform_real_distribution<double>(0.1, 50)(rng);
        opts.push_back(o);
      }
      st.per_device.push_back(opts);
    }
    p.stages.push_back(st);
  }
  return p;
}

// Assignments the exhaustive throughput reference visits (an upper bound: before device memory filters them).
double ThroughputAssignments(const Problem& p) {
  double n = 1;
  for (size_t d = 0; d < p.machine.devices.size(); ++d)
    for (const StageOptions& st : p.stages) n *= 1.0 + static_cast<double>(st.per_device[d].size());
  return n;
}

double Cost(const Plan& p) { return p.objective == Objective::kLatency ? p.latency_seconds : 3600.0 / p.jobs_per_hour; }
int64_t SumPeaks(const Plan& p) {
  int64_t s = 0;
  for (int64_t b : p.device_peak_bytes) s += b;
  return s;
}

struct Tally {
  int feasible = 0, infeasible = 0, multi_device = 0, max_devices = 0, max_stages = 0;
};

void CompareWithExhaustive(const Problem& p, Objective objective, Tally& t, uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed) + (objective == Objective::kLatency ? " latency" : " throughput"));
  const Plan ref = ExhaustiveSearch(p, objective);
  SearchOptions branch_only;  // throughput: the branching alone must reach the reference too
  branch_only.local_search = false;
  for (const SearchOptions& opts : {SearchOptions{}, branch_only}) {
    const Plan fast = Search(p, objective, opts);
    ASSERT_EQ(fast.feasible, ref.feasible) << fast.infeasible_reason;
    if (!ref.feasible) {
      EXPECT_FALSE(fast.infeasible_reason.empty());
      continue;
    }
    EXPECT_TRUE(fast.optimal);
    const double a = Cost(fast), b = Cost(ref);
    EXPECT_NEAR(a, b, 1e-9 * b) << "search " << a << " vs exhaustive " << b;
    if (objective == Objective::kLatency && std::fabs(a - b) <= 1e-9 * b) {
      EXPECT_EQ(SumPeaks(fast), SumPeaks(ref));
    }
    EXPECT_EQ(CheckPlan(p, fast), std::vector<std::string>{}) << Joined(CheckPlan(p, fast));
    std::vector<int> used;
    for (const StagePlan& sp : fast.stages)
      for (const Replica& r : sp.replicas) used.push_back(r.device);
    std::sort(used.begin(), used.end());
    if (opts.local_search && std::unique(used.begin(), used.end()) - used.begin() > 1) ++t.multi_device;
  }
  if (!ref.feasible) {
    ++t.infeasible;
    return;
  }
  ++t.feasible;
  EXPECT_EQ(CheckPlan(p, ref), std::vector<std::string>{}) << Joined(CheckPlan(p, ref));
  t.max_devices = std::max<int>(t.max_devices, static_cast<int>(p.machine.devices.size()));
  t.max_stages = std::max<int>(t.max_stages, static_cast<int>(p.stages.size()));
}

// The instances must exercise both outcomes, plans over several devices, 4 devices and many stages.
void ExpectVaried(const Tally& t, const char* what, int feasible, int infeasible, int multi_device, int stages) {
  EXPECT_GT(t.feasible, feasible);
  EXPECT_GT(t.infeasible, infeasible);
  EXPECT_GT(t.multi_device, multi_device);
  EXPECT_EQ(t.max_devices, 4);
  EXPECT_GE(t.max_stages, stages);
  std::printf("%s: %d feasible, %d infeasible, %d over several devices\n", what, t.feasible, t.infeasible,
              t.multi_device);
}

TEST(PlannerSearch, LatencyEqualsExhaustiveOnRandomInstances) {
  Tally t;
  for (uint64_t seed = 1; seed <= 1000; ++seed) {
    std::mt19937_64 rng(seed);
    CompareWithExhaustive(RandomProblem(rng, 6), Objective::kLatency, t, seed);
  }
  ExpectVaried(t, "latency", 500, 25, 125, 4);
}

TEST(PlannerSearch, ThroughputEqualsExhaustiveOnRandomInstances) {
  // The reference enumerates every set of replicas, so instances are kept to 2e6 assignments at most.
  Tally t;
  int compared = 0;
  for (uint64_t seed = 1; compared < 300 && seed < 5000; ++seed) {
    std::mt19937_64 rng(seed * 7919);
    const Problem p = RandomProblem(rng, seed % 2 ? 3 : 6);
    if (ThroughputAssignments(p) > 2e6) continue;
    ++compared;
    CompareWithExhaustive(p, Objective::kThroughput, t, seed);
  }
  EXPECT_EQ(compared, 300);
  ExpectVaried(t, "throughput", 150, 10, 50, 3);
}

// A latency plan that fits and is right, for the checker tests to break.
Problem TwoStagesTwoDevices() {
  Problem p = Machine(2, 16, 8, 32);
  p.machine.hosts[0].pinned_budget_bytes = 8 * kGiB;
  AddStage(p, StageKind::kTextEncoder,
           {GiBOption("none", "bf16", 9, 10, 1), GiBOption("model", "bf16", 0, 10, 2, 9, 9),
            GiBOption("none", "f32", 18, 19, 2)},
           100 * kMiB);
  AddStage(p, StageKind::kDenoiser,
           {GiBOption("none", "bf16", 11, 15, 100), GiBOption("block:2", "bf16", 0, 6, 150, 11, 6)});
  return p;
}

Plan Placed(const Problem& p, Objective objective, std::vector<std::vector<Replica>> replicas) {
  Plan plan;
  plan.objective = objective;
  for (size_t s = 0; s < p.stages.size(); ++s) plan.stages.push_back({p.stages[s].stage, replicas[s]});
  ScorePlan(p, plan);
  return plan;
}

TEST(PlannerSearch, CheckPlanCatchesPlantedViolations) {
  const Problem p = TwoStagesTwoDevices();
  const Plan good = Placed(p, Objective::kLatency, {{{0, 0}}, {{1, 0}}});
  ASSERT_TRUE(good.feasible);
  EXPECT_EQ(CheckPlan(p, good), std::vector<std::string>{}) << Joined(CheckPlan(p, good));

  // Device memory: both resident stages on gpu0, 9 + 11 resident + 4 extra = 24 GiB of 16.
  Plan both = Placed(p, Objective::kLatency, {{{0, 0}}, {{0, 0}}});
  EXPECT_FALSE(both.feasible);
  auto e = CheckPlan(p, both);
  ASSERT_EQ(e.size(), 1u) << Joined(e);
  EXPECT_EQ(e[0], "gpu0: device memory peak 24.00 GiB exceeds 16.00 GiB usable by 8.00 GiB");

  // Host RAM and pinned: model offload (9 GiB host, 9 pinned) and block streaming (11 host, 6 pinned):
  // 20 GiB of RAM fits 32, 15 GiB pinned does not fit 8.
  e = CheckPlan(p, Placed(p, Objective::kLatency, {{{0, 1}}, {{1, 1}}}));
  ASSERT_EQ(e.size(), 1u) << Joined(e);
  EXPECT_EQ(e[0], "host0: pinned memory 15.00 GiB exceeds the pinned budget 8.00 GiB by 7.00 GiB");
  Problem small_ram = p;
  small_ram.machine.hosts[0].ram_bytes = 16 * kGiB;
  small_ram.machine.hosts[0].pinned_budget_bytes = 0;
  e = CheckPlan(small_ram, Placed(small_ram, Objective::kLatency, {{{0, 1}}, {{1, 1}}}));
  ASSERT_EQ(e.size(), 1u) << Joined(e);
  EXPECT_EQ(e[0], "host0: host RAM 20.00 GiB exceeds 16.00 GiB usable by 4.00 GiB");

  // Shape.
  Plan bad = good;
  bad.stages.pop_back();
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "the plan has 1 stages; the problem has 2"));
  bad = good;
  bad.stages[1].replicas.push_back({0, 0});
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "denoiser: 2 replicas; a latency plan has exactly one"));
  bad = good;
  bad.stages[0].replicas = {{5, 0}};
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "text_encoder: device 5 does not exist (the machine has 2)"));
  bad = good;
  bad.stages[0].replicas = {{1, 3}};
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "text_encoder on gpu1: option 3 does not exist (3 options)"));
  bad = good;
  bad.stages[1].replicas = {};
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "denoiser: no replica"));
  bad = good;
  bad.stages[0].stage = StageKind::kVaeDecoder;
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "stage 0 is vae_decoder; the problem's stage 0 is text_encoder"));
  bad = good;
  bad.objective = Objective::kThroughput;
  bad.stages[1].replicas = {{0, 1}, {0, 1}};
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "denoiser: gpu0 holds more than one replica"));

  // Reported figures that are not the plan's.
  bad = good;
  bad.latency_seconds += 1;
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "reported latency 102.0"));
  bad = good;
  bad.jobs_per_hour *= 2;
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "jobs/h; the plan's is"));
  bad = good;
  bad.device_peak_bytes[1] -= 1;
  EXPECT_TRUE(AnyContains(CheckPlan(p, bad), "gpu1: reported peak"));
}

TEST(PlannerSearch, FiguresFollowTheRules) {
  const Problem p = TwoStagesTwoDevices();
  // Latency: 1 + 100 MiB over the 10 GB/s link + 100.
  const Plan split = Placed(p, Objective::kLatency, {{{0, 0}}, {{1, 0}}});
  EXPECT_NEAR(split.latency_seconds, 101 + 100.0 * kMiB / 10e9, 1e-12);
  // One replica each on separate devices: the busier one takes 100 s a job.
  EXPECT_NEAR(split.jobs_per_hour, 36, 1e-9);
  // Throughput: the denoiser on both devices, block streaming on gpu0 (150 s) beside the text encoder and resident
  // on gpu1 (100 s), shares 1 / (1/150 + 1/100) = 60 s per job on each; gpu0 also spends 1 s on the text encoder.
  const Plan stream = Placed(p, Objective::kThroughput, {{{0, 0}}, {{0, 1}, {1, 0}}});
  ASSERT_TRUE(stream.feasible) << Joined(CheckPlan(p, stream));
  EXPECT_NEAR(stream.jobs_per_hour, 3600.0 / (1 + 1.0 / (1.0 / 150 + 1.0 / 100)), 1e-9);
  EXPECT_EQ(stream.device_peak_bytes, (std::vector<int64_t>{15 * kGiB, 15 * kGiB}));
  // Its latency: the fastest path, the text encoder on gpu0 and the denoiser on gpu1 (transfer included).
  EXPECT_NEAR(stream.latency_seconds, 1 + 100.0 * kMiB / 10e9 + 100, 1e-12);
}

TEST(PlannerSearch, StagesSharingADeviceNeedTheirRunPeaksOneAtATime) {
  // One 16 GiB device; each stage holds 2 GiB and needs 10 GiB more while it runs. Summed peaks (24 GiB) would
  // not fit; resident 4 GiB + the larger extra 10 GiB = 14 GiB does.
  Problem p = Machine(1, 16);
  AddStage(p, StageKind::kTextEncoder, {GiBOption("model", "bf16", 2, 12, 1)});
  AddStage(p, StageKind::kVaeDecoder, {GiBOption("none", "bf16", 2, 12, 5)});
  for (Objective obj : {Objective::kLatency, Objective::kThroughput}) {
    const Plan plan = Search(p, obj);
    ASSERT_TRUE(plan.feasible) << plan.infeasible_reason;
    EXPECT_EQ(plan.device_peak_bytes, std::vector<int64_t>{14 * kGiB});
    EXPECT_EQ(CheckPlan(p, plan), std::vector<std::string>{});
  }
  // 13 GiB extra on one of them: 4 + 13 = 17 > 16.
  p.stages[1].per_device[0][0].peak_device_bytes = 15 * kGiB;
  EXPECT_FALSE(Search(p, Objective::kLatency).feasible);
}

TEST(PlannerSearch, HostRunBytesCountOneAtATimeForLatencyAllAtOnceForThroughput) {
  // Two stages that each need 6 GiB of host memory while running, on a host with 10 GiB: one at a time (one job)
  // fits, both at once (a stream) does not.
  Problem p = Machine(2, 16, 8, 10);
  AddStage(p, StageKind::kDenoiser, {GiBOption("none", "bf16", 1, 2, 10, 0, 0, 6)});
  AddStage(p, StageKind::kVaeDecoder, {GiBOption("none", "bf16", 1, 2, 5, 0, 0, 6)});
  EXPECT_TRUE(Search(p, Objective::kLatency).feasible);
  const Plan t = Search(p, Objective::kThroughput);
  EXPECT_FALSE(t.feasible);
  EXPECT_NE(t.infeasible_reason.find("host0: host RAM 12.00 GiB exceeds 10.00 GiB usable by 2.00 GiB"),
            std::string::npos)
      << t.infeasible_reason;
}

TEST(PlannerSearch, InfeasibleSaysWhatIsMissing) {
  // The denoiser needs 19.2 GiB at best (sequential) and the devices have 16: 3.20 GiB short.
  Problem p = Machine(2, 16, 8, 64);
  AddStage(p, StageKind::kTextEncoder, {GiBOption("none", "bf16", 9, 10, 1)});
  AddStage(p, StageKind::kDenoiser,
           {GiBOption("none", "bf16", 22, 26, 100), GiBOption("sequential", "bf16", 0, 19.2, 400, 11)});
  for (Objective obj : {Objective::kLatency, Objective::kThroughput}) {
    const Plan plan = Search(p, obj);
    EXPECT_FALSE(plan.feasible);
    EXPECT_TRUE(plan.stages.empty());
    EXPECT_EQ(plan.infeasible_reason,
              "denoiser fits no device even alone; the closest, denoiser on gpu0 sequential bf16, is over device "
              "memory (peak 19.20 GiB, 16.00 GiB usable) by 3.20 GiB");
  }
  // Every stage fits alone but the host cannot hold both offloaded stages: 9 + 11 GiB of 16.
  Problem q = Machine(1, 16, 8, 16);
  AddStage(q, StageKind::kTextEncoder, {GiBOption("model", "bf16", 0, 10, 2, 9)});
  AddStage(q, StageKind::kDenoiser, {GiBOption("block:2", "bf16", 0, 6, 150, 11)});
  const Plan plan = Search(q, Objective::kLatency);
  EXPECT_FALSE(plan.feasible);
  EXPECT_NE(plan.infeasible_reason.find("no placement fits every stage at once"), std::string::npos);
  EXPECT_NE(plan.infeasible_reason.find("host0: host RAM 20.00 GiB exceeds 16.00 GiB usable by 4.00 GiB"),
            std::string::npos)
      << plan.infeasible_reason;
  // A stage no device has options for.
  Problem r = Machine(1, 16);
  AddStage(r, StageKind::kTextEncoder, {GiBOption("none", "bf16", 9, 10, 1)});
  AddStage(r, StageKind::kVaeDecoder, {});
  EXPECT_EQ(Search(r, Objective::kLatency).infeasible_reason, "vae_decoder: no device has an option for it");
}

TEST(PlannerSearch, ExplainNamesTheNumbers) {
  // gpu0 has 24 GiB and its host 12 GiB: the resident bf16 denoiser peaks at 27.2 GiB (3.20 GiB too many), model
  // offload keeps 13.1 GiB on the host (1.10 GiB too many); the fastest that fits is int8 at 180 s, and block
  // streaming fits but takes 41 s more.
  Problem p = Machine(1, 24, 8, 12);
  AddStage(p, StageKind::kDenoiser,
           {GiBOption("none", "bf16", 20, 27.2, 150), GiBOption("none", "int8", 10, 17, 180),
            GiBOption("block:4", "bf16", 0, 8, 221, 11), GiBOption("model", "bf16", 0, 17, 155, 13.1)});
  const Plan plan = Search(p, Objective::kLatency);
  ASSERT_TRUE(plan.feasible);
  ASSERT_EQ(plan.stages[0].replicas[0].option, 1);
  EXPECT_EQ(plan.rejected, (std::vector<std::string>{
                               "denoiser on gpu0 none bf16: does not fit device memory by 3.20 GiB",
                               "denoiser on gpu0 model bf16: does not fit host RAM by 1.10 GiB",
                               "denoiser on gpu0 block:4 bf16: 41.0 s slower",
                           }));
  // Throughput: two devices; the plan holds the denoiser on both, and says what a slower option would cost.
  Problem q = Machine(2, 24, 8, 64);
  AddStage(q, StageKind::kDenoiser,
           {GiBOption("none", "int8", 10, 17, 180), GiBOption("block:4", "bf16", 0, 8, 360, 11)});
  const Plan t = Search(q, Objective::kThroughput);
  ASSERT_TRUE(t.feasible);
  EXPECT_EQ(t.stages[0].replicas.size(), 2u);
  EXPECT_NEAR(t.jobs_per_hour, 40, 1e-9);
  // Block streaming on one of the two: 20 + 10 = 30 jobs/h.
  EXPECT_EQ(t.rejected, std::vector<std::string>{"denoiser on gpu0 block:4 bf16: 10 jobs/h fewer"});
}

TEST(PlannerSearch, BigIdenticalClustersAreSolvedExactlyAndFast) {
  // 64 identical devices in 8 hosts: everything fits everywhere, so every device holds every stage and the
  // stream runs at 64 devices / the 110 s a job takes.
  Problem p = Machine(64, 80, 8, 1024);
  AddStage(p, StageKind::kTextEncoder, {GiBOption("none", "bf16", 9, 10, 1), GiBOption("model", "bf16", 0, 10, 2, 9)},
           4 * kMiB);
  AddStage(p, StageKind::kDenoiser,
           {GiBOption("none", "bf16", 11, 16, 100), GiBOption("block:4", "bf16", 0, 7, 130, 11)}, kMiB);
  AddStage(p, StageKind::kVaeDecoder,
           {GiBOption("none", "bf16", 1, 26, 9), GiBOption("none+tiling=256", "bf16", 1, 6, 14)});
  const Plan t = Search(p, Objective::kThroughput);
  ASSERT_TRUE(t.feasible);
  EXPECT_TRUE(t.optimal);
  EXPECT_NEAR(t.jobs_per_hour, 64 * 3600.0 / 110, 1e-9);
  EXPECT_EQ(CheckPlan(p, t), std::vector<std::string>{});
  const Plan l = Search(p, Objective::kLatency);
  ASSERT_TRUE(l.feasible);
  EXPECT_TRUE(l.optimal);
  EXPECT_NEAR(l.latency_seconds, 110, 1e-9);  // all on one device: no transfers
}

TEST(PlannerSearch, BudgetGivesBestFoundNotOptimal) {
  // Two capacity classes make the relaxation loose, so the branching needs more than 50 nodes.
  Problem p = Machine(16, 24, 4, 256);
  for (int d = 8; d < 16; ++d) p.machine.devices[d].capacity_bytes = 48 * kGiB;
  AddStage(p, StageKind::kTextEncoder, {GiBOption("none", "bf16", 9, 10, 1), GiBOption("model", "bf16", 0, 10, 2, 9)});
  AddStage(p, StageKind::kDenoiser,
           {GiBOption("none", "bf16", 11, 16, 100), GiBOption("block:4", "bf16", 0, 7, 130, 11)});
  AddStage(p, StageKind::kVaeDecoder,
           {GiBOption("none", "bf16", 1, 26, 9), GiBOption("none+tiling=256", "bf16", 1, 6, 14)});
  for (int d = 8; d < 16; ++d)
    for (StageOptions& st : p.stages)
      for (Option& o : st.per_device[d]) o.seconds *= 0.6;
  SearchOptions tight;
  tight.max_nodes = 50;
  const Plan t = Search(p, Objective::kThroughput, tight);
  ASSERT_TRUE(t.feasible);
  EXPECT_FALSE(t.optimal);
  EXPECT_EQ(CheckPlan(p, t), std::vector<std::string>{});
  const Plan full = Search(p, Objective::kThroughput);
  EXPECT_GE(full.jobs_per_hour, t.jobs_per_hour * (1 - 1e-9));
}

TEST(PlannerSearch, SameInputSamePlan) {
  std::mt19937_64 rng(99);
  const Problem p = RandomProblem(rng, 6);
  for (Objective obj : {Objective::kLatency, Objective::kThroughput}) {
    const Plan a = Search(p, obj), b = Search(p, obj);
    ASSERT_EQ(a.stages.size(), b.stages.size());
    for (size_t s = 0; s < a.stages.size(); ++s) {
      ASSERT_EQ(a.stages[s].replicas.size(), b.stages[s].replicas.size());
      for (size_t i = 0; i < a.stages[s].replicas.size(); ++i) {
        EXPECT_EQ(a.stages[s].replicas[i].device, b.stages[s].replicas[i].device);
        EXPECT_EQ(a.stages[s].replicas[i].option, b.stages[s].replicas[i].option);
      }
    }
    EXPECT_EQ(a.rejected, b.rejected);
  }
}

TEST(PlannerSearch, MalformedProblemsAreRejectedByName) {
  Problem p = Machine(1, 16);
  AddStage(p, StageKind::kDenoiser, {GiBOption("none", "bf16", 9, 10, 0)});
  try {
    Search(p, Objective::kLatency);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("denoiser on gpu0 none bf16: seconds 0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace reel::planner
