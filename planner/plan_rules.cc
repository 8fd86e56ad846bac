// The memory, latency and throughput rules of search.h, applied to replicas per stage.
#include "planner/plan_rules.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "profiler/host_memory.h"

namespace reel::planner {
namespace {

int64_t Usable(int64_t capacity, double margin) {
  if (capacity <= 0) return kUnlimited;
  return static_cast<int64_t>(std::floor(static_cast<double>(capacity) * (1.0 - margin)));
}

void CheckBytes(const Rules& r, int s, int d, int o, const char* field, int64_t v) {
  if (v < 0)
    throw InvalidArgument(r.Describe(s, d, o) + ": " + field + " " + std::to_string(v) + ": accepted 0 or more bytes");
}

}  // namespace

Rules::Rules(const Problem& p) : problem(p) {
  num_stages = static_cast<int>(p.stages.size());
  num_devices = static_cast<int>(p.machine.devices.size());
  const double margin = p.machine.margin;
  if (!(margin >= 0 && margin < 1))
    throw InvalidArgument("machine margin " + std::to_string(margin) + ": accepted a fraction in [0, 1)");
  if (!(p.link_bytes_per_second > 0) || !(p.network_bytes_per_second > 0))
    throw InvalidArgument("link and network bytes per second must be > 0 (got " +
                          std::to_string(p.link_bytes_per_second) + ", " + std::to_string(p.network_bytes_per_second) +
                          ")");
  for (const Host& h : p.machine.hosts) {
    if (std::find(host_names.begin(), host_names.end(), h.name) != host_names.end()) continue;
    host_names.push_back(h.name);
    host_usable.push_back(Usable(h.ram_bytes, margin));
    pinned_budget.push_back(h.pinned_budget_bytes > 0 ? h.pinned_budget_bytes : kUnlimited);
  }
  for (const Device& d : p.machine.devices) {
    auto it = std::find(host_names.begin(), host_names.end(), d.host);
    if (it == host_names.end()) {  // a host nobody described: its RAM is not limited here
      host_names.push_back(d.host);
      host_usable.push_back(kUnlimited);
      pinned_budget.push_back(kUnlimited);
      it = host_names.end() - 1;
    }
    host_of.push_back(static_cast<int>(it - host_names.begin()));
    device_usable.push_back(Usable(d.capacity_bytes, margin));
  }
  num_hosts = static_cast<int>(host_names.size());
  for (int s = 0; s < num_stages; ++s) {
    const StageOptions& st = p.stages[s];
    if (static_cast<int>(st.per_device.size()) > num_devices)
      throw InvalidArgument(std::string(StageKindName(st.stage)) + ": options for " +
                            std::to_string(st.per_device.size()) + " devices: accepted at most the machine's " +
                            std::to_string(num_devices));
    if (st.output_bytes < 0)
      throw InvalidArgument(std::string(StageKindName(st.stage)) + ": output_bytes " + std::to_string(st.output_bytes) +
                            ": accepted 0 or more");
    for (int d = 0; d < static_cast<int>(st.per_device.size()); ++d)
      for (int o = 0; o < NumOptions(s, d); ++o) {
        const Option& op = Opt(s, d, o);
        if (!(op.seconds > 0) || !std::isfinite(op.seconds))
          throw InvalidArgument(Describe(s, d, o) + ": seconds " + std::to_string(op.seconds) +
                                ": accepted a finite number > 0");
        CheckBytes(*this, s, d, o, "resident_device_bytes", op.resident_device_bytes);
        CheckBytes(*this, s, d, o, "peak_device_bytes", op.peak_device_bytes);
        CheckBytes(*this, s, d, o, "host_bytes", op.host_bytes);
        CheckBytes(*this, s, d, o, "pinned_bytes", op.pinned_bytes);
        CheckBytes(*this, s, d, o, "run_host_bytes", op.run_host_bytes);
      }
  }
}

int Rules::NumOptions(int stage, int device) const {
  if (device < 0) return 0;
  const auto& pd = problem.stages[stage].per_device;
  return device < static_cast<int>(pd.size()) ? static_cast<int>(pd[device].size()) : 0;
}

const Option& Rules::Opt(int stage, int device, int option) const {
  return problem.stages[stage].per_device[device][option];
}

double Rules::TransferSeconds(int stage, int from, int to) const {
  if (from == to) return 0;
  const double bytes = static_cast<double>(problem.stages[stage].output_bytes);
  return host_of[from] == host_of[to] ? bytes / problem.link_bytes_per_second
                                      : bytes / problem.network_bytes_per_second;
}

std::string Rules::DeviceName(int device) const {
  const std::string& n = problem.machine.devices[device].name;
  return n.empty() ? "device " + std::to_string(device) : n;
}

std::string Rules::Describe(int stage, int device, int option) const {
  std::string s = std::string(StageKindName(problem.stages[stage].stage)) + " on " + DeviceName(device);
  if (option >= 0 && option < NumOptions(stage, device)) {
    const Option& o = Opt(stage, device, option);
    if (!o.strategy.empty()) s += " " + o.strategy;
    if (!o.dtype.empty()) s += " " + o.dtype;
  }
  return s;
}

std::vector<std::vector<Replica>> ReplicasOf(const Plan& plan) {
  std::vector<std::vector<Replica>> out;
  for (const StagePlan& sp : plan.stages) out.push_back(sp.replicas);
  return out;
}

int64_t RunExtra(const Option& o) { return std::max<int64_t>(0, o.peak_device_bytes - o.resident_device_bytes); }

void DeviceUse::Add(const Option& o) {
  resident += o.resident_device_bytes;
  max_extra = std::max(max_extra, RunExtra(o));
}

Score ScoreReplicas(const Rules& r, const std::vector<std::vector<Replica>>& replicas, Objective host_rule) {
  Score sc;
  std::vector<DeviceUse> dev(r.num_devices);
  std::vector<int64_t> hold(r.num_hosts, 0), run_max(r.num_hosts, 0), run_sum(r.num_hosts, 0);
  sc.pinned.assign(r.num_hosts, 0);
  const int stages = std::min<int>(r.num_stages, static_cast<int>(replicas.size()));
  for (int s = 0; s < stages; ++s)
    for (const Replica& rep : replicas[s]) {
      const Option& o = r.Opt(s, rep.device, rep.option);
      dev[rep.device].Add(o);
      const int h = r.host_of[rep.device];
      hold[h] += o.host_bytes;
      sc.pinned[h] += o.pinned_bytes;
      run_max[h] = std::max(run_max[h], o.run_host_bytes);
      run_sum[h] += o.run_host_bytes;
    }
  sc.device_peak.resize(r.num_devices);
  for (int d = 0; d < r.num_devices; ++d) {
    sc.device_peak[d] = dev[d].peak();
    sc.sum_device_peaks += sc.device_peak[d];
    if (sc.device_peak[d] > r.device_usable[d]) sc.fits = false;
  }
  sc.host_peak.resize(r.num_hosts);
  for (int h = 0; h < r.num_hosts; ++h) {
    sc.host_peak[h] = hold[h] + (host_rule == Objective::kLatency ? run_max[h] : run_sum[h]);
    if (sc.host_peak[h] > r.host_usable[h] || sc.pinned[h] > r.pinned_budget[h]) sc.fits = false;
  }

  // Latency: the fastest path through one replica per stage (the only path for a latency plan). A replica is
  // reached from the previous stage's replica on its own device (no transfer), on its host (the link) or on
  // another host (the network): the best of each, with the two best hosts kept so that "another host" is one.
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> best, next, at_device(r.num_devices, inf), at_host(r.num_hosts, inf);
  for (int s = 0; s < stages; ++s) {
    int host1 = -1;  // the hosts with the lowest and second-lowest arrival so far
    double best1 = inf, best2 = inf;
    if (s > 0) {
      for (size_t j = 0; j < replicas[s - 1].size(); ++j) {
        const int d = replicas[s - 1][j].device, h = r.host_of[d];
        at_device[d] = std::min(at_device[d], best[j]);
        at_host[h] = std::min(at_host[h], best[j]);
      }
      for (size_t j = 0; j < replicas[s - 1].size(); ++j) {
        const int h = r.host_of[replicas[s - 1][j].device];
        if (h == host1) continue;
        if (at_host[h] < best1)
          best2 = best1, best1 = at_host[h], host1 = h;
        else if (at_host[h] < best2)
          best2 = at_host[h];
      }
    }
    const double bytes = s > 0 ? static_cast<double>(r.problem.stages[s - 1].output_bytes) : 0;
    next.assign(replicas[s].size(), 0);
    for (size_t i = 0; i < replicas[s].size(); ++i) {
      const int d = replicas[s][i].device, h = r.host_of[d];
      double arrive = 0;
      if (s > 0) {
        arrive = std::min(at_device[d], at_host[h] + bytes / r.problem.link_bytes_per_second);
        arrive = std::min(arrive, (h == host1 ? best2 : best1) + bytes / r.problem.network_bytes_per_second);
      }
      next[i] = arrive + r.Opt(s, d, replicas[s][i].option).seconds;
    }
    if (s > 0)
      for (const Replica& rep : replicas[s - 1]) at_device[rep.device] = at_host[r.host_of[rep.device]] = inf;
    best.swap(next);
  }
  sc.latency_seconds = 0;
  if (stages > 0) {
    sc.latency_seconds = std::numeric_limits<double>::infinity();
    for (double b : best) sc.latency_seconds = std::min(sc.latency_seconds, b);
  }

  // Throughput: a stage's jobs split over its replicas in proportion to their speed, so each replica spends
  // 1 / (the stage's total rate) seconds per job on it.
  std::vector<double> load(r.num_devices, 0);
  for (int s = 0; s < stages; ++s) {
    double rate = 0;
    for (const Replica& rep : replicas[s]) rate += 1.0 / r.Opt(s, rep.device, rep.option).seconds;
    for (const Replica& rep : replicas[s]) load[rep.device] += 1.0 / rate;
  }
  sc.load_seconds = 0;
  for (double l : load) sc.load_seconds = std::max(sc.load_seconds, l);
  sc.jobs_per_hour = sc.load_seconds > 0 ? 3600.0 / sc.load_seconds : 0;
  return sc;
}

std::vector<Overflow> Overflows(const Rules& r, const Score& sc) {
  std::vector<Overflow> out;
  for (int d = 0; d < r.num_devices; ++d)
    if (sc.device_peak[d] > r.device_usable[d])
      out.push_back({Overflow::kDevice, d, sc.device_peak[d], r.device_usable[d]});
  for (int h = 0; h < r.num_hosts; ++h) {
    if (sc.host_peak[h] > r.host_usable[h]) out.push_back({Overflow::kHostRam, h, sc.host_peak[h], r.host_usable[h]});
    if (sc.pinned[h] > r.pinned_budget[h]) out.push_back({Overflow::kPinned, h, sc.pinned[h], r.pinned_budget[h]});
  }
  return out;
}

const char* OverflowWhat(Overflow::Kind kind) {
  switch (kind) {
    case Overflow::kDevice:
      return "device memory";
    case Overflow::kHostRam:
      return "host RAM";
    case Overflow::kPinned:
      return "the pinned-memory budget";
  }
  return "";
}

std::string DescribeOverflow(const Rules& r, const Overflow& o) {
  switch (o.kind) {
    case Overflow::kDevice:
      return r.DeviceName(o.index) + ": device memory peak " + FormatBytes(o.used) + " exceeds " +
             FormatBytes(o.usable) + " usable by " + FormatBytes(o.by());
    case Overflow::kHostRam:
      return r.host_names[o.index] + ": host RAM " + FormatBytes(o.used) + " exceeds " + FormatBytes(o.usable) +
             " usable by " + FormatBytes(o.by());
    case Overflow::kPinned:
      return r.host_names[o.index] + ": pinned memory " + FormatBytes(o.used) + " exceeds the pinned budget " +
             FormatBytes(o.usable) + " by " + FormatBytes(o.by());
  }
  return "";
}

double CostOf(const Score& s, Objective objective) {
  return objective == Objective::kLatency ? s.latency_seconds : s.load_seconds;
}

int CompareCost(double a, int64_t peaks_a, double b, int64_t peaks_b) {
  const double tol = kTieTolerance * std::max(std::fabs(a), std::fabs(b));
  if (a < b - tol) return -1;
  if (a > b + tol) return 1;
  return peaks_a < peaks_b ? -1 : peaks_a > peaks_b ? 1 : 0;
}

std::string FormatSeconds(double seconds) {
  char buf[48];
  std::snprintf(buf, sizeof buf, std::fabs(seconds) >= 1 ? "%.1f s" : "%.3g s", seconds);
  return buf;
}

std::string FormatJobsPerHour(double jobs) {
  char buf[48];
  std::snprintf(buf, sizeof buf, std::fabs(jobs) >= 10 ? "%.0f" : "%.3g", jobs);
  return buf;
}

}  // namespace reel::planner
