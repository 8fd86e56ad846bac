// ProfileStore against real SQLite files: round trips across reopen, wildcard lookups, ordering, a second
// process writing while WAL is live, and the one-line errors for bad paths.
#include "profiler/profile_store.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "common/error.h"
#include "test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

StageProfile Make(const std::string& digest, const std::string& strategy, int64_t recorded_at) {
  StageProfile p;
  p.stage = "denoiser";
  p.stage_digest = digest;
  p.device_kind = "cuda";
  p.device_name = "NVIDIA H100 80GB HBM3";
  p.device_capacity_bytes = 24LL << 30;
  p.strategy = strategy;
  p.dtype = "bf16";
  p.frames = 49;
  p.height = 480;
  p.width = 720;
  p.steps = 3;
  p.batch = 2;
  p.peak_device_bytes = 20LL << 30;
  p.peak_host_rss_bytes = 9LL << 30;
  p.pinned_host_bytes = 1LL << 30;
  p.copied_bytes = 123456789;
  p.load_seconds = 1.25;
  p.copy_seconds = 0.1 + recorded_at / 1000.0;  // distinct per row, not exactly representable in binary
  p.compute_seconds = 30.5;
  p.wall_seconds = 31.875;
  p.step_seconds = {10.1, 10.2, 10.3 + recorded_at};
  p.block_seconds = {0.01, 0.02, 1.0 / 3.0};
  p.recorded_at = recorded_at;
  return p;
}

// Runs `f`, expects a reel::Error of `kind` whose single-line message contains `needle`.
template <typename F>
void ExpectError(F&& f, ErrorKind kind, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error thrown; expected one mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

TEST(ProfileStore, RoundTripsAcrossReopenAndFindsByKeyAndWildcards) {
  ScratchDir dir("profile-store");
  const std::string path = (dir / "profiles.sqlite").string();
  const StageProfile a = Make("d1", "model", 100);
  const StageProfile b = Make("d1", "model", 200);  // same key as a, newer
  const StageProfile c = Make("d1", "block:2", 150);
  StageProfile d = Make("d2", "x'); DROP TABLE stage_profiles; --", 50);  // must be stored as data
  d.device_kind = "cpu";
  d.device_capacity_bytes = 0;
  d.outcome = "oom";
  d.error = "device out of memory in stage denoiser";
  d.step_seconds.clear();
  int64_t ida, idb, idc, idd;
  {
    ProfileStore store(path);
    ida = store.Insert(a);
    idb = store.Insert(b);
    idc = store.Insert(c);
    idd = store.Insert(d);
    EXPECT_LT(ida, idb);
    EXPECT_LT(idc, idd);
  }
  ProfileStore store(path);

  const auto exact = store.Find(ProfileKey::Of(a));
  ASSERT_EQ(exact.size(), 2u);
  EXPECT_EQ(exact[0].id, idb);  // newest first
  EXPECT_EQ(exact[1].id, ida);
  EXPECT_EQ(exact[0].profile, b);  // every field, vectors included, bit for bit
  EXPECT_EQ(exact[1].profile, a);

  ProfileKey by_digest;
  by_digest.stage_digest = "d1";
  const auto d1 = store.Find(by_digest);
  ASSERT_EQ(d1.size(), 3u);
  EXPECT_EQ(d1[0].id, idb);
  EXPECT_EQ(d1[1].id, idc);
  EXPECT_EQ(d1[2].id, ida);

  ProfileKey cpu;
  cpu.device_kind = "cpu";
  cpu.device_capacity_bytes = 0;
  const auto cpu_rows = store.Find(cpu);
  ASSERT_EQ(cpu_rows.size(), 1u);
  EXPECT_EQ(cpu_rows[0].id, idd);
  EXPECT_EQ(cpu_rows[0].profile, d);
  EXPECT_TRUE(cpu_rows[0].profile.step_seconds.empty());

  ProfileKey shape = ProfileKey::Of(c);
  shape.strategy = "";  // any strategy for this shape
  EXPECT_EQ(store.Find(shape).size(), 3u);
  shape.height = 481;
  EXPECT_TRUE(store.Find(shape).empty());

  ProfileKey wrong_capacity = ProfileKey::Of(a);
  wrong_capacity.device_capacity_bytes = 16LL << 30;
  EXPECT_TRUE(store.Find(wrong_capacity).empty());

  const auto all = store.All();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].id, idb);
  EXPECT_EQ(all[3].id, idd);  // oldest recorded_at
}

TEST(ProfileStore, AVersionOneStoreIsMigratedAndKeepsItsRows) {
  ScratchDir dir("profile-store-v1");
  const std::string path = (dir / "old.sqlite").string();
  // A store as version 1 wrote it: no base_device_bytes column.
  const std::string v1 =
      "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);"
      "CREATE TABLE stage_profiles (id INTEGER PRIMARY KEY AUTOINCREMENT, stage TEXT NOT NULL, stage_digest TEXT NOT "
      "NULL, device_kind TEXT NOT NULL, device_name TEXT NOT NULL, device_capacity_bytes INTEGER NOT NULL, strategy "
      "TEXT NOT NULL, dtype TEXT NOT NULL, frames INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL, "
      "steps INTEGER NOT NULL, batch INTEGER NOT NULL, outcome TEXT NOT NULL, error TEXT NOT NULL, peak_device_bytes "
      "INTEGER NOT NULL, peak_host_rss_bytes INTEGER NOT NULL, pinned_host_bytes INTEGER NOT NULL, copied_bytes "
      "INTEGER NOT NULL, load_seconds REAL NOT NULL, copy_seconds REAL NOT NULL, compute_seconds REAL NOT NULL, "
      "wall_seconds REAL NOT NULL, step_seconds TEXT NOT NULL, block_seconds TEXT NOT NULL, recorded_at INTEGER NOT "
      "NULL);"
      "INSERT INTO stage_profiles VALUES (NULL, 'denoiser', 'old', 'cpu', '', 0, 'none', 'f32', 9, 64, 64, 2, 2, "
      "'ok', '', 1000, 2000, 0, 0, 0, 0, 0.5, 0.6, '[0.3]', '[]', 7);";
  const auto r = testing::RunCommand("sqlite3 " + testing::Quote(path) + " " + testing::Quote(v1));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  {
    ProfileStore store(path);
    const auto rows = store.All();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].profile.stage_digest, "old");
    EXPECT_EQ(rows[0].profile.peak_device_bytes, 1000);
    EXPECT_EQ(rows[0].profile.base_device_bytes, 0);
    StageProfile p = Make("new", "block:2", 8);
    p.base_device_bytes = 123;
    store.Insert(p);
  }
  ProfileStore reopened(path);  // migrated once: opening again changes nothing
  const auto rows = reopened.All();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].profile.base_device_bytes, 123);
}

// Sequence parallelism's link measurements: their own table (a schema-2 file gains it on open), newest first, one
// link or all, and the bad ones refused with the field named and nothing stored.
TEST(ProfileStore, LinkProfilesRoundTripAcrossReopenNewestFirst) {
  ScratchDir dir("profile-store-links");
  const std::string path = (dir / "p.sqlite").string();
  auto link = [](const std::string& name, int64_t bytes, double seconds, int64_t at) {
    LinkProfile l;
    l.link = name;
    l.ranks = 3;
    l.bytes_sent = bytes;
    l.exchange_seconds = seconds;
    l.recorded_at = at;
    return l;
  };
  {
    ProfileStore store(path);
    EXPECT_TRUE(store.Links().empty());
    store.InsertLink(link("host/gloo", 3'000'000'000, 2.0, 10));
    store.InsertLink(link("host/nccl", 9'000'000'000, 0.1, 11));
    store.InsertLink(link("host/gloo", 1'000'000'000, 1.0, 12));
    store.Insert(Make("d", "none", 7));  // stage profiles beside them, untouched
  }
  ProfileStore store(path);
  const auto gloo = store.Links("host/gloo");
  ASSERT_EQ(gloo.size(), 2u);
  EXPECT_EQ(gloo[0].recorded_at, 12);
  EXPECT_EQ(gloo[0].bytes_sent, 1'000'000'000);
  EXPECT_DOUBLE_EQ(gloo[1].bytes_per_second(), 1.5e9);
  EXPECT_EQ(gloo[1].ranks, 3);
  EXPECT_EQ(store.Links().size(), 3u);
  EXPECT_EQ(store.Links()[1].link, "host/nccl");
  EXPECT_EQ(store.All().size(), 1u);
  ExpectError([&] { store.InsertLink(link("", 1, 1, 1)); }, ErrorKind::kInvalidArgument, "link: accepted");
  LinkProfile one = link("host/gloo", 1, 1, 1);
  one.ranks = 1;
  ExpectError([&] { store.InsertLink(one); }, ErrorKind::kInvalidArgument, "ranks 1: accepted 2 or more");
  ExpectError([&] { store.InsertLink(link("host/gloo", 0, 1, 1)); }, ErrorKind::kInvalidArgument, "bytes_sent 0");
  ExpectError([&] { store.InsertLink(link("host/gloo", 5, 0, 1)); }, ErrorKind::kInvalidArgument,
              "exchange_seconds 0.000000: accepted a finite number above 0");
  EXPECT_EQ(store.Links().size(), 3u);
}

TEST(ProfileStore, SameTimestampOrdersByInsertion) {
  ScratchDir dir("profile-store-ties");
  ProfileStore store((dir / "p.sqlite").string());
  const int64_t first = store.Insert(Make("d", "none", 7));
  const int64_t second = store.Insert(Make("d", "none", 7));
  const auto rows = store.All();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].id, second);
  EXPECT_EQ(rows[1].id, first);
}

TEST(ProfileStore, SecondProcessReadsAndWritesWhileWalIsLive) {
  ScratchDir dir("profile-store-wal");
  const std::string path = (dir / "p.sqlite").string();
  ProfileStore mine(path);
  mine.Insert(Make("d", "none", 1));
  ASSERT_TRUE(fs::exists(path + "-wal")) << "WAL mode is not on";

  // Another connection in this process sees the row and writes one of its own.
  {
    ProfileStore other(path);
    EXPECT_EQ(other.All().size(), 1u);
    other.Insert(Make("d", "model", 2));
  }

  // A real second process, as a concurrent `reel generate` would be.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 1;
    try {
      ProfileStore child(path);
      if (child.All().size() == 2) {
        child.Insert(Make("d", "sequential", 3));
        code = 0;
      }
    } catch (...) {
      code = 2;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);

  const auto rows = mine.All();
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].profile.strategy, "sequential");
  EXPECT_EQ(rows[1].profile.strategy, "model");
  EXPECT_EQ(rows[2].profile.strategy, "none");
}

TEST(ProfileStore, MissingDirectoryIsOneIoErrorNamingThePath) {
  ScratchDir dir("profile-store-missing");
  const std::string path = (dir / "no" / "such" / "p.sqlite").string();
  ExpectError([&] { ProfileStore s(path); }, ErrorKind::kIo, path);
  EXPECT_FALSE(fs::exists(dir / "no"));
  ExpectError([&] { ProfileStore s(dir.path().string()); }, ErrorKind::kIo, dir.path().string() + ": is a directory");
}

TEST(ProfileStore, NonSqliteFileIsOneIoErrorNamingThePath) {
  ScratchDir dir("profile-store-notdb");
  for (size_t size : {size_t{20}, size_t{5000}}) {
    const std::string path = (dir / ("text-" + std::to_string(size))).string();
    {
      std::ofstream out(path);
      for (size_t i = 0; i < size; ++i) out << static_cast<char>('a' + i % 26);
    }
    ExpectError([&] { ProfileStore s(path); }, ErrorKind::kIo, path);
    // The file is left as it was: a user's stray file must not be converted into a database.
    EXPECT_EQ(fs::file_size(path), size);
  }
}

TEST(ProfileStore, RejectsInvalidProfilesWithoutStoringThem) {
  ScratchDir dir("profile-store-invalid");
  ProfileStore store((dir / "p.sqlite").string());
  StageProfile bad = Make("d", "none", 1);
  bad.stage = "upscaler";
  ExpectError([&] { store.Insert(bad); }, ErrorKind::kInvalidArgument, "upscaler");
  bad = Make("d", "none", 1);
  bad.peak_device_bytes = -5;
  ExpectError([&] { store.Insert(bad); }, ErrorKind::kInvalidArgument, "peak_device_bytes");
  EXPECT_TRUE(store.All().empty());
  store.Insert(Make("d", "none", 1));  // the store still works after a rejected insert
  EXPECT_EQ(store.All().size(), 1u);
}

TEST(ProfileStore, ProfileJsonRoundTripsAndNamesBadFields) {
  const StageProfile p = Make("d", "tiling=256", 42);
  EXPECT_EQ(StageProfile::FromJson(p.ToJson()), p);
  auto j = p.ToJson();
  j["frames"] = "many";
  ExpectError([&] { StageProfile::FromJson(j, "report.json stages[0]"); }, ErrorKind::kInvalidArgument,
              "report.json stages[0]: field 'frames' must be an integer");
  j = p.ToJson();
  j.erase("stage");
  ExpectError([&] { StageProfile::FromJson(j); }, ErrorKind::kInvalidArgument, "'stage' is missing");
}

TEST(ProfileStore, RunReportIsWrittenWholeAndReadsBack) {
  ScratchDir dir("profile-report");
  RunReport r;
  r.model = "tiny";
  r.frames = 9;
  r.height = 64;
  r.width = 64;
  r.steps = 4;
  r.seed = 1234567890123LL;
  r.total_seconds = 2.5;
  r.output = "fox.mp4";
  r.stages = {Make("t", "none", 1), Make("v", "slicing", 2)};
  const fs::path path = dir / "report.json";
  r.WriteReport(path);
  std::ifstream in(path);
  const RunReport back = RunReport::FromJson(nlohmann::json::parse(in));
  EXPECT_EQ(back.model, "tiny");
  EXPECT_EQ(back.seed, r.seed);
  ASSERT_EQ(back.stages.size(), 2u);
  EXPECT_EQ(back.stages[1], r.stages[1]);
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename(), "report.json") << "temporary file left behind";
  ExpectError([&] { WriteReport(r, dir / "missing" / "r.json"); }, ErrorKind::kInvalidArgument, "missing");
}

}  // namespace
}  // namespace reel
