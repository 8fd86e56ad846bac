#include "cli/reconnect.h"

#include <algorithm>
#include <thread>

#include <spdlog/spdlog.h>

namespace reel::cli {

Reconnect::Reconnect(std::string address, int seconds, std::function<bool(const grpc::Status&)> retryable)
    : address_(std::move(address)), seconds_(seconds), retryable_(std::move(retryable)) {}

double Reconnect::away_seconds() const {
  return since_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *since_).count() : 0.0;
}

bool Reconnect::Outage(const grpc::Status& st) const {
  if (reached_)
    return st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::CANCELLED;
  return !st.ok() && retryable_(st);
}

bool Reconnect::Again(const grpc::Status& st, const std::string& doing) {
  if (!Outage(st) || seconds_ <= 0) return false;
  if (!since_) {
    since_ = std::chrono::steady_clock::now();
    tries_ = 0;
    spdlog::warn("coordinator {}: {} ({}); reconnecting for up to {} s", address_, doing, st.error_message(),
                 seconds_);
  }
  const double left = seconds_ - away_seconds();
  if (left <= 0) return false;
  // 100 ms, doubling to 1 s: a restart on the same machine is noticed within a second of it serving again.
  const double pause = std::min({0.1 * (1 << std::min(tries_++, 4)), 1.0, left});
  std::this_thread::sleep_for(std::chrono::duration<double>(pause));
  return true;
}

bool Draining(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::UNAVAILABLE &&
         st.error_message().find("coordinator is draining") != std::string::npos;
}

}  // namespace reel::cli
