// Keeps a client command going while its coordinator restarts (`reel submit --wait`): a call that failed because
// the coordinator could not be reached, or is draining, is tried again with a growing pause until the coordinator
// has been away for the command's window (--reconnect-seconds).
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

namespace reel::cli {

class Reconnect {
 public:
  // `retryable` says which failures mean "the coordinator is away" before it was ever reached (the caller tells
  // them from TLS refusals). Once a call got through, every UNAVAILABLE or CANCELLED (a server stopping cancels
  // its calls) is an outage: this client's credentials were good.
  Reconnect(std::string address, int seconds, std::function<bool(const grpc::Status&)> retryable);

  // After a failed call: true when it is worth trying again and the window is not spent, after a pause (the first
  // failure of an outage is logged, naming `doing`). False: the caller reports the failure as it would have.
  bool Again(const grpc::Status& st, const std::string& doing);
  // A call got through: the next outage gets the whole window again.
  void Reached() {
    since_.reset();
    reached_ = true;
  }
  // Whether `st` is an outage this object would wait out (window aside).
  bool Outage(const grpc::Status& st) const;
  // How long the coordinator has been away in this outage (0 when it is not).
  double away_seconds() const;
  int seconds() const { return seconds_; }

 private:
  std::string address_;
  int seconds_;
  std::function<bool(const grpc::Status&)> retryable_;
  std::optional<std::chrono::steady_clock::time_point> since_;
  int tries_ = 0;
  bool reached_ = false;
};

// The refusal of a draining coordinator: it queued nothing and will be back, so even SubmitJob, which is not
// idempotent, can be sent again. (A coordinator that cannot be reached at first is reported at once: it may not
// exist at all.)
bool Draining(const grpc::Status& st);

}  // namespace reel::cli
