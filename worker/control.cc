#include "worker/control.h"

namespace reel::worker {

Call NextCall(const ControlState& s, bool draining, int busy) {
  // Draining while not registered (the coordinator is away or forgot it): nothing new reaches it and nothing it
  // holds is waited for, so it goes once its own calls are done.
  if (draining && s.id.empty()) return busy == 0 ? Call::kNone : Call::kWait;
  if (draining) return Call::kAskToLeave;
  return s.id.empty() ? Call::kRegister : Call::kHeartbeat;
}

int WaitMs(const ControlState& s, bool draining) { return draining ? 100 : s.interval_ms; }

bool TakeForgotten(ControlState& s) {
  const bool was = s.forgotten;
  s.forgotten = false;
  return was;
}

Outcome OnRegister(ControlState& s, Reply r, const std::string& id, int interval_ms) {
  Outcome o;
  switch (r) {
    case Reply::kOk:
      s.id = id;
      s.interval_ms = interval_ms > 0 ? interval_ms : 1000;
      s.warned = false;
      break;
    case Reply::kUnreachable:
      o.warn = !s.warned;
      s.warned = true;
      s.interval_ms = 500;
      break;
    case Reply::kNotFound:
    case Reply::kRefused:
      o.exit = true;
      return o;
  }
  o.wait_ms = WaitMs(s, false);
  return o;
}

Outcome OnHeartbeat(ControlState& s, Reply r) {
  Outcome o;
  if (r == Reply::kNotFound) {
    // Registers again at once; what it held is dropped first.
    s.id.clear();
    s.forgotten = true;
    o.again_now = true;
    return o;
  }
  o.wait_ms = WaitMs(s, false);  // a coordinator away is tried again at the next beat
  return o;
}

Outcome OnAskToLeave(ControlState& s, Reply r, int running, int needed, int busy) {
  Outcome o;
  if (r == Reply::kOk && running == 0 && needed == 0 && busy == 0) {
    o.leave_id = s.id;
    o.drained = true;
    s.id.clear();
    return o;
  }
  if (r == Reply::kNotFound) {
    s.id.clear();
  } else if (r != Reply::kOk && busy == 0) {
    // The coordinator is away: a restarted one runs its jobs again, needing nothing of this worker.
    o.drained = true;
    return o;
  }
  o.wait_ms = WaitMs(s, true);
  return o;
}

}  // namespace reel::worker
