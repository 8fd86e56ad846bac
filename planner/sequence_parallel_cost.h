// The price of one job's denoise on k devices with Ulysses sequence parallelism (runtime/sequence_parallel.h):
// each device computes its share of the video tokens and every text token, and per block sends q, k, v and the
// attention output through all-to-alls. An estimate from the package's shapes and the link's figures; torch-free.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "planner/cost_model.h"
#include "planner/problem.h"
#include "profiler/profile_store.h"

namespace reel::planner {

// The devices' interconnect as one device sees it during an all-to-all.
struct Link {
  std::string name;               // "nvlink", "pcie", "loopback"; measured: "host/gloo", "host/nccl", ...
  double bytes_per_second = 0;    // what one device sends per second while all send at once
  double latency_seconds = 0;     // per collective
  int measured_runs = 0;          // 0: an estimate; else the median of this many measured runs
  // "loopback 1.50 GB/s (an estimate)", "host/gloo 0.92 GB/s (measured, 3 runs)".
  std::string Describe() const;
};
// Figures per link kind ("nvlink": H100 SXM NVLink 4, "pcie": PCIe 4.0 x16 through the host, "loopback": Gloo over
// TCP between processes on one host, as measured by bench/sequence_parallel.sh); sources in docs/SEQUENCE_PARALLEL.md.
Link DefaultLink(const std::string& kind);

// What a link is called where it was measured: ranks on one host or several, and the c10d backend ("host/gloo").
std::string LinkName(bool one_host, const std::string& backend);
// The link as measured (the profiles of one link name, newest first): the median rate of the newest five, whose
// time includes each collective's latency (so none is added); `fallback` when there are none.
Link MeasuredLink(const std::vector<LinkProfile>& measured, const Link& fallback);
// The link between devices of `device_kind` on one host: measured ("host/nccl" for cuda, "host/gloo" otherwise)
// where `measured` has it, else the estimate (DefaultLink "pcie" for cuda, "loopback" otherwise).
Link HostLink(const std::string& device_kind, const std::vector<LinkProfile>& measured);

struct SequenceParallelPrice {
  int degree = 1;                  // devices sharing the sequence
  bool guidance_split = false;     // and the guided batch split in two besides (2 × degree devices)
  double compute_seconds = 0;      // one job's denoise compute on the busiest device
  double comm_seconds = 0;         // one job's all-to-alls and the guidance exchange
  int64_t bytes_sent = 0;          // per device, one job
  double single_seconds = 0;       // the same job on one device
  double seconds() const { return compute_seconds + comm_seconds; }
  double speedup() const { return seconds() > 0 ? single_seconds / seconds() : 1.0; }
  int devices() const { return degree * (guidance_split ? 2 : 1); }
};

// `dtype` the denoiser's compute dtype ("f32", "bf16", "f16"). Throws InvalidArgument for a degree below 1 or above
// the denoiser's head count.
SequenceParallelPrice PriceSequenceParallel(const CostModel& model, const Device& device, const Job& job,
                                            const std::string& dtype, int degree, bool guidance_split,
                                            const Link& link);

// The choice of degree for one job's denoise on up to `devices` devices like `device` (reel plan --explain and the
// coordinator's PlanJob): every degree the devices allow, alone and with the guided batch split besides, priced as
// above; the objective's choice ("chosen", the index into "choices") and why each other choice lost ("why"). The
// latency objective takes the fastest; the throughput objective the most jobs per hour from the devices, where
// degree 1 is pipelining (each device its own job) and a degree of k serves devices / k jobs at a time.
nlohmann::json ChooseSequenceDegree(const CostModel& model, const Device& device, const Job& job,
                                    const std::string& dtype, int devices, const Link& link, Objective objective);

}  // namespace reel::planner
