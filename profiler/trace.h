// Chrome/Perfetto trace-event JSON for one run: stages, steps, blocks and copies as intervals on named tracks
// (one track per kind of work, so a copy overlapping compute shows as two bars at once), plus counters.
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace reel {

class TraceRecorder {
 public:
  using Clock = std::chrono::steady_clock;

  TraceRecorder();  // the trace's time zero is now
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;

  static Clock::time_point Now() { return Clock::now(); }
  Clock::time_point origin() const { return origin_; }

  // An interval ("ph":"X") on `track`; tracks are shown as threads named after them. `args` (an object, or
  // null for none) appear in the viewer's details pane.
  void Complete(std::string_view name, std::string_view category, std::string_view track, Clock::time_point start,
                Clock::duration duration, const nlohmann::json& args = nullptr);
  // A counter sample ("ph":"C"): each series is one line of the counter's chart.
  void Counter(std::string_view name, Clock::time_point ts, const std::map<std::string, double>& series);

  // {"traceEvents": [...], "displayTimeUnit": "ms"} with the thread_name metadata first.
  nlohmann::json ToJson() const;
  // Whole or not at all; throws InvalidArgument("--trace <dir>: ...") for a bad directory, IoError on write.
  void Write(const std::filesystem::path& path) const;

  size_t event_count() const;

 private:
  int TidFor(std::string_view track);  // caller holds mu_
  double Micros(Clock::time_point t) const;

  const Clock::time_point origin_;
  mutable std::mutex mu_;
  std::map<std::string, int, std::less<>> tids_;
  std::vector<nlohmann::json> events_;
};

// Records a Complete event from construction to destruction; args may be added while the scope is open.
class TraceScope {
 public:
  // A null recorder makes the scope free, so call sites need not branch on whether tracing is on.
  TraceScope(TraceRecorder* trace, std::string name, std::string category, std::string track,
             nlohmann::json args = nullptr);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

  nlohmann::json& args() { return args_; }

 private:
  TraceRecorder* trace_;
  std::string name_, category_, track_;
  nlohmann::json args_;
  TraceRecorder::Clock::time_point start_;
};

}  // namespace reel
