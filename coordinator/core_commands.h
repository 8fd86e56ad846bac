// What the coordinator core asks of the world: the output of a step. The gRPC adapter turns them into calls to
// workers, SQLite writes, metrics and logs; the simulator into simulated work.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "coordinator/cluster_state.h"

namespace reel::core {

namespace cmd {

// Run stage `stage_index` of a job on a worker (with a guidance peer when peer_id is set), its inputs read from
// where `inputs` say (an input still being produced names the producer's worker with the producer's attempt).
struct RunStage {
  std::string job_id;
  int stage_index = 0;
  StageKind kind = StageKind::kTextEncoder;
  uint64_t attempt = 0;
  std::string worker_id, address, worker;
  std::string peer_id, peer_address, peer;
  // A sequence-parallel denoise: the workers of ranks 1.. (this worker is rank 0 and drives them).
  struct Rank {
    std::string id, address, name;
  };
  std::vector<Rank> sequence;
  // With the guided batch split besides: ranks 1..'s unconditional halves (peer_* is rank 0's).
  std::vector<Rank> sequence_guidance;
  std::vector<TensorRef> inputs;
  std::vector<std::string> Workers() const {  // every worker it occupies
    std::vector<std::string> ids = {worker_id};
    if (!peer_id.empty()) ids.push_back(peer_id);
    for (const Rank& r : sequence) ids.push_back(r.id);
    for (const Rank& r : sequence_guidance) ids.push_back(r.id);
    return ids;
  }
};
struct CancelRun {
  uint64_t attempt = 0;
};
// Bring a worker to `want` (every served model has an entry, empty: none of it); `held` is what the core believes
// it holds, so what it holds and is not to hold is unloaded.
struct LoadWorker {
  std::string worker_id, address, name;
  Assignments want;
  std::set<std::pair<std::string, StageKind>> held;
};
struct ReleaseTensors {
  std::string job_id;
  std::set<std::string> addresses;
};
// Fetch the decoder's MP4 and keep it (the one thing the coordinator stores); answered by ev::OutputStored.
struct StoreOutput {
  std::string job_id;
  uint64_t attempt = 0;
  TensorRef video;
  int frames = 0;  // the decoder's, for the frames metric
};
struct CancelStore {
  std::string job_id;
};
// Write jobs to the durable store, in one transaction when several.
struct Persist {
  std::vector<Job> jobs;
};
// The job left memory (it ended long enough ago); the adapter drops what it keeps beside it.
struct Forget {
  std::string job_id;
};
// A worker the planner may use.
struct PlanWorker {
  std::string name, host, device;
  int64_t capacity_bytes = 0, host_memory_bytes = 0;
};
// Run the planner on these workers; answered by ev::Planned with the same generation.
struct Replan {
  uint64_t generation = 0;
  std::vector<PlanWorker> workers;
};
enum class MetricKind { kCount, kQueueWait, kJobSeconds, kStageSeconds, kDispatchSeconds, kFrames };
struct Metric {
  MetricKind kind = MetricKind::kCount;
  double value = 0;
  std::string label, label2;  // kCount: the event; kStageSeconds: stage and worker
};
enum class Level { kInfo, kWarn, kError };
struct Log {
  Level level = Level::kInfo;
  std::string text;
};
struct QueueDrained {};  // no job is live: memory may go back to the system

}  // namespace cmd

using Command = std::variant<cmd::RunStage, cmd::CancelRun, cmd::LoadWorker, cmd::ReleaseTensors, cmd::StoreOutput,
                             cmd::CancelStore, cmd::Persist, cmd::Forget, cmd::Replan, cmd::Metric, cmd::Log,
                             cmd::QueueDrained>;

}  // namespace reel::core
