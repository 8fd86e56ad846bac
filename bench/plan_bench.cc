// The placement search on synthetic clusters (docs/BENCHMARKS.md): 4 to 256 workers on hosts of 4 or 8 GPUs of
// 24, 48 and 80 GiB, CogVideoX-5B image-to-video at 49×480×720 with 50 steps (four stages, six options each, at
// magnitudes of published and measured figures); Search timed for both objectives, median of several runs.
// For throughput plans the budget cut short, the bound column is the most jobs/h the search's relaxation leaves
// possible (the plan is within `gap` of the optimum).
//   reel_plan_bench [RUNS] [MAX_NODES]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "planner/plan_rules.h"
#include "planner/search.h"
#include "planner/search_internal.h"
#include "tests/planner_util.h"

namespace {

using namespace reel::planner;
using reel::StageKind;

const double kGiB = static_cast<double>(reel::testing::kGiB);

struct GpuClass {
  const char* name;
  double capacity_gib;
  // Seconds relative to an 80 GiB H100-class card, per stage (text encoder, VAE encoder, denoiser, VAE decoder):
  // the smaller cards are slower, and not by the same factor at every stage.
  double slowdown[4];
  int per_host;
  double host_ram_gib;
};

const GpuClass kClasses[] = {
    {"24GiB", 24, {2.6, 2.4, 3.3, 2.9}, 4, 256},
    {"48GiB", 48, {1.7, 1.6, 1.8, 1.7}, 8, 512},
    {"80GiB", 80, {1, 1, 1, 1}, 8, 1024},
};

using reel::testing::GiBOption;

// Per stage, on an 80 GiB card. T5-XXL encoder 4.8B parameters (8.9 GiB in bf16); the VAE 0.2 GiB; the
// transformer 5.6B (10.4 GiB in bf16), 50 steps with guidance ≈ 180 s; the VAE decode of 13 latent frames peaks
// at ~26 GiB without slicing or tiling; decoded frames 0.19 GiB on the host.
std::vector<std::vector<Option>> StageOptionsAt80() {
  return {
      {GiBOption("none", "bf16", 8.9, 9.4, 0.25), GiBOption("none", "int8", 4.5, 5.2, 0.35),
       GiBOption("none", "f32", 17.8, 18.4, 0.6), GiBOption("model", "bf16", 0, 9.4, 0.65, 8.9, 8.9),
       GiBOption("block:4", "bf16", 0, 1.9, 0.9, 8.9, 8.9), GiBOption("sequential", "bf16", 0, 0.6, 1.8, 8.9, 0)},
      {GiBOption("none", "bf16", 0.2, 3.0, 0.4), GiBOption("none", "int8", 0.1, 3.0, 0.45),
       GiBOption("none", "f32", 0.4, 5.5, 0.8), GiBOption("model", "bf16", 0, 3.0, 0.45, 0.2, 0.2),
       GiBOption("none+tiling=256", "bf16", 0.2, 1.2, 0.7), GiBOption("sequential", "bf16", 0, 1.0, 1.5, 0.2, 0)},
      {GiBOption("none", "bf16", 10.4, 15.8, 180), GiBOption("none", "int8", 5.3, 10.9, 200),
       GiBOption("none", "f32", 20.8, 31, 520), GiBOption("model", "bf16", 0, 15.8, 182, 10.4, 10.4),
       GiBOption("block:4", "bf16", 0, 7.2, 215, 10.4, 10.4), GiBOption("sequential", "bf16", 0, 5.8, 420, 10.4, 0)},
      {GiBOption("none", "bf16", 0.2, 26, 18, 0, 0, 0.19), GiBOption("none+slicing", "bf16", 0.2, 14, 20, 0, 0, 0.19),
       GiBOption("none+tiling=256", "bf16", 0.2, 5.5, 26, 0, 0, 0.19),
       GiBOption("model+tiling=256", "bf16", 0, 5.5, 26.1, 0.2, 0.2, 0.19),
       GiBOption("none", "f32", 0.4, 45, 40, 0, 0, 0.19),
       GiBOption("sequential+tiling=256", "bf16", 0, 4.0, 60, 0.2, 0, 0.19)},
  };
}

// `workers` GPUs: hosts of 4 × 24 GiB, 8 × 48 GiB and 8 × 80 GiB in turn (the last host may be partial).
Problem Cluster(int workers) {
  Problem p;
  p.link_bytes_per_second = 25e9;
  p.network_bytes_per_second = 12.5e9;
  const StageKind kinds[] = {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser,
                             StageKind::kVaeDecoder};
  const int64_t outputs[] = {2 * 226 * 4096 * 2, 60 * 90 * 16 * 2, 13 * 60 * 90 * 16 * 2, 0};
  for (int s = 0; s < 4; ++s) p.stages.push_back({kinds[s], {}, outputs[s]});
  const auto base = StageOptionsAt80();
  for (int h = 0; static_cast<int>(p.machine.devices.size()) < workers; ++h) {
    const GpuClass& c = kClasses[h % 3];
    const std::string host = "host" + std::to_string(h);
    p.machine.hosts.push_back(
        {host, static_cast<int64_t>(c.host_ram_gib * kGiB), static_cast<int64_t>(c.host_ram_gib * kGiB / 2)});
    for (int i = 0; i < c.per_host && static_cast<int>(p.machine.devices.size()) < workers; ++i) {
      Device d;
      d.name = "gpu" + std::to_string(p.machine.devices.size());
      d.host = host;
      d.capacity_bytes = static_cast<int64_t>(c.capacity_gib * kGiB);
      p.machine.devices.push_back(d);
      for (int s = 0; s < 4; ++s) {
        std::vector<Option> opts = base[s];
        for (Option& o : opts) o.seconds *= c.slowdown[s];
        p.stages[s].per_device.push_back(opts);
      }
    }
  }
  return p;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  SearchOptions opts;
  if (argc > 2) opts.max_nodes = std::atoll(argv[2]);
  std::printf("max_nodes %lld, median of %d runs\n\n", static_cast<long long>(opts.max_nodes), runs);
  std::printf("| workers | hosts | objective | median ms | min ms | max ms | result | optimal | bound | gap |\n");
  std::printf("|---:|---:|---|---:|---:|---:|---|---|---|---:|\n");
  for (int workers : {4, 16, 64, 256}) {
    const Problem p = Cluster(workers);
    for (Objective obj : {Objective::kLatency, Objective::kThroughput}) {
      std::vector<double> ms;
      Plan plan;
      for (int i = 0; i < runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        plan = Search(p, obj, opts);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      const std::vector<std::string> errors = CheckPlan(p, plan);
      char result[96];
      if (!plan.feasible)
        std::snprintf(result, sizeof result, "infeasible");
      else if (obj == Objective::kLatency)
        std::snprintf(result, sizeof result, "%.1f s", plan.latency_seconds);
      else
        std::snprintf(result, sizeof result, "%.1f jobs/h", plan.jobs_per_hour);
      char bound[48] = "", gap[48] = "";
      if (plan.feasible && obj == Objective::kThroughput && !plan.optimal) {
        const Rules rules(p);
        const double b = internal::ThroughputBound(rules, internal::FindGroups(rules), plan.jobs_per_hour);
        std::snprintf(bound, sizeof bound, "%.1f jobs/h", b);
        std::snprintf(gap, sizeof gap, "%.2f%%", 100 * (b - plan.jobs_per_hour) / b);
      }
      std::printf("| %d | %zu | %s | %.1f | %.1f | %.1f | %s%s | %s | %s | %s |\n", workers, p.machine.hosts.size(),
                  obj == Objective::kLatency ? "latency" : "throughput", Median(ms),
                  *std::min_element(ms.begin(), ms.end()), *std::max_element(ms.begin(), ms.end()), result,
                  errors.empty() ? "" : " (INVALID)", plan.optimal ? "yes" : "no (budget)", bound, gap);
      std::fflush(stdout);
    }
  }
  return 0;
}
