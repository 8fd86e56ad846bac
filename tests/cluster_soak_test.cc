// Soak: 200 small jobs through a coordinator and three workers on loopback while a chaos thread kills workers at
// random (mostly SIGKILL, sometimes a SIGTERM drain) and starts them again under the same name. Bounded in time.
// Every job must end SUCCEEDED exactly once — one success in the coordinator's log, one succeeded row in its store,
// one output — and every output must be a valid video: decodable with the job's frame count, and the same bytes as
// the output of the job submitted with the same seed, however often either was interrupted.
// REEL_SOAK_SEED=N replays a chaos schedule (the seed is printed).
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "tests/cluster_harness.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using testing::Cluster;
using testing::CommandResult;
using testing::Quote;
using testing::RunCommand;
using testing::ScratchDir;
using testing::WaitFor;
namespace v1 = reel::v1;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kJobs = 200;
constexpr int kWorkers = 3;
constexpr double kBoundSeconds = 300;  // all jobs end within this, chaos included (about 60 s on an idle 2-core machine)

// A small job: every third is guided (two denoiser passes, possibly split across two workers), so kills land in
// guidance-parallel runs too. Jobs i and i + kJobs/2 are the same job: their videos must match byte for byte.
v1::SubmitJobRequest SoakJob(int i) {
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  const int k = i % (kJobs / 2);
  s->set_model("tiny");
  s->set_prompt("soak " + std::to_string(k));
  s->set_frames(9);
  s->set_height(64);
  s->set_width(64);
  s->set_steps(4);
  s->set_guidance(k % 3 == 0 ? 6.0 : 1.0);
  s->set_seed(k);
  return req;
}

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int FramesIn(const fs::path& mp4) {
  const CommandResult r = RunCommand("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                                     "stream=nb_read_frames -of csv=p=0 " +
                                     Quote(mp4.string()));
  return r.exit_code == 0 ? std::atoi(r.output.c_str()) : -1;
}

TEST(ClusterSoakTest, EveryJobCompletesExactlyOnceWhileWorkersAreKilledAndRestarted) {
  ScratchDir scratch("cluster-soak");
  ::setenv("REEL_CACHE_DIR", (scratch.path() / "cache").c_str(), 1);
  Cluster cluster(REEL_BINARY, scratch.path());
  // Attempts are not the point here: a job unlucky enough to lose its worker often still has to finish.
  ASSERT_TRUE(cluster.StartCoordinator({"--no-plan", "--max-attempts", "50"}));
  std::vector<std::string> names;
  for (int w = 0; w < kWorkers; ++w) {
    names.push_back("w" + std::to_string(w));
    cluster.StartWorker(names.back());
  }
  ASSERT_TRUE(cluster.WaitIdle(kWorkers));

  const char* env = std::getenv("REEL_SOAK_SEED");
  const unsigned seed = env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : std::random_device{}();
  std::cout << "chaos seed " << seed << " (REEL_SOAK_SEED replays it)\n";

  std::vector<std::string> ids;
  for (int i = 0; i < kJobs; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::SubmitJobResponse resp;
    const grpc::Status st = cluster.stub().SubmitJob(&ctx, SoakJob(i), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ids.push_back(resp.job_id());
  }
  ASSERT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());

  // Chaos: every 0.3–1.2 s a random worker is killed (SIGKILL 4 times in 5, else SIGTERM, whose drain is cut short
  // after 2 s) and started again 0.1–0.8 s later. The main thread only talks to the coordinator meanwhile.
  // The processes it starts die with the thread that started them (PR_SET_PDEATHSIG follows the forking thread),
  // so it stays until the test ends.
  std::atomic<bool> chaos{true}, quiet{false}, finished{false};
  std::atomic<int> kills{0}, drains{0};
  std::thread monkey([&] {
    std::mt19937 rng(seed);
    auto ms = [&](int lo, int hi) { return std::chrono::milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng)); };
    while (chaos) {
      std::this_thread::sleep_for(ms(300, 1200));
      if (!chaos) break;
      const std::string& victim = names[std::uniform_int_distribution<int>(0, kWorkers - 1)(rng)];
      if (std::uniform_int_distribution<int>(0, 4)(rng) == 0) {
        cluster.worker(victim).Signal(SIGTERM);
        if (cluster.worker(victim).Wait(2) == -1) cluster.worker(victim).Stop(SIGKILL);
        ++drains;
      } else {
        cluster.worker(victim).Stop(SIGKILL);
        ++kills;
      }
      std::this_thread::sleep_for(ms(100, 800));
      cluster.StartWorker(victim);  // the same name: it registers again
    }
    quiet = true;
    while (!finished) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  });
  struct Join {
    std::atomic<bool>& chaos;
    std::atomic<bool>& finished;
    std::thread& t;
    ~Join() {
      chaos = false;
      finished = true;
      t.join();
    }
  } join{chaos, finished, monkey};

  // Wait for every job to end, within the bound.
  const auto start = Clock::now();
  std::map<std::string, v1::Job> ended;
  bool all = WaitFor(
      [&] {
        for (const auto& id : ids) {
          if (ended.count(id)) continue;
          v1::Job j;
          if (!cluster.GetJob(id, &j).ok()) return false;  // the coordinator is never restarted here: must answer
          if (j.state() == v1::SUCCEEDED || j.state() == v1::FAILED || j.state() == v1::CANCELLED) ended[id] = j;
        }
        return ended.size() == ids.size();
      },
      kBoundSeconds);
  chaos = false;
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  std::cout << ended.size() << " of " << ids.size() << " jobs ended in " << took << " s; " << kills << " kills, "
            << drains << " drains\n";
  while (!quiet) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // its last restart is under way
  ASSERT_TRUE(all) << ended.size() << " of " << ids.size() << " jobs ended in " << kBoundSeconds << " s\n"
                   << cluster.Logs();

  // The chaos did something: workers died with jobs on them, and those jobs ran again.
  EXPECT_GE(kills + drains, 10);
  int attempts = 0, rerun = 0;
  for (const auto& [id, j] : ended) {
    EXPECT_EQ(j.state(), v1::SUCCEEDED) << id << ": " << j.error();
    attempts += j.attempts();
    rerun += j.attempts() > 1;
  }
  std::cout << rerun << " jobs ran more than once; " << attempts << " attempts in all\n";
  EXPECT_GT(rerun, 0) << "no kill interrupted a job";

  // Exactly once: one success line per job in the coordinator's log, one succeeded row per job in its store.
  const std::string log = cluster.coordinator().Log();
  for (const auto& id : ids) {
    const std::regex line("job " + id + " succeeded\\n");
    EXPECT_EQ(std::distance(std::sregex_iterator(log.begin(), log.end(), line), std::sregex_iterator()), 1) << id;
  }
  const CommandResult rows = RunCommand("sqlite3 " + Quote((cluster.data() / "jobs.db").string()) +
                                        " 'SELECT state, COUNT(*) FROM jobs GROUP BY state'");
  EXPECT_EQ(rows.output, "succeeded|" + std::to_string(kJobs) + "\n");

  // One output per job and nothing else (no partial or temporary file), each a valid video, and the two runs of
  // each job agree byte for byte.
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(cluster.data() / "outputs")) files.insert(e.path().filename().string());
  std::set<std::string> expected;
  for (const auto& id : ids) expected.insert(id + ".mp4");
  EXPECT_EQ(files, expected);
  for (int i = 0; i < kJobs; ++i) {
    const fs::path out = cluster.data() / "outputs" / (ids[i] + ".mp4");
    EXPECT_EQ(FramesIn(out), 9) << ids[i];
    if (i < kJobs / 2) {
      EXPECT_TRUE(Read(out) == Read(cluster.data() / "outputs" / (ids[i + kJobs / 2] + ".mp4")))
          << ids[i] << " and " << ids[i + kJobs / 2] << " ran the same job and made different videos";
    }
  }

  // Every worker is back, registered once under its name, and idle.
  EXPECT_TRUE(WaitFor(
      [&] {
        std::multiset<std::string> idle;
        const v1::ListWorkersResponse list = cluster.Workers();
        for (const auto& w : list.workers())
          if (w.state() == "idle") idle.insert(w.name());
        return idle == std::multiset<std::string>(names.begin(), names.end());
      },
      20));
  if (HasFailure()) std::cerr << cluster.Logs();
}

}  // namespace
}  // namespace reel
