// Metrics over a real HTTP scrape: the text format is parsed and checked for families, types, label sets and
// values, and for the conventions (reel_ prefix, durations as histograms, bounded labels). promtool, when
// installed, lints the same scrape.
#include "profiler/metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "test_util.h"

namespace reel {
namespace {

using reel::testing::HttpGet;

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|...
  std::vector<Sample> samples;
  std::vector<std::string> errors;

  // The value of the one sample with this name and exactly these labels; NaN when absent.
  double Value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples)
      if (s.name == name && s.labels == labels) return s.value;
    return std::nan("");
  }
};

// The Prometheus text format, strictly enough to catch a malformed line.
Exposition Parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream f(line.substr(7));
      std::string name, type;
      f >> name >> type;
      e.types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) {
      e.errors.push_back("no value: " + line);
      continue;
    }
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') break;
        const std::string key = line.substr(i, eq - i);
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) ++j;
          value += line[j];
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size() || line[i] != '}') {
        e.errors.push_back("bad labels: " + line);
        continue;
      }
      ++i;
    }
    const std::string value = line.substr(i + 1);
    if (value == "+Inf") s.value = INFINITY;
    else if (value == "NaN" || value == "Nan") s.value = std::nan("");
    else {
      char* end = nullptr;
      s.value = std::strtod(value.c_str(), &end);
      if (end == value.c_str()) e.errors.push_back("bad value: " + line);
    }
    e.samples.push_back(std::move(s));
  }
  return e;
}

// The family a sample belongs to: histogram samples carry _bucket/_sum/_count suffixes.
std::string FamilyOf(const Exposition& e, const std::string& sample) {
  if (e.types.count(sample)) return sample;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (sample.size() > s.size() && sample.compare(sample.size() - s.size(), s.size(), s) == 0) {
      const std::string base = sample.substr(0, sample.size() - s.size());
      if (e.types.count(base)) return base;
    }
  }
  return "";
}

StageProfile Profile(const std::string& strategy, const std::string& outcome) {
  StageProfile p;
  p.stage = "denoiser";
  p.stage_digest = "abc";
  p.device_kind = "cpu";
  p.strategy = strategy;
  p.outcome = outcome;
  p.wall_seconds = 2.5;
  p.load_seconds = 0.5;
  p.step_seconds = {1.0, 1.5};
  p.block_seconds = {0.01, 0.02, 0.03};
  return p;
}

using Labels = std::map<std::string, std::string>;

TEST(Metrics, ServesRecordedStagesOverHttpInTheTextFormat) {
  Metrics m;
  m.Serve("127.0.0.1:0");
  ASSERT_GT(m.port(), 0);

  m.RecordStage(Profile("none", "ok"));
  StageProfile offloaded = Profile("block:2", "ok");
  offloaded.copy_seconds = 0.75;
  offloaded.copied_bytes = 1000;
  m.RecordStage(offloaded);
  StageProfile oom = Profile("block:2", "oom");
  oom.copied_bytes = 24;
  m.RecordStage(oom);
  m.SetDeviceMemory("cpu", 100, 200, 300);
  m.SetHost(11, 22, 33);
  m.AddFrames(9);
  m.AddFrames(8);
  m.JobCompleted();

  int status = 0;
  const std::string body = HttpGet(m.port(), "/metrics", &status);
  ASSERT_EQ(status, 200) << body;
  const Exposition e = Parse(body);
  EXPECT_TRUE(e.errors.empty()) << e.errors.front();

  // Every family the dashboards rely on, with its type.
  const std::map<std::string, std::string> expected = {
      {"reel_stage_duration_seconds", "histogram"},  {"reel_step_duration_seconds", "histogram"},
      {"reel_block_duration_seconds", "histogram"},  {"reel_copy_duration_seconds", "histogram"},
      {"reel_load_duration_seconds", "histogram"},   {"reel_stage_runs_total", "counter"},
      {"reel_device_oom_total", "counter"},          {"reel_copied_bytes_total", "counter"},
      {"reel_frames_generated_total", "counter"},    {"reel_jobs_completed_total", "counter"},
      {"reel_device_memory_used_bytes", "gauge"},    {"reel_device_memory_peak_bytes", "gauge"},
      {"reel_device_memory_capacity_bytes", "gauge"}, {"reel_host_rss_bytes", "gauge"},
      {"reel_host_pinned_bytes", "gauge"},           {"reel_host_memory_budget_bytes", "gauge"}};
  for (const auto& [name, type] : expected) {
    ASSERT_TRUE(e.types.count(name)) << name << " missing from the scrape";
    EXPECT_EQ(e.types.at(name), type) << name;
  }

  // Conventions: one prefix, durations as histograms, counters end in _total, bounded label names.
  const std::set<std::string> allowed_labels = {"stage", "device", "strategy", "outcome", "le"};
  for (const auto& [name, type] : e.types) {
    EXPECT_EQ(name.rfind("reel_", 0), 0u) << name << " lacks the reel_ prefix";
    if (name.find("_seconds") != std::string::npos) {
      EXPECT_EQ(type, "histogram") << name;
    }
    if (type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
  }
  for (const auto& s : e.samples) {
    EXPECT_EQ(s.name.rfind("reel_", 0), 0u) << s.name << " lacks the reel_ prefix";
    EXPECT_FALSE(FamilyOf(e, s.name).empty()) << s.name << " has no # TYPE line";
    for (const auto& [k, v] : s.labels) EXPECT_TRUE(allowed_labels.count(k)) << s.name << " has label " << k;
  }

  const Labels none = {{"stage", "denoiser"}, {"device", "cpu"}, {"strategy", "none"}};
  const Labels block2 = {{"stage", "denoiser"}, {"device", "cpu"}, {"strategy", "block:2"}};
  auto with = [](Labels l, const std::string& k, const std::string& v) {
    l[k] = v;
    return l;
  };

  // Runs by outcome; OOMs; durations only from the runs that finished.
  EXPECT_EQ(e.Value("reel_stage_runs_total", with(none, "outcome", "ok")), 1);
  EXPECT_EQ(e.Value("reel_stage_runs_total", with(block2, "outcome", "ok")), 1);
  EXPECT_EQ(e.Value("reel_stage_runs_total", with(block2, "outcome", "oom")), 1);
  EXPECT_EQ(e.Value("reel_device_oom_total", block2), 1);
  EXPECT_EQ(e.Value("reel_device_oom_total", none), 0);
  EXPECT_EQ(e.Value("reel_copied_bytes_total", block2), 1024);
  EXPECT_EQ(e.Value("reel_stage_duration_seconds_count", block2), 1);
  EXPECT_DOUBLE_EQ(e.Value("reel_stage_duration_seconds_sum", block2), 2.5);
  EXPECT_EQ(e.Value("reel_copy_duration_seconds_count", block2), 1);
  EXPECT_EQ(e.Value("reel_copy_duration_seconds_count", none), 0);  // nothing copied, nothing observed
  EXPECT_EQ(e.Value("reel_load_duration_seconds_count", none), 1);
  EXPECT_EQ(e.Value("reel_block_duration_seconds_count", none), 3);
  EXPECT_NEAR(e.Value("reel_block_duration_seconds_sum", none), 0.06, 1e-12);

  // The step histogram: two observations (1.0 s, 1.5 s), cumulative buckets from 1 ms past an hour.
  EXPECT_EQ(e.Value("reel_step_duration_seconds_count", none), 2);
  EXPECT_DOUBLE_EQ(e.Value("reel_step_duration_seconds_sum", none), 2.5);
  std::vector<std::pair<double, double>> buckets;  // (le, cumulative count)
  for (const auto& s : e.samples)
    if (s.name == "reel_step_duration_seconds_bucket" && s.labels.at("strategy") == "none") {
      Labels rest = s.labels;
      const double le = std::strtod(rest.at("le").c_str(), nullptr);
      rest.erase("le");
      EXPECT_EQ(rest, none);
      buckets.emplace_back(s.labels.at("le") == "+Inf" ? INFINITY : le, s.value);
    }
  ASSERT_GE(buckets.size(), 10u);
  EXPECT_DOUBLE_EQ(buckets.front().first, 0.001);
  EXPECT_TRUE(std::isinf(buckets.back().first));
  EXPECT_GE(buckets[buckets.size() - 2].first, 3600.0);
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_GT(buckets[i].first, buckets[i - 1].first);
    EXPECT_GE(buckets[i].second, buckets[i - 1].second);
  }
  for (const auto& [le, count] : buckets) EXPECT_EQ(count, (le >= 1.5) + (le >= 1.0)) << "le=" << le;

  EXPECT_EQ(e.Value("reel_device_memory_used_bytes", {{"device", "cpu"}}), 100);
  EXPECT_EQ(e.Value("reel_device_memory_peak_bytes", {{"device", "cpu"}}), 200);
  EXPECT_EQ(e.Value("reel_device_memory_capacity_bytes", {{"device", "cpu"}}), 300);
  EXPECT_EQ(e.Value("reel_host_rss_bytes"), 11);
  EXPECT_EQ(e.Value("reel_host_pinned_bytes"), 22);
  EXPECT_EQ(e.Value("reel_host_memory_budget_bytes"), 33);
  EXPECT_EQ(e.Value("reel_frames_generated_total"), 17);
  EXPECT_EQ(e.Value("reel_jobs_completed_total"), 1);

  // Serialize() is the same exposition, for files and for callers without a server.
  const Exposition local = Parse(m.Serialize());
  EXPECT_EQ(local.types, e.types);
  EXPECT_EQ(local.samples.size(), e.samples.size());

  // A second scrape sees later updates: the server reads live values.
  m.JobCompleted();
  EXPECT_EQ(Parse(HttpGet(m.port(), "/metrics", &status)).Value("reel_jobs_completed_total"), 2);

  // promtool is the reference linter; it is optional on a developer machine.
  if (testing::RunCommand("command -v promtool").exit_code != 0) {
    GTEST_LOG_(INFO) << "promtool not installed (Debian package prometheus): skipping promtool check metrics";
  } else {
    testing::ScratchDir dir("metrics-promtool");
    const auto file = dir / "scrape.txt";
    std::ofstream(file) << body;
    const auto r = testing::RunCommand("promtool check metrics < " + testing::Quote(file.string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }
}

TEST(Metrics, RejectsBadAddressesWithOneLineNamingTheFlag) {
  for (const std::string bad :
       {"", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:http", "metrics.example.com:80",
        "300.1.1.1:80", "[::1:80"}) {
    Metrics m;
    try {
      m.Serve(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_EQ(std::string(e.what()).rfind("--metrics " + bad + ": ", 0), 0u) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
    EXPECT_EQ(m.port(), 0);
  }
}

TEST(Metrics, PortInUseIsAnInvalidArgument) {
  Metrics first;
  first.Serve("localhost:0");
  ASSERT_GT(first.port(), 0);
  Metrics second;
  const std::string taken = "127.0.0.1:" + std::to_string(first.port());
  try {
    second.Serve(taken);
    FAIL() << taken << " was bound twice";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--metrics " + taken + ": cannot listen"), std::string::npos) << e.what();
  }
  int status = 0;
  HttpGet(first.port(), "/metrics", &status);
  EXPECT_EQ(status, 200);  // the first server is unaffected
}

TEST(Metrics, SerializeWithoutServingShowsEveryFamilyAtZero) {
  Metrics m;
  const Exposition e = Parse(m.Serialize());
  EXPECT_TRUE(e.errors.empty());
  EXPECT_EQ(e.Value("reel_jobs_completed_total"), 0);
  EXPECT_EQ(e.Value("reel_frames_generated_total"), 0);
  EXPECT_EQ(e.Value("reel_host_rss_bytes"), 0);
  EXPECT_EQ(m.port(), 0);
}

}  // namespace
}  // namespace reel
