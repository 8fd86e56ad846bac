// The rules every plan is held to — device and host memory, latency, throughput — in one place, so the searches,
// the exhaustive reference, CheckPlan and the explanations price a plan the same way (semantics in search.h).
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "planner/problem.h"

namespace reel::planner {

inline constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// The problem with names resolved and capacities reduced by the margin. Throws InvalidArgument on a malformed
// problem (more per-device option lists than devices, a margin outside [0, 1), non-positive or non-finite seconds,
// negative byte counts), naming the field and the value.
struct Rules {
  explicit Rules(const Problem& problem);

  const Problem& problem;
  int num_stages = 0;
  int num_devices = 0;
  int num_hosts = 0;         // described hosts first, then one per host name no Host describes
  std::vector<int> host_of;  // device -> host index
  std::vector<std::string> host_names;
  std::vector<int64_t> device_usable;  // capacity × (1 − margin); kUnlimited for capacity 0
  std::vector<int64_t> host_usable;    // RAM × (1 − margin); kUnlimited for RAM 0 or an undescribed host
  std::vector<int64_t> pinned_budget;  // kUnlimited when the host sets none

  int NumOptions(int stage, int device) const;
  const Option& Opt(int stage, int device, int option) const;
  // Seconds to hand stage `stage`'s output from device `from` to device `to` (0 on the same device).
  double TransferSeconds(int stage, int from, int to) const;
  std::string DeviceName(int device) const;  // the device's name, else "device N"
  // "denoiser on gpu0 none bf16"
  std::string Describe(int stage, int device, int option) const;
};

// Device memory while stage (resident, extra) sets share a device: their resident bytes add up and the largest
// run extra (peak − resident) comes on top, since a worker runs one stage at a time.
struct DeviceUse {
  int64_t resident = 0;
  int64_t max_extra = 0;
  int64_t peak() const { return resident + max_extra; }
  void Add(const Option& o);
};
int64_t RunExtra(const Option& o);  // peak − resident, at least 0

// What one plan needs and achieves.
struct Score {
  std::vector<int64_t> device_peak;  // per device
  std::vector<int64_t> host_peak;    // per host index (Rules), at the worst phase or all stages at once
  std::vector<int64_t> pinned;       // per host index
  int64_t sum_device_peaks = 0;
  double latency_seconds = 0;  // the fastest path through the replicas, transfers included
  double load_seconds = 0;     // the busiest device's seconds per job in a stream (1 / throughput)
  double jobs_per_hour = 0;
  bool fits = true;  // every device, host RAM and pinned limit respected
};

// A plan's replicas per stage.
std::vector<std::vector<Replica>> ReplicasOf(const Plan& plan);

// Scores replicas per stage (indices must be valid: CheckPlan reports the others). `host_rule` picks how run-time
// host bytes count: one stage at a time (latency) or all at once (throughput).
Score ScoreReplicas(const Rules& rules, const std::vector<std::vector<Replica>>& replicas, Objective host_rule);

// One exceeded limit.
struct Overflow {
  enum Kind { kDevice, kHostRam, kPinned } kind = kDevice;
  int index = 0;  // device or host index
  int64_t used = 0;
  int64_t usable = 0;
  int64_t by() const { return used - usable; }
};
std::vector<Overflow> Overflows(const Rules& rules, const Score& score);
// "gpu0: device memory peak 25.10 GiB exceeds 21.60 GiB usable by 3.50 GiB"
std::string DescribeOverflow(const Rules& rules, const Overflow& o);
// "device memory", "host RAM", "the pinned-memory budget" (what a deficit is of)
const char* OverflowWhat(Overflow::Kind kind);

// Cost to minimise: latency seconds, or the busiest device's seconds per job (throughput). Costs within this
// relative tolerance are ties, broken by the sum of device peaks: floating-point sums in different orders must
// not decide between plans of equal worth.
inline constexpr double kTieTolerance = 1e-9;
double CostOf(const Score& s, Objective objective);
// -1: a is better, 1: b is better, 0: a tie on cost and on the sum of device peaks.
int CompareCost(double cost_a, int64_t peaks_a, double cost_b, int64_t peaks_b);

std::string FormatSeconds(double seconds);   // "41.0 s", "0.25 s", "0.000148 s"
std::string FormatJobsPerHour(double jobs);  // "120", "4.25", "0.0031"

}  // namespace reel::planner
