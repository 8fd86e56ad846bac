// `reel top`'s screen without a network: what each section shows for a snapshot, the throughput arithmetic, and
// that every frame fits the terminal it is drawn for.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/top_view.h"

namespace reel::cli {
namespace {

constexpr int64_t kNow = 1'700'000'000'000'000;  // Unix microseconds
constexpr int64_t kSecond = 1'000'000;

TopWorker Worker(const std::string& name, const std::string& state) {
  TopWorker w;
  w.name = name;
  w.device = "cpu";
  w.state = state;
  w.used_bytes = 6 << 20;
  w.peak_bytes = 80 << 20;
  w.capacity_bytes = int64_t{1} << 30;
  w.rss_bytes = 300 << 20;
  w.stages = {"tiny/text_encoder (none,f32)", "tiny/denoiser (none,f32)"};
  return w;
}

TopJob Job(const std::string& id, const std::string& state, int64_t submitted_ago_s) {
  TopJob j;
  j.id = id;
  j.state = state;
  j.model = "tiny";
  j.frames = 9;
  j.width = 64;
  j.height = 64;
  j.submitted_us = kNow - submitted_ago_s * kSecond;
  return j;
}

TopSnapshot Snapshot() {
  TopSnapshot s;
  s.coordinator = "127.0.0.1:7070";
  s.now_us = s.data_us = kNow;
  s.has_data = true;
  TopWorker busy = Worker("w0", "busy");
  busy.job = "job-2";
  busy.stage = "denoiser";
  busy.step = 3;
  busy.steps = 8;
  s.workers = {busy, Worker("w1", "idle")};
  TopJob run = Job("job-2", "running", 20);
  run.started_us = kNow - 12 * kSecond;
  run.stage = "denoiser";
  run.worker = "w0";
  run.step = 3;
  run.steps = 8;
  TopJob done = Job("job-1", "succeeded", 30);
  done.started_us = kNow - 29 * kSecond;
  done.finished_us = kNow - 21 * kSecond;
  s.jobs = {done, run, Job("job-3", "queued", 5), Job("job-4", "queued", 2)};
  return s;
}

std::string Find(const std::vector<std::string>& lines, const std::string& prefix) {
  for (const auto& l : lines)
    if (l.rfind(prefix, 0) == 0) return l;
  return "";
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string t;
  for (const auto& l : lines) t += l + "\n";
  return t;
}

TEST(TopView, ShowsWorkersQueueAndThroughput) {
  const auto lines = RenderTop(Snapshot(), 200, 40);
  const std::string text = Joined(lines);
  EXPECT_EQ(lines[0].rfind("reel top - 127.0.0.1:7070 - ", 0), 0u) << text;
  EXPECT_NE(lines[0].find("every 1.0s, q quits"), std::string::npos) << text;

  const std::string w0 = Find(lines, "w0 "), w1 = Find(lines, "w1 ");
  EXPECT_NE(w0.find("busy"), std::string::npos) << text;
  EXPECT_NE(w0.find("6.00 MiB / 80.00 MiB / 1.00 GiB"), std::string::npos) << text;
  EXPECT_NE(w0.find("300.00 MiB"), std::string::npos) << text;
  EXPECT_NE(w0.find("job-2 denoiser 3/8"), std::string::npos) << text;
  EXPECT_NE(w0.find("tiny/text_encoder (none,f32), tiny/denoiser (none,f32)"), std::string::npos) << text;
  EXPECT_NE(w1.find("idle"), std::string::npos) << text;
  EXPECT_NE(Find(lines, "WORKERS 2: 1 busy, 1 idle"), "") << text;

  // The running job first with its stage and progress, then the queue in order, then what ended.
  const std::string run = Find(lines, "job-2 ");
  EXPECT_NE(run.find("running"), std::string::npos) << text;
  EXPECT_NE(run.find("denoiser on w0 [###-------] 3/8"), std::string::npos) << text;
  EXPECT_NE(run.find("8.0s"), std::string::npos) << "waited 8 s before it started:\n" << text;
  auto row = [&](const std::string& id) {
    return std::find_if(lines.begin(), lines.end(), [&](const std::string& l) { return l.rfind(id + " ", 0) == 0; }) -
           lines.begin();
  };
  EXPECT_LT(row("job-2"), row("job-3"));
  EXPECT_LT(row("job-3"), row("job-4"));
  EXPECT_LT(row("job-4"), row("job-1"));
  EXPECT_NE(Find(lines, "job-1 ").find("succeeded"), std::string::npos) << text;

  EXPECT_NE(Find(lines, "queue: 2 queued, 1 running; oldest wait 5.0s"), "") << text;
  // One job succeeded (9 frames); the oldest job was submitted 30 s ago, so the rates are over 30 s.
  EXPECT_NE(Find(lines, "throughput, last 30s: 2.0 jobs/min, 0.30 frames/s; 1 succeeded, 0 failed, 0 cancelled"), "")
      << text;
}

TEST(TopView, GuidancePeerAndFailedWorker) {
  TopSnapshot s = Snapshot();
  s.workers[1].state = "busy";
  s.workers[1].job = "job-2";
  s.workers[1].stage = "denoiser";
  s.workers[1].guidance_branch = true;
  s.jobs[1].peer = "w1";
  TopWorker broken = Worker("w2", "failed");
  broken.error = "device out of memory loading denoiser";
  s.workers.push_back(broken);
  const auto lines = RenderTop(s, 200, 40);
  const std::string text = Joined(lines);
  EXPECT_NE(Find(lines, "w1 ").find("job-2 denoiser (guidance branch)"), std::string::npos) << text;
  EXPECT_NE(Find(lines, "job-2 ").find("denoiser on w0+w1"), std::string::npos) << text;
  EXPECT_NE(Find(lines, "w2 ").find("device out of memory loading denoiser"), std::string::npos) << text;
  EXPECT_NE(Find(lines, "WORKERS 3: 2 busy, 1 failed"), "") << text;
}

TEST(TopView, ThroughputCountsTheWindowOnly) {
  std::vector<TopJob> jobs;
  for (int i = 0; i < 3; ++i) {
    TopJob j = Job(fmt::format("job-{}", i), "succeeded", 600);
    j.finished_us = kNow - (10 + i) * kSecond;
    jobs.push_back(j);
  }
  TopJob old = Job("job-old", "succeeded", 900);
  old.finished_us = kNow - 120 * kSecond;  // before the window
  TopJob failed = Job("job-f", "failed", 100);
  failed.finished_us = kNow - 5 * kSecond;
  TopJob cancelled = Job("job-c", "cancelled", 100);
  cancelled.finished_us = kNow - 5 * kSecond;
  jobs.push_back(old);
  jobs.push_back(failed);
  jobs.push_back(cancelled);
  jobs.push_back(Job("job-q", "queued", 1));

  TopThroughput t = ComputeThroughput(jobs, kNow, 60, true);
  EXPECT_DOUBLE_EQ(t.span_s, 60);
  EXPECT_EQ(t.succeeded, 3);
  EXPECT_EQ(t.failed, 1);
  EXPECT_EQ(t.cancelled, 1);
  EXPECT_EQ(t.frames, 27);
  EXPECT_DOUBLE_EQ(t.jobs_per_min, 3.0);
  EXPECT_DOUBLE_EQ(t.frames_per_s, 27.0 / 60);

  // A young coordinator: the rates are over the time since its first job, not the whole window.
  std::vector<TopJob> young = {Job("job-1", "succeeded", 20)};
  young[0].finished_us = kNow - 10 * kSecond;
  t = ComputeThroughput(young, kNow, 300, true);
  EXPECT_DOUBLE_EQ(t.span_s, 20);
  EXPECT_DOUBLE_EQ(t.jobs_per_min, 3.0);
  // ... unless the listing was cut: older jobs may be missing, so the whole window counts.
  t = ComputeThroughput(young, kNow, 300, false);
  EXPECT_DOUBLE_EQ(t.span_s, 300);

  t = ComputeThroughput({}, kNow, 300, true);
  EXPECT_EQ(t.succeeded, 0);
  EXPECT_DOUBLE_EQ(t.jobs_per_min, 0);
}

TEST(TopView, EveryFrameFitsTheTerminal) {
  TopSnapshot s = Snapshot();
  for (int i = 0; i < 30; ++i) s.workers.push_back(Worker(fmt::format("worker-{:02}", i), "idle"));
  for (int i = 0; i < 50; ++i) s.jobs.push_back(Job(fmt::format("job-{}", 100 + i), "queued", 50 - i));
  for (int width : {1, 10, 40, 80, 132, 300})
    for (int height : {1, 3, 8, 12, 24, 60, 200}) {
      const auto lines = RenderTop(s, width, height);
      EXPECT_LE(lines.size(), static_cast<size_t>(height)) << width << "x" << height;
      for (const auto& l : lines) EXPECT_LE(l.size(), static_cast<size_t>(width)) << width << "x" << height;
    }
}

TEST(TopView, ListsThatDoNotFitSayHowManyMore) {
  TopSnapshot s = Snapshot();
  for (int i = 0; i < 30; ++i) s.workers.push_back(Worker(fmt::format("worker-{:02}", i), "idle"));
  for (int i = 0; i < 50; ++i) s.jobs.push_back(Job(fmt::format("job-{}", 100 + i), "queued", 50 - i));
  const auto lines = RenderTop(s, 200, 24);
  const std::string text = Joined(lines);
  ASSERT_EQ(lines.size(), 24u) << text;
  int workers_shown = 0, jobs_shown = 0, workers_more = 0, jobs_more = 0;
  for (const auto& l : lines) {
    if (l.rfind("w0 ", 0) == 0 || l.rfind("w1 ", 0) == 0 || l.rfind("worker-", 0) == 0) ++workers_shown;
    if (l.rfind("job-", 0) == 0) ++jobs_shown;
    if (l.find("more workers") != std::string::npos) std::sscanf(l.c_str(), "... %d", &workers_more);
    if (l.find("more queued or running") != std::string::npos) std::sscanf(l.c_str(), "... %d", &jobs_more);
  }
  EXPECT_GT(workers_shown, 0) << text;
  EXPECT_GT(jobs_shown, 0) << text;
  EXPECT_EQ(workers_shown + workers_more, 32) << text;
  EXPECT_EQ(jobs_shown + jobs_more, 53) << "53 active jobs and no room for the ended one:\n" << text;
  // The fixed lines stay: the title, throughput and queue on top.
  EXPECT_EQ(lines[0].rfind("reel top", 0), 0u);
  EXPECT_NE(Find(lines, "throughput, last"), "");
  EXPECT_NE(Find(lines, "queue: 52 queued, 1 running"), "");
}

TEST(TopView, UnreachableCoordinatorIsSaidOnScreen) {
  TopSnapshot s;
  s.coordinator = "10.0.0.9:7070";
  s.now_us = kNow;
  s.error = "unreachable";
  s.error_detail = "failed to connect to all addresses";
  auto lines = RenderTop(s, 200, 40);
  ASSERT_EQ(lines.size(), 2u) << Joined(lines);
  EXPECT_EQ(lines[1],
            "! coordinator 10.0.0.9:7070 unreachable; retrying every 1.0s: failed to connect to all addresses");

  // With an earlier listing, that listing stays below the warning, marked with its time.
  s = Snapshot();
  s.error = "unreachable";
  s.error_detail = "connection refused";
  s.data_us = kNow - 7 * kSecond;
  lines = RenderTop(s, 200, 40);
  EXPECT_EQ(lines[1].rfind("! coordinator 127.0.0.1:7070 unreachable; retrying every 1.0s (below: as of ", 0), 0u)
      << Joined(lines);
  EXPECT_NE(lines[1].find("): connection refused"), std::string::npos) << Joined(lines);
  EXPECT_NE(Find(lines, "w0 "), "");

  // Before the first answer.
  TopSnapshot fresh;
  fresh.coordinator = "127.0.0.1:7070";
  fresh.now_us = kNow;
  lines = RenderTop(fresh, 200, 40);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1], "connecting to 127.0.0.1:7070 ...");
}

TEST(TopView, PlainFrameAndPrintableText) {
  TopSnapshot s = Snapshot();
  s.interactive = false;
  s.jobs[0].state = "failed";
  s.jobs[0].error = "bad \x1b[31m\xc3\xa9 input\n";
  const auto lines = RenderTop(s, 1000, 1000);
  EXPECT_EQ(lines[0].find("q quits"), std::string::npos);
  for (const auto& l : lines)
    for (char c : l) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << "a control or non-ASCII byte in: " << l;
  EXPECT_NE(Find(lines, "job-1 ").find("bad ?[31m?? input?"), std::string::npos) << Joined(lines);
}

}  // namespace
}  // namespace reel::cli
