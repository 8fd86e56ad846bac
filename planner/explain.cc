// Why the search chose what it chose: the alternatives it rejected with the limit each breaks or what it costs,
// and when nothing fits, how far the problem is from fitting.
#include <algorithm>
#include <cmath>
#include <set>

#include "planner/search_internal.h"
#include "profiler/host_memory.h"

namespace reel::planner::internal {
namespace {

// The overflow to name for an alternative on `device`: that device's, else its host's, else the largest.
const Overflow* Worst(const std::vector<Overflow>& over, const Rules& r, int device) {
  const Overflow* worst = nullptr;
  int worst_rank = 3;
  for (const Overflow& o : over) {
    const int rank = o.kind == Overflow::kDevice ? (o.index == device ? 0 : 2) : (o.index == r.host_of[device] ? 1 : 2);
    if (!worst || rank < worst_rank || (rank == worst_rank && o.by() > worst->by())) {
      worst = &o;
      worst_rank = rank;
    }
  }
  return worst;
}

}  // namespace

void ExplainRejected(const Rules& r, const Groups& groups, Plan& plan, int per_stage) {
  if (!plan.feasible || per_stage <= 0) return;
  const std::vector<std::vector<Replica>> chosen = ReplicasOf(plan);
  const Score base = ScoreReplicas(r, chosen, plan.objective);
  const bool latency = plan.objective == Objective::kLatency;
  for (int s = 0; s < r.num_stages; ++s) {
    struct Alt {
      double seconds;
      int device, option;
      std::string text, key;
    };
    std::vector<Alt> alts;
    // Devices of one class on one host holding the same stages fare the same: each is tried once.
    std::set<std::vector<int>> tried;
    for (int d = 0; d < r.num_devices; ++d) {
      std::vector<int> key = {groups.device_class[d], r.host_of[d]};
      for (int t = 0; t < r.num_stages; ++t) {
        int on = -1;
        for (const Replica& rep : chosen[t])
          if (rep.device == d) on = rep.option;
        key.push_back(on);
      }
      if (!tried.insert(key).second) continue;
      const int held = key[2 + s];  // the option stage s has on d in the plan
      for (int o = 0; o < r.NumOptions(s, d); ++o) {
        if (o == held) continue;
        std::vector<std::vector<Replica>> alt = chosen;
        std::string label = r.Describe(s, d, o);
        if (latency) {
          alt[s] = {{d, o}};
        } else if (held >= 0) {
          for (Replica& rep : alt[s])
            if (rep.device == d) rep.option = o;
        } else {
          alt[s].push_back({d, o});
          label = std::string(StageKindName(r.problem.stages[s].stage)) + " also" + label.substr(label.find(" on "));
        }
        const Score sc = ScoreReplicas(r, alt, plan.objective);
        std::string why;
        if (!sc.fits) {
          const std::vector<Overflow> over = Overflows(r, sc);
          const Overflow* w = Worst(over, r, d);
          why = std::string("does not fit ") + OverflowWhat(w->kind) + " by " + FormatBytes(w->by());
        } else {
          const double delta = latency ? sc.latency_seconds - base.latency_seconds
                                       : base.jobs_per_hour - sc.jobs_per_hour;  // > 0: worse
          const double scale = latency ? base.latency_seconds : base.jobs_per_hour;
          if (std::fabs(delta) > kTieTolerance * scale) {
            why = latency ? FormatSeconds(std::fabs(delta)) + (delta > 0 ? " slower" : " faster")
                          : FormatJobsPerHour(std::fabs(delta)) + (delta > 0 ? " jobs/h fewer" : " jobs/h more");
            if (delta < 0) why += " (not reached within the search budget)";
          } else if (sc.sum_device_peaks == base.sum_device_peaks) {
            continue;  // the same plan but for which of interchangeable devices holds what: nothing to explain
          } else {
            why = latency ? "as fast" : "no more jobs/h";
            why += sc.sum_device_peaks > base.sum_device_peaks
                       ? ", " + FormatBytes(sc.sum_device_peaks - base.sum_device_peaks) + " more device memory"
                       : ", " + FormatBytes(base.sum_device_peaks - sc.sum_device_peaks) +
                             " less device memory (not reached within the search budget)";
          }
        }
        const Option& op = r.Opt(s, d, o);
        alts.push_back({op.seconds, d, o, label + ": " + why,
                        (held >= 0 || latency ? "" : "also ") + op.strategy + " " + op.dtype + ": " + why});
      }
    }
    // The most tempting alternatives first: the fastest; one line per distinct option and outcome, so eight
    // identical devices say it once.
    std::stable_sort(alts.begin(), alts.end(), [](const Alt& a, const Alt& b) { return a.seconds < b.seconds; });
    std::set<std::string> said;
    int n = 0;
    for (const Alt& a : alts) {
      if (n >= per_stage) break;
      if (!said.insert(a.key).second) continue;
      plan.rejected.push_back(a.text);
      ++n;
    }
  }
}

std::string InfeasibleReason(const Rules& r, const Groups& groups, Objective objective, Budget& budget) {
  std::vector<std::string> parts;
  bool each_fits_alone = true;
  for (int s = 0; s < r.num_stages; ++s) {
    const std::string stage = StageKindName(r.problem.stages[s].stage);
    bool any = false, fits = false;
    int64_t best_by = 0;
    std::string best;
    for (int d = 0; d < r.num_devices && !fits; ++d)
      for (int o = 0; o < r.NumOptions(s, d) && !fits; ++o) {
        any = true;
        const Option& op = r.Opt(s, d, o);
        const int h = r.host_of[d];
        // The deficits of this option alone on an empty device and host.
        struct Deficit {
          int64_t by;
          std::string what;
        };
        const Deficit ds[] = {
            {r.device_usable[d] == kUnlimited ? 0 : op.peak_device_bytes - r.device_usable[d],
             "device memory (peak " + FormatBytes(op.peak_device_bytes) + ", " + FormatBytes(r.device_usable[d]) +
                 " usable)"},
            {r.host_usable[h] == kUnlimited ? 0 : op.host_bytes + op.run_host_bytes - r.host_usable[h],
             "host RAM (" + FormatBytes(op.host_bytes + op.run_host_bytes) + ", " + FormatBytes(r.host_usable[h]) +
                 " usable on " + r.host_names[h] + ")"},
            {r.pinned_budget[h] == kUnlimited ? 0 : op.pinned_bytes - r.pinned_budget[h],
             "the pinned-memory budget (" + FormatBytes(op.pinned_bytes) + ", budget " +
                 FormatBytes(r.pinned_budget[h]) + ")"},
        };
        const Deficit* worst = &ds[0];
        for (const Deficit& x : ds)
          if (x.by > worst->by) worst = &x;
        if (worst->by <= 0) {
          fits = true;
          break;
        }
        if (best.empty() || worst->by < best_by) {
          best_by = worst->by;
          best = r.Describe(s, d, o) + ", is over " + worst->what + " by " + FormatBytes(worst->by);
        }
      }
    if (!any) {
      parts.push_back(stage + ": no device has an option for it");
      each_fits_alone = false;
    } else if (!fits) {
      parts.push_back(stage + " fits no device even alone; the closest, " + best);
      each_fits_alone = false;
    }
  }
  if (!each_fits_alone) {
    std::string out;
    for (const std::string& p : parts) out += (out.empty() ? "" : "; ") + p;
    return out;
  }
  // Each stage fits somewhere alone but not all together: the plan nearest to fitting, and what it lacks.
  const TreeResult t = StageTree(r, groups, objective, TreeGoal::kLeastOverflow, budget);
  std::string out = "no placement fits every stage at once";
  if (!t.found) return out + " (the search budget ran out before the closest plan was found)";
  std::vector<std::vector<Replica>> replicas;
  std::string placed;
  for (int s = 0; s < r.num_stages; ++s) {
    replicas.push_back({t.choice[s]});
    placed += (s ? ", " : "") + r.Describe(s, t.choice[s].device, t.choice[s].option);
  }
  const Score sc = ScoreReplicas(r, replicas, objective);
  out += "; the closest (" + placed + ") lacks: ";
  bool first = true;
  for (const Overflow& o : Overflows(r, sc)) {
    out += (first ? "" : "; ") + DescribeOverflow(r, o);
    first = false;
  }
  return out;
}

}  // namespace reel::planner::internal
