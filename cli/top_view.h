// `reel top`'s screen as a pure function: a snapshot of the cluster (plain structs, no gRPC) in, lines of text
// out, fitted to a width and a height. The terminal loop (top_command.cc) fills the snapshot and draws the lines.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace reel::cli {

struct TopWorker {
  std::string name, device, state;  // state: loading | idle | busy | failed | lost
  std::string job, stage;           // busy: the job and the stage it runs (stage in lower case, e.g. "denoiser")
  int step = 0, steps = 0;          // the stage's denoising progress, when it has steps
  bool guidance_branch = false;     // lending the unconditional branch of the job's guided denoise
  int64_t used_bytes = 0, peak_bytes = 0, capacity_bytes = 0;  // device memory; capacity 0: unlimited
  int64_t rss_bytes = 0;
  std::vector<std::string> stages;  // held: "model/stage (strategy)"
  std::string error;
};

struct TopJob {
  std::string id, state, model;  // state: queued | running | succeeded | failed | cancelled
  int priority = 0, frames = 0, width = 0, height = 0;
  std::string stage, worker, peer;  // running: the stage running now, where, and its guidance peer
  int step = 0, steps = 0;
  int64_t submitted_us = 0, started_us = 0, finished_us = 0;  // Unix microseconds, 0 when not yet
  std::string error;
};

struct TopSnapshot {
  std::string coordinator;  // the address asked
  int64_t now_us = 0;       // Unix microseconds when drawn
  double interval_s = 1;    // the refresh period, shown in the title
  double window_s = 300;    // the throughput window
  bool interactive = true;  // shows the key help in the title

  bool has_data = false;    // a listing arrived at least once
  int64_t data_us = 0;      // when the listing shown arrived
  std::string error;        // the last attempt failed: how, in a word or two ("unreachable"); the data is then stale
  std::string error_detail; // ... and gRPC's message

  std::vector<TopWorker> workers;
  std::vector<TopJob> jobs;     // queued and running jobs, and recently ended ones
  bool jobs_complete = true;    // false when the ended-job listing was cut at its limit
};

// Throughput over the last `window_s` seconds: jobs that ended in it, and the frames of those that succeeded.
// The rates are over the window, or over the time since the oldest listed job was submitted when that is shorter
// (a coordinator that started a minute ago has not been idle for the rest of the window).
struct TopThroughput {
  double span_s = 0;
  int succeeded = 0, failed = 0, cancelled = 0;
  int64_t frames = 0;
  double jobs_per_min = 0, frames_per_s = 0;
};
TopThroughput ComputeThroughput(const std::vector<TopJob>& jobs, int64_t now_us, double window_s, bool jobs_complete);

// The screen: at most `height` lines, none longer than `width` characters (ASCII only, so characters are
// columns). Lists that do not fit end in a "... N more" line.
std::vector<std::string> RenderTop(const TopSnapshot& snapshot, int width, int height);

}  // namespace reel::cli
