// TraceRecorder output as a trace viewer reads it: parsed back with nlohmann, tracks named by metadata, and
// overlapping intervals on different tracks kept with their exact times.
#include "profiler/trace.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <thread>

#include "common/error.h"
#include "test_util.h"

namespace reel {
namespace {

using nlohmann::json;
using std::chrono::microseconds;
using std::chrono::milliseconds;

json ReadJson(const std::filesystem::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

// tid -> track name from the thread_name metadata events.
std::map<int, std::string> TrackNames(const json& trace) {
  std::map<int, std::string> names;
  for (const auto& e : trace.at("traceEvents"))
    if (e.at("ph") == "M" && e.at("name") == "thread_name") names[e.at("tid").get<int>()] = e.at("args").at("name");
  return names;
}

std::vector<json> EventsOfPhase(const json& trace, const std::string& ph) {
  std::vector<json> out;
  for (const auto& e : trace.at("traceEvents"))
    if (e.at("ph") == ph) out.push_back(e);
  return out;
}

TEST(Trace, OverlappingComputeAndCopyRoundTripWithExactTimes) {
  testing::ScratchDir dir("trace");
  TraceRecorder trace;
  const auto t0 = trace.origin();
  // A block computing 1000..4000 us while the next block's copy runs 2500..5000 us: they overlap.
  trace.Complete("block 0", "block", "compute", t0 + microseconds(1000), microseconds(3000), {{"block", 0}});
  trace.Complete("copy block 1", "copy", "copy", t0 + microseconds(2500), microseconds(2500),
                 {{"bytes", 1 << 20}});
  trace.Complete("step 0", "step", "sampler", t0 + microseconds(500), microseconds(4750), nullptr);
  trace.Counter("device_memory_bytes", t0 + microseconds(3000), {{"bytes", 123456.0}});
  const auto path = dir / "trace.json";
  trace.Write(path);

  const json j = ReadJson(path);
  ASSERT_TRUE(j.at("traceEvents").is_array());
  const auto names = TrackNames(j);
  ASSERT_EQ(names.size(), 3u);
  std::map<std::string, int> tid_of;
  for (const auto& [tid, name] : names) tid_of[name] = tid;
  ASSERT_TRUE(tid_of.count("compute") && tid_of.count("copy") && tid_of.count("sampler"));
  EXPECT_NE(tid_of["compute"], tid_of["copy"]);

  const auto complete = EventsOfPhase(j, "X");
  ASSERT_EQ(complete.size(), 3u);
  std::map<std::string, json> by_name;
  for (const auto& e : complete) by_name[e.at("name")] = e;
  const json& block = by_name.at("block 0");
  const json& copy = by_name.at("copy block 1");
  EXPECT_EQ(block.at("tid"), tid_of["compute"]);
  EXPECT_EQ(copy.at("tid"), tid_of["copy"]);
  EXPECT_EQ(block.at("pid"), copy.at("pid"));  // one process: the tracks stack under it
  EXPECT_DOUBLE_EQ(block.at("ts").get<double>(), 1000.0);
  EXPECT_DOUBLE_EQ(block.at("dur").get<double>(), 3000.0);
  EXPECT_DOUBLE_EQ(copy.at("ts").get<double>(), 2500.0);
  EXPECT_DOUBLE_EQ(copy.at("dur").get<double>(), 2500.0);
  EXPECT_EQ(block.at("cat"), "block");
  EXPECT_EQ(copy.at("args").at("bytes"), 1 << 20);
  EXPECT_EQ(block.at("args").at("block"), 0);
  EXPECT_FALSE(by_name.at("step 0").contains("args"));
  // The overlap itself survives.
  const double block_end = block.at("ts").get<double>() + block.at("dur").get<double>();
  EXPECT_LT(copy.at("ts").get<double>(), block_end);

  const auto counters = EventsOfPhase(j, "C");
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].at("name"), "device_memory_bytes");
  EXPECT_DOUBLE_EQ(counters[0].at("ts").get<double>(), 3000.0);
  EXPECT_DOUBLE_EQ(counters[0].at("args").at("bytes").get<double>(), 123456.0);

  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename(), "trace.json") << "temporary file left behind";
}

TEST(Trace, ScopeRecordsItsLifetimeAndThreadsRecordConcurrently) {
  testing::ScratchDir dir("trace-scope");
  TraceRecorder trace;
  const auto before = TraceRecorder::Now();
  {
    TraceScope scope(&trace, "decode", "stage", "compute");
    scope.args()["frames"] = 9;
    std::this_thread::sleep_for(milliseconds(20));
  }
  const auto after = TraceRecorder::Now();
  { TraceScope off(nullptr, "ignored", "stage", "compute"); }  // no recorder: nothing, no crash

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&trace, t] {
      for (int i = 0; i < 250; ++i)
        trace.Complete("e", "block", "track" + std::to_string(t % 2), TraceRecorder::Now(), microseconds(1));
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(trace.event_count(), 1u + 1000u);

  trace.Write(dir / "t.json");
  const json j = ReadJson(dir / "t.json");
  const auto names = TrackNames(j);
  EXPECT_EQ(names.size(), 3u);  // compute, track0, track1: each track named once
  const json* decode = nullptr;
  for (const auto& e : j.at("traceEvents"))
    if (e.at("name") == "decode") decode = &e;
  ASSERT_NE(decode, nullptr);
  const double ts = decode->at("ts"), dur = decode->at("dur");
  const auto us = [&](TraceRecorder::Clock::time_point t) {
    return std::chrono::duration<double, std::micro>(t - trace.origin()).count();
  };
  EXPECT_GE(ts, us(before));
  EXPECT_GE(dur, 20000.0);
  EXPECT_LE(ts + dur, us(after));
  EXPECT_EQ(decode->at("args").at("frames"), 9);
}

TEST(Trace, WriteIntoMissingDirectoryNamesIt) {
  testing::ScratchDir dir("trace-missing");
  TraceRecorder trace;
  const auto path = dir / "nope" / "t.json";
  try {
    trace.Write(path);
    FAIL() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find((dir / "nope").string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace reel
