// The coordinator core's state as plain structs: jobs and their stage runs, workers and what they hold, runs in
// flight, tensors held. No gRPC, proto, clock or thread here: the core (coordinator_core.h) steps it, the gRPC
// adapter (coordinator.cc) and the simulator (sim/) read it.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "package/manifest.h"

namespace reel::core {

using Micros = int64_t;  // microseconds on the adapter's clock (wall-clock-like, never going back)

enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
enum class StageState { kPending, kRunning, kDone, kFailed, kCancelled, kSkipped };
enum class WorkerState { kLoading, kIdle, kBusy, kDraining, kFailed, kLost, kTuning };

const char* StageStateName(StageState s);    // pending | running | done | failed | cancelled | skipped
const char* WorkerStateName(WorkerState s);  // loading | idle | busy | draining | failed | lost | tuning
inline bool Terminal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

// How a worker holds a stage (the fields of reel.v1.StageStrategy, docs/MEMORY.md).
struct Strategy {
  std::string offload;  // none | model | block:K | sequential; empty: none
  std::string dtype;
  bool int8_weights = false;
  bool vae_slicing = false;
  int vae_tile = 0;
  std::string Describe() const;  // "none", "block:2,bf16,int8,slicing,tiling=256"
  bool operator==(const Strategy& o) const { return Describe() == o.Describe(); }
};

struct StageChoice {
  StageKind kind = StageKind::kDenoiser;
  Strategy strategy;
};
using Assignment = std::vector<StageChoice>;            // one model's stages on one worker
using Assignments = std::map<std::string, Assignment>;  // by model

// A job's shape: what the cost model prices and dispatch reads. The prompt and image stay with the adapter.
struct JobShape {
  std::string model;
  int frames = 0, height = 0, width = 0, steps = 0;
  double guidance = 1.0;
  // The job's objective: its own latency (its denoise may take several workers with sequence parallelism) rather
  // than the cluster's throughput (one worker, or two for a guided denoise's guidance split).
  bool latency = false;
  bool guided() const { return guidance > 1.0; }
};

// A tensor a stage produced, on the worker that ran it.
struct TensorRef {
  std::string name;     // text | image_moments | latents | video.mp4
  std::string worker;   // the worker's name
  std::string address;  // host:port
  int64_t bytes = 0;
  uint64_t attempt = 0;
};

struct StageRun {
  StageKind kind = StageKind::kTextEncoder;
  StageState state = StageState::kPending;
  std::string worker, guidance_peer;  // names
  std::vector<std::string> sequence_peers;  // names: ranks 1.. of a sequence-parallel denoise (worker is rank 0)
  // And with the guided batch split besides: the workers of ranks 1..'s unconditional halves (guidance_peer: rank 0's).
  std::vector<std::string> sequence_guidance_peers;
  uint64_t attempt = 0;               // which run: results of any other are ignored; 0 while pending
  Micros started = 0, finished = 0, accepted = 0;
  int step = 0, steps = 0;
  std::string error;
  // Whether it was sent before its inputs existed, and why, by the cost model (empty: no such choice was made).
  // Not persisted.
  std::string early_dispatch;
};

// Back to pending, as a stage that runs again (a requeue, a restart) starts.
inline void ResetStage(StageRun& s) {
  s.state = StageState::kPending;
  s.worker.clear();
  s.guidance_peer.clear();
  s.sequence_peers.clear();
  s.sequence_guidance_peers.clear();
  s.step = 0;
  s.started = s.finished = s.accepted = 0;
  s.attempt = 0;
  s.early_dispatch.clear();
}

struct Job {
  std::string id;
  std::string request_id;  // the client's, for idempotent submission (AIP-155); may be empty
  int64_t seq = 0;         // submission order: FIFO within a priority
  int priority = 0;
  JobShape shape;
  JobState state = JobState::kQueued;
  std::vector<StageRun> stages;
  Micros submitted = 0, started = 0, finished = 0;
  std::string error;
  int64_t output_bytes = 0;
  std::string output_path;
  int attempts = 0;
  // How the guided denoiser was dispatched and why: "early", "guidance_split", "single", with the estimate.
  std::string denoiser_dispatch;
  // Not persisted: where outputs live, when the last result came (dispatch latency), a change counter (watchers).
  std::map<std::string, TensorRef> outputs;
  // Every worker a stage of it was sent to: each may hold its tensors (an early-dispatched consumer can finish the
  // job before its producer's result reaches the coordinator), so each is told to release them when it ends.
  std::set<std::string> touched;  // addresses
  Micros result_at = 0;
  uint64_t version = 0;
};

struct Worker {
  std::string id, name, address, host, device;  // device: cpu | cuda:N
  int64_t capacity_bytes = 0, host_memory_bytes = 0;
  bool sequence_parallel = false;  // it can take a rank of a sequence-parallel denoise (built with c10d's Gloo)
  WorkerState state = WorkerState::kLoading;
  std::string job_id;                 // busy: the job it runs
  std::vector<std::string> described;  // "model/stage (strategy)" as it last reported
  int64_t device_used_bytes = 0, device_peak_bytes = 0, host_rss_bytes = 0;
  Micros last_heartbeat = 0;
  std::string error;
  int64_t stages_run = 0;
  std::set<std::pair<std::string, StageKind>> holds;  // (model, stage) it can run now
  Assignments target;   // what the plan (or placement file) gives it
  Assignments applied;  // what its last load asked for
  bool reload_pending = false;  // the plan changed while it was busy or loading
  bool load_in_flight = false;
  bool loaded_once = false;
  // A call to it failed as a call to a dead worker does: nothing is dispatched to it until it heartbeats again.
  bool suspect = false;
};

// A stage run in flight, from dispatch until its call ends (result, failure or cancellation).
struct Run {
  std::string job, worker_id, peer_id;
  int stage_index = 0;
  uint64_t attempt = 0;
  bool superseded = false;  // its job moved on: however it ends changes nothing but freeing its workers
  std::vector<std::string> sequence_ids;  // ranks 1.. of a sequence-parallel denoise, and their guidance peers
  // Every worker it occupies: its own, its guidance peer, its sequence-parallel ranks.
  std::vector<std::string> Workers() const {
    std::vector<std::string> ids = {worker_id};
    if (!peer_id.empty()) ids.push_back(peer_id);
    ids.insert(ids.end(), sequence_ids.begin(), sequence_ids.end());
    return ids;
  }
  bool Involves(const std::string& id) const {
    if (id.empty()) return false;
    for (const std::string& w : Workers())
      if (w == id) return true;
    return false;
  }
};

struct ModelInfo {
  std::vector<StageKind> stages;  // in pipeline order
  bool image_conditioned = false;
};

// The cost model's view of one stage of one job, for choices made at dispatch (0: unknown).
struct StageEstimate {
  double seconds = 0;        // on one worker
  double split_seconds = 0;  // guided denoising split across two workers (guidance-parallel), exchange included
  // The denoise on k = 2, 3, ... workers with sequence parallelism, exchanges included: sequence_seconds[k - 2]
  // (absent or 0: not possible at that degree).
  std::vector<double> sequence_seconds;
  // The same with the guided batch split besides (2k workers): sequence_split_seconds[k - 2].
  std::vector<double> sequence_split_seconds;
  std::string sequence_link;  // the link those are priced on, for the record ("host/gloo 0.92 GB/s (measured, 3 runs)")
};

}  // namespace reel::core
