// Planning problems written by hand, for the planner's tests and benchmark: options in GiB and seconds.
#pragma once

#include <cstdint>
#include <string>

#include "planner/problem.h"

namespace reel::testing {

inline constexpr int64_t kGiB = int64_t{1} << 30;

inline planner::Option GiBOption(const std::string& strategy, const std::string& dtype, double resident_gib,
                                 double peak_gib, double seconds, double host_gib = 0, double pinned_gib = 0,
                                 double run_host_gib = 0) {
  auto bytes = [](double gib) { return static_cast<int64_t>(gib * static_cast<double>(kGiB)); };
  planner::Option o;
  o.strategy = strategy;
  o.dtype = dtype;
  o.resident_device_bytes = bytes(resident_gib);
  o.peak_device_bytes = bytes(peak_gib);
  o.host_bytes = bytes(host_gib);
  o.pinned_bytes = bytes(pinned_gib);
  o.run_host_bytes = bytes(run_host_gib);
  o.seconds = seconds;
  return o;
}

}  // namespace reel::testing
