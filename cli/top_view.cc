// `reel top`'s screen: sections (title, throughput, queue, workers, jobs) laid out to fit the terminal.
#include "cli/top_view.h"

#include <algorithm>
#include <ctime>
#include <map>

#include <fmt/format.h>

#include "profiler/host_memory.h"

namespace reel::cli {

namespace {

bool Ended(const std::string& state) { return state == "succeeded" || state == "failed" || state == "cancelled"; }

// A duration in at most four or five characters: 0.4s, 12s, 3m05s, 2h03m.
std::string Short(double s) {
  if (s < 0) s = 0;
  if (s < 10) return fmt::format("{:.1f}s", s);
  if (s < 60) return fmt::format("{:.0f}s", s);
  const long t = static_cast<long>(s);
  if (t < 3600) return t % 60 ? fmt::format("{}m{:02}s", t / 60, t % 60) : fmt::format("{}m", t / 60);
  return fmt::format("{}h{:02}m", t / 3600, (t % 3600) / 60);
}

std::string Clock(int64_t unix_us) {
  const std::time_t t = static_cast<std::time_t>(unix_us / 1000000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return buf;
}

std::string Since(int64_t from_us, int64_t to_us) {
  if (from_us <= 0 || to_us <= 0) return "-";
  return Short((to_us - from_us) / 1e6);
}

std::string Bar(int step, int steps) {
  constexpr int kWidth = 10;
  const int full = steps > 0 ? std::clamp(step * kWidth / steps, 0, kWidth) : 0;
  return "[" + std::string(full, '#') + std::string(kWidth - full, '-') + fmt::format("] {}/{}", step, steps);
}

// Non-ASCII bytes and control characters become '?', so every character is one column.
std::string Printable(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return s;
}

// Rows of cells as aligned columns two spaces apart; the last column is as long as it is (the width cuts it).
std::vector<std::string> Table(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right) {
  std::vector<size_t> widths;
  for (const auto& r : rows)
    for (size_t i = 0; i + 1 < r.size(); ++i) {
      if (widths.size() <= i) widths.resize(i + 1, 0);
      widths[i] = std::max(widths[i], r[i].size());
    }
  std::vector<std::string> out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      if (i + 1 == r.size()) {
        line += r[i];
        break;
      }
      const std::string pad(widths[i] - r[i].size(), ' ');
      line += (i < right.size() && right[i]) ? pad + r[i] : r[i] + pad;
      line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out.push_back(line);
  }
  return out;
}

std::string Memory(const TopWorker& w) {
  return fmt::format("{} / {} / {}", FormatBytes(w.used_bytes), FormatBytes(w.peak_bytes),
                     w.capacity_bytes > 0 ? FormatBytes(w.capacity_bytes) : std::string("-"));
}

std::string WorkerNow(const TopWorker& w) {
  if (w.state == "failed" || w.state == "lost") return w.error;
  if (w.job.empty()) return "";
  std::string now = w.job;
  if (!w.stage.empty()) now += " " + w.stage;
  if (w.guidance_branch) now += " (guidance branch)";
  if (w.steps > 0) now += fmt::format(" {}/{}", w.step, w.steps);
  return now;
}

std::string JobNow(const TopJob& j) {
  if (j.state == "running") {
    if (j.stage.empty()) return "";
    std::string now = j.stage + " on " + j.worker + (j.peer.empty() ? "" : "+" + j.peer);
    if (j.steps > 0 && j.stage == "denoiser") now += " " + Bar(j.step, j.steps);
    return now;
  }
  if (j.state == "failed" || j.state == "cancelled") return j.error;
  return "";
}

}  // namespace

TopThroughput ComputeThroughput(const std::vector<TopJob>& jobs, int64_t now_us, double window_s, bool jobs_complete) {
  TopThroughput t;
  t.span_s = window_s;
  int64_t oldest = 0;
  for (const auto& j : jobs)
    if (j.submitted_us > 0 && (oldest == 0 || j.submitted_us < oldest)) oldest = j.submitted_us;
  if (jobs_complete && oldest > 0) t.span_s = std::clamp((now_us - oldest) / 1e6, 1.0, window_s);
  const int64_t from = now_us - static_cast<int64_t>(window_s * 1e6);
  for (const auto& j : jobs) {
    if (!Ended(j.state) || j.finished_us < from) continue;
    if (j.state == "succeeded") {
      ++t.succeeded;
      t.frames += j.frames;
    } else if (j.state == "failed") {
      ++t.failed;
    } else {
      ++t.cancelled;
    }
  }
  t.jobs_per_min = t.succeeded * 60.0 / t.span_s;
  t.frames_per_s = static_cast<double>(t.frames) / t.span_s;
  return t;
}

std::vector<std::string> RenderTop(const TopSnapshot& s, int width, int height) {
  width = std::max(width, 1);
  height = std::max(height, 1);
  std::vector<std::string> head;
  std::string title = fmt::format("reel top - {} - {}", s.coordinator, Clock(s.now_us));
  if (s.interactive) title += fmt::format(" - every {}, q quits", Short(s.interval_s));
  head.push_back(title);
  if (!s.error.empty()) {
    // What to know first, then gRPC's (long) words, which the width may cut.
    std::string e = fmt::format("! coordinator {} {}; retrying every {}", s.coordinator, s.error, Short(s.interval_s));
    if (s.has_data) e += fmt::format(" (below: as of {})", Clock(s.data_us));
    if (!s.error_detail.empty()) e += ": " + s.error_detail;
    head.push_back(e);
  } else if (!s.has_data) {
    head.push_back(fmt::format("connecting to {} ...", s.coordinator));
  }

  std::vector<std::string> lines;
  if (s.has_data) {
    const int64_t now = s.data_us > 0 ? s.data_us : s.now_us;
    const TopThroughput t = ComputeThroughput(s.jobs, now, s.window_s, s.jobs_complete);
    head.push_back(fmt::format("throughput, last {}: {:.1f} jobs/min, {:.2f} frames/s; {} succeeded, {} failed, {} "
                               "cancelled",
                               Short(t.span_s), t.jobs_per_min, t.frames_per_s, t.succeeded, t.failed, t.cancelled));

    // Running jobs oldest first, then the queue in dispatch order, then ended jobs newest first.
    std::vector<const TopJob*> running, queued, ended;
    for (const auto& j : s.jobs) (j.state == "running" ? running : j.state == "queued" ? queued : ended).push_back(&j);
    std::stable_sort(running.begin(), running.end(),
                     [](const TopJob* a, const TopJob* b) { return a->started_us < b->started_us; });
    std::stable_sort(queued.begin(), queued.end(), [](const TopJob* a, const TopJob* b) {
      return a->priority != b->priority ? a->priority > b->priority : a->submitted_us < b->submitted_us;
    });
    std::stable_sort(ended.begin(), ended.end(),
                     [](const TopJob* a, const TopJob* b) { return a->finished_us > b->finished_us; });
    int64_t oldest = 0;
    for (const TopJob* j : queued)
      if (j->submitted_us > 0 && (oldest == 0 || j->submitted_us < oldest)) oldest = j->submitted_us;
    head.push_back(fmt::format("queue: {} queued, {} running; oldest wait {}", queued.size(), running.size(),
                               oldest > 0 ? Since(oldest, now) : "-"));

    // Workers.
    std::map<std::string, int> states;
    for (const auto& w : s.workers) states[w.state]++;
    std::string counts;
    for (const char* st : {"busy", "idle", "loading", "failed", "lost"})
      if (states.count(st)) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", states[st], st);
    std::vector<std::vector<std::string>> wrows = {
        {"NAME", "DEVICE", "STATE", "DEVICE MEMORY used / peak / capacity", "HOST RSS", "NOW", "STAGES"}};
    for (const auto& w : s.workers) {
      std::string held;
      for (const auto& st : w.stages) held += (held.empty() ? "" : ", ") + st;
      wrows.push_back({w.name, w.device, w.state, Memory(w), FormatBytes(w.rss_bytes), WorkerNow(w), held});
    }
    std::vector<std::string> wlines = Table(wrows, {false, false, false, false, true, false, false});
    const std::string wtitle = fmt::format("WORKERS {}{}", s.workers.size(), counts.empty() ? "" : ": " + counts);
    const std::string wheader = wlines.front();
    wlines.erase(wlines.begin());
    if (wlines.empty()) wlines.push_back("(no workers registered)");

    // Jobs.
    std::vector<std::vector<std::string>> jrows = {{"JOB", "STATE", "PRIO", "MODEL", "SHAPE", "WAIT", "RAN", "NOW"}};
    auto row = [&](const TopJob* j) {
      const int64_t end = j->finished_us > 0 ? j->finished_us : now;
      jrows.push_back({j->id, j->state, std::to_string(j->priority), j->model,
                       fmt::format("{}x{}x{}", j->frames, j->width, j->height),
                       Since(j->submitted_us, j->started_us > 0 ? j->started_us : end), Since(j->started_us, end),
                       JobNow(*j)});
    };
    for (const TopJob* j : running) row(j);
    for (const TopJob* j : queued) row(j);
    constexpr size_t kMaxEnded = 10;  // recent history; the queue is what matters
    for (size_t i = 0; i < ended.size() && i < kMaxEnded; ++i) row(ended[i]);
    std::vector<std::string> jlines = Table(jrows, {false, false, true, false, false, true, true, false});
    const std::string jheader = jlines.front();
    jlines.erase(jlines.begin());
    const size_t active = running.size() + queued.size();
    if (jlines.empty()) jlines.push_back("(no jobs)");

    // Rows left for the two lists once the fixed lines are placed; when short, the jobs list keeps its active jobs
    // first and each list ends in a count of what did not fit.
    const int fixed = static_cast<int>(head.size()) + 6;  // blank, title, header for each list
    const int avail = height - fixed;
    const int nw = static_cast<int>(wlines.size());
    const int nj = static_cast<int>(jlines.size());
    int wshow = nw, jshow = nj;
    if (avail >= 2 && nw + nj > avail) {
      const int jneed = std::max(static_cast<int>(active), 1);
      const int half = avail / 2;
      if (nw + jneed <= avail) {
        wshow = nw;  // everything that matters fits; ended jobs get what is left
      } else if (nw <= half) {
        wshow = nw;
      } else if (jneed <= avail - half) {
        wshow = avail - jneed;
      } else {
        wshow = std::max(half, 1);
      }
      jshow = std::min(nj, avail - wshow);
      if (wshow < nw) {
        const int more = nw - (wshow - 1);
        wlines.resize(wshow - 1);
        wlines.push_back(fmt::format("... {} more workers", more));
      }
      if (jshow < nj) {
        if (static_cast<int>(active) > jshow) {
          const int more = static_cast<int>(active) - (jshow - 1);
          jlines.resize(jshow - 1);
          jlines.push_back(fmt::format("... {} more queued or running", more));
        } else {
          jlines.resize(jshow);  // only ended jobs are left out
        }
      }
    }
    lines = head;
    lines.push_back("");
    lines.push_back(wtitle);
    lines.push_back(wheader);
    lines.insert(lines.end(), wlines.begin(), wlines.end());
    lines.push_back("");
    lines.push_back("JOBS");
    lines.push_back(jheader);
    lines.insert(lines.end(), jlines.begin(), jlines.end());
  } else {
    lines = head;
  }

  if (lines.size() > static_cast<size_t>(height)) lines.resize(height);
  for (auto& l : lines) {
    l = Printable(std::move(l));
    if (l.size() > static_cast<size_t>(width)) l.resize(width);
  }
  return lines;
}

}  // namespace reel::cli
