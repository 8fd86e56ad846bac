// What a worker decides about its coordinator, as plain decisions over a plain struct: register until registered,
// heartbeat while registered, and once draining ask to leave until nothing runs on it and no job needs a tensor it
// holds. The control thread in worker.cc makes the calls and waits; tests drive these without a network, a thread
// or a clock (tests/worker_control_test.cc).
#pragma once

#include <string>

namespace reel::worker {

struct ControlState {
  std::string id;           // the id it is registered under; empty: not registered
  int interval_ms = 1000;   // between heartbeats (the coordinator says), or between tries to reach it
  bool warned = false;      // the coordinator being unreachable was logged (once until it answers)
  bool forgotten = false;   // the coordinator answered NOT_FOUND: it restarted or took this worker for lost
};

enum class Call {
  kRegister,    // RegisterRequest
  kHeartbeat,   // HeartbeatRequest
  kAskToLeave,  // LeaveRequest going=false: also its heartbeat while draining
  kWait,        // nothing to call: draining, not registered, its own calls still running
  kNone,        // drained: leave the loop (nothing needs it any more)
};

// What the control thread does next: `draining` once a stop signal came; `busy` its stage calls in progress.
Call NextCall(const ControlState& s, bool draining, int busy);

// How a call was answered.
enum class Reply {
  kOk,
  kNotFound,     // the coordinator does not know this worker's id
  kUnreachable,  // UNAVAILABLE or DEADLINE_EXCEEDED: away, or restarting
  kRefused,      // any other error (a name another live worker has, a bad address, a token refused)
};

// What to do about an answer, besides the state change.
struct Outcome {
  bool drop_tensors = false;  // before registering again: the stages its tensors came from run again elsewhere
  bool warn = false;          // log the coordinator unreachable (once)
  bool exit = false;          // registration refused: the worker stops with exit code 2
  std::string leave_id;       // tell the coordinator this id is going (LeaveRequest going=true), then stop
  bool drained = false;       // leave the loop: nothing needs this worker any more
  bool again_now = false;     // make the next call without waiting
  int wait_ms = 0;            // otherwise wait this long (or until the drain starts) before the next call
};

// Before a kRegister call: whether tensors of earlier runs are to be dropped first (then not again).
bool TakeForgotten(ControlState& s);
Outcome OnRegister(ControlState& s, Reply r, const std::string& id, int interval_ms);
Outcome OnHeartbeat(ControlState& s, Reply r);
// `running`, `needed`: what the coordinator says still runs on it and how many of its tensors jobs still need.
Outcome OnAskToLeave(ControlState& s, Reply r, int running, int needed, int busy);
// The wait after a call, while not draining or draining.
int WaitMs(const ControlState& s, bool draining);

}  // namespace reel::worker
