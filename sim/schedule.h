// A simulated history: the cluster (workers and their memory and speed), the jobs clients submit and the faults
// injected, all drawn from one seed. A schedule is plain data, so a failing one is shrunk by dropping parts of it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace reel::sim {

struct WorkerSpec {
  std::string name, host;
  int64_t capacity_bytes = 0;
  double speed = 1.0;  // stage seconds are divided by it (GPU class)
};

struct JobSpec {
  double at = 0;  // seconds of simulated time
  std::string model;  // "t2v" (text, denoiser, decoder) or "i2v" (with the VAE encoder)
  int priority = 0;
  double guidance = 1.0;
  int frames = 9, steps = 8;
  std::string request_id;
  bool latency = false;  // submitted with the latency objective (its denoise may run sequence-parallel)
};

enum class FaultKind {
  kCrash,             // the worker's process dies; it is started again `duration` later (new address)
  kHang,              // SIGSTOP for `duration`, then SIGCONT
  kSlow,              // its stages take `factor` times as long from now on
  kOom,               // its next stage runs out of device memory
  kDropHeartbeats,    // its heartbeats are lost for `duration`
  kDuplicateResult,   // its next stage result arrives twice
  kLateResult,        // its next stage result arrives `duration` late
  kLoseResult,        // its next stage result is lost (the call breaks after the work)
  kPartition,         // it and worker `other` cannot reach each other for `duration`
  kCoordinatorCrash,  // the coordinator dies; it starts again from its store `duration` later
  kDropReply,         // the reply to the next submission is lost (the client retries with its request id)
};
const char* FaultName(FaultKind k);

struct Fault {
  double at = 0;
  FaultKind kind = FaultKind::kCrash;
  int worker = 0, other = 0;
  double duration = 0, factor = 1;
};

struct Schedule {
  uint64_t seed = 0;
  std::vector<WorkerSpec> workers;
  std::vector<JobSpec> jobs;
  std::vector<Fault> faults;
  bool guidance_parallel = true;
  bool everywhere = false;  // every worker holds every stage (the baseline policy), instead of the split plan
  // The bug fixes the simulator proved, reverted (to show it finds them).
  bool revert_register_holds = false;
  bool revert_split_choice = false;
};

// A random schedule: 1 to 5 workers, up to 12 jobs, up to 6 faults, in the first minute.
Schedule RandomSchedule(uint64_t seed);

std::string Describe(const Schedule& s);  // one line per part, for a failing seed's report

}  // namespace reel::sim
