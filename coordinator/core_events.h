// What happens to a coordinator, as the core's input: timestamped events from clients, workers, calls in flight
// and the clock (Tick). The gRPC adapter turns RPCs and call endings into these; the simulator makes them up.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "coordinator/cluster_state.h"

namespace reel::core {

namespace ev {

// A client's job, already validated against its model (job_validation.h).
struct Submit {
  JobShape shape;
  int priority = 0;
  std::string request_id;  // empty: not idempotent
  bool stored = false;     // the adapter stored Preview's job already (it refuses the call when it cannot)
};
struct Cancel {
  std::string job_id;
};

struct Register {
  std::string name, address, host, device;
  int64_t capacity_bytes = 0, host_memory_bytes = 0;
  bool sequence_parallel = false;  // it can take a rank of a sequence-parallel denoise
  // The id of the live entry of this name at another address that the adapter found not answering: a worker
  // started again elsewhere before its old lease ran out. Empty: none, or it answered.
  std::string silent_id;
  // Without a planner: its stages from the placement file, or every stage (the adapter reads the file).
  Assignments static_target;
};
struct Heartbeat {
  std::string worker_id;
  int64_t device_used_bytes = 0, device_peak_bytes = 0, host_rss_bytes = 0;
};
struct Leave {
  std::string worker_id;
  bool going = false;  // false: draining, what keeps it?; true: it exits now
};
// A load (LoadWorker command) ended: what it holds now, or why it failed.
struct Loaded {
  std::string worker_id;
  bool reported = false;  // the worker answered with what it holds (holds/described are that)
  std::set<std::pair<std::string, StageKind>> holds;
  std::vector<std::string> described;
  Assignments applied;  // what the load asked for (LoadWorker.want)
  std::set<std::pair<std::string, StageKind>> held;  // what the core believed it held (LoadWorker.held)
  std::string error;
};

struct StageProgress {
  uint64_t attempt = 0;
  int step = 0, steps = 0;
};
struct StageResult {
  uint64_t attempt = 0;
  std::vector<std::pair<std::string, int64_t>> outputs;  // tensor name, bytes
  Micros accepted = 0, started = 0, finished = 0;        // on the worker's clock
  int frames = 0;
  std::vector<std::string> reloaded;  // non-empty: the worker changed strategies (out of memory), what it holds now
};
enum class Failure { kUnavailable, kOther };
// A run's call ended without a result: unreachable (the worker, a producer it fetched from or its peer is gone),
// cancelled (by the core: its run is superseded), or failed (out of memory past retries, bad input).
struct StageFailed {
  uint64_t attempt = 0;
  Failure failure = Failure::kOther;
  std::string message;
};
// A worker ran out of device memory and learned a profile: the plan may change.
struct ProfilesChanged {};

// The decoder's MP4 fetched and stored by the adapter (StoreOutput command), or not: kUnavailable when the
// decoder's worker could not give it (gone, or restarted without it; the decoder then runs again elsewhere), kOther
// when the coordinator could not keep it (its disk; the job fails).
struct OutputStored {
  std::string job_id;
  uint64_t attempt = 0;
  std::string path, error;  // error empty: stored at path
  int64_t bytes = 0;
  int frames = 0;
  Failure failure = Failure::kOther;  // with error: why
};

// The planner's answer to a Replan command.
struct Planned {
  uint64_t generation = 0;
  std::map<std::string, Assignments> workers;  // by worker name
  std::vector<std::string> notes;
};

struct TuneBegin {
  std::vector<std::string> names;  // empty: every idle worker
};
struct TuneEnd {
  std::vector<std::string> worker_ids;
  bool last = false;  // the whole tuning call ended: plan again
};

struct Tick {};        // time passed: leases, the settled re-plan
struct Drain {};       // SIGTERM: accept and start nothing new
struct Shutdown {};    // stop: running jobs go back to the queue

}  // namespace ev

using Event = std::variant<ev::Submit, ev::Cancel, ev::Register, ev::Heartbeat, ev::Leave, ev::Loaded,
                           ev::StageProgress, ev::StageResult, ev::StageFailed, ev::ProfilesChanged, ev::OutputStored,
                           ev::Planned, ev::TuneBegin, ev::TuneEnd, ev::Tick, ev::Drain, ev::Shutdown>;

// The answer a request event gets back (the gRPC adapter maps the code to a status).
enum class Code { kOk, kInvalidArgument, kNotFound, kAlreadyExists, kFailedPrecondition, kUnavailable, kResourceExhausted };

struct Reply {
  Code code = Code::kOk;
  std::string message;
  std::string id;  // Submit: the job; Register: the worker
  bool existing = false;  // Submit: the request id named a job accepted earlier
  int stages_running = 0, tensors_needed = 0;  // Leave
  std::vector<std::pair<std::string, std::string>> chosen;  // TuneBegin: worker id, address
};

inline Reply Refusal(Code code, std::string message) {
  Reply r;
  r.code = code;
  r.message = std::move(message);
  return r;
}

}  // namespace reel::core
