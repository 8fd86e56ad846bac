// Trace events are held in memory as JSON and written once at the end, so recording never waits on the disk.
#include "profiler/trace.h"

#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace reel {
namespace {
using nlohmann::json;
}

TraceRecorder::TraceRecorder() : origin_(Clock::now()) {}

double TraceRecorder::Micros(Clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - origin_).count();
}

int TraceRecorder::TidFor(std::string_view track) {
  if (auto it = tids_.find(track); it != tids_.end()) return it->second;
  // Tids start at 1 in first-use order, which is also the order the viewer stacks the tracks in.
  const int tid = static_cast<int>(tids_.size()) + 1;
  tids_.emplace(std::string(track), tid);
  return tid;
}

void TraceRecorder::Complete(std::string_view name, std::string_view category, std::string_view track,
                             Clock::time_point start, Clock::duration duration, const json& args) {
  json e = {{"name", name},
            {"cat", category},
            {"ph", "X"},
            {"ts", Micros(start)},
            {"dur", std::chrono::duration<double, std::micro>(duration).count()},
            {"pid", 1}};
  if (!args.is_null()) e["args"] = args;
  std::lock_guard lock(mu_);
  e["tid"] = TidFor(track);
  events_.push_back(std::move(e));
}

void TraceRecorder::Counter(std::string_view name, Clock::time_point ts, const std::map<std::string, double>& series) {
  json e = {{"name", name}, {"ph", "C"}, {"ts", Micros(ts)}, {"pid", 1}, {"tid", 0}, {"args", series}};
  std::lock_guard lock(mu_);
  events_.push_back(std::move(e));
}

json TraceRecorder::ToJson() const {
  json events = json::array();
  std::lock_guard lock(mu_);
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"tid", 0}, {"args", {{"name", "reel"}}}});
  for (const auto& [track, tid] : tids_) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", 1}, {"tid", tid}, {"args", {{"name", track}}}});
    events.push_back(
        {{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", 1}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
  }
  for (const auto& e : events_) events.push_back(e);
  return {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
}

void TraceRecorder::Write(const std::filesystem::path& path) const {
  AtomicFile file(path, "--trace");
  {
    std::ofstream out(file.temp_path());
    out << ToJson().dump() << '\n';
    out.close();
    if (!out) throw IoError("--trace " + path.string() + ": cannot write " + file.temp_path().string());
  }
  file.Commit();
}

size_t TraceRecorder::event_count() const {
  std::lock_guard lock(mu_);
  return events_.size();
}

TraceScope::TraceScope(TraceRecorder* trace, std::string name, std::string category, std::string track, json args)
    : trace_(trace),
      name_(std::move(name)),
      category_(std::move(category)),
      track_(std::move(track)),
      args_(std::move(args)),
      start_(TraceRecorder::Now()) {}

TraceScope::~TraceScope() {
  if (!trace_) return;
  // Recording must not throw out of a destructor (it may run during unwinding); a lost event is acceptable.
  try {
    trace_->Complete(name_, category_, track_, start_, TraceRecorder::Now() - start_, args_);
  } catch (...) {
  }
}

}  // namespace reel
