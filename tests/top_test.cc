// `reel top` as a person sees it: the real command on a pseudo-terminal against `reel serve` (and a coordinator
// that starts late), its output applied to a screen model and read back as rows. It shows the workers with their device memory, a
// job with its stage and progress, throughput once jobs succeed; it quits on q and on Ctrl-C leaving the terminal
// as it was, follows a resize, retries an unreachable coordinator, and prints one plain frame for scripts.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "tests/cluster_harness.h"
#include "tests/terminal_screen.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using testing::CommandResult;
using testing::Process;
using testing::PtyProcess;
using testing::RunCommand;
using testing::ScratchDir;
using testing::TerminalScreen;
using testing::WaitFor;

// About 2 s of denoising at 64x64 (a few ms a step): several refreshes see the denoiser running.
constexpr const char* kJob = "--model tiny --prompt 'a red fox' --frames 9 --height 64 --width 64 --steps 400";

bool Has(const TerminalScreen& s, const std::string& text) { return s.Text().find(text) != std::string::npos; }

// The row that starts with `prefix`, or "".
std::string Row(const TerminalScreen& s, const std::string& prefix) {
  for (const auto& r : s.Rows())
    if (r.rfind(prefix, 0) == 0) return r;
  return "";
}

bool RowHas(const TerminalScreen& s, const std::string& prefix, const std::vector<std::string>& parts) {
  const std::string r = Row(s, prefix);
  if (r.empty()) return false;
  for (const auto& p : parts)
    if (r.find(p) == std::string::npos) return false;
  return true;
}

// A loopback port nothing listens on (free when asked).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool Cooked(const termios& t) { return (t.c_lflag & ICANON) && (t.c_lflag & ECHO); }

class TopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("top");
    // ctest's REEL_CACHE_DIR when given (the tiny preset is synthesized once for every test), else our own.
    if (!std::getenv("REEL_CACHE_DIR")) ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override {
    dir_ = scratch_->path() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  // What the terminal showed last, for a failing check's message.
  static std::string Shown(const PtyProcess& top) {
    return "--- screen\n" + top.screen().Text() + "--- alternate " + std::to_string(top.screen().alternate());
  }

  static CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

  static ScratchDir* scratch_;
  std::filesystem::path dir_;
};

ScratchDir* TopTest::scratch_ = nullptr;

// The cluster as users start it: `reel serve` (a coordinator and workers w0, w1 in one command).
struct Serve {
  testing::Process process;
  std::string address;
  Serve(const std::filesystem::path& dir)
      : process({REEL_BINARY, "serve", "--workers", "2", "--device-memory", "1GiB", "--threads", "1", "--data",
                 (dir / "data").string(), "--listen", "127.0.0.1:0"},
                dir / "serve.log") {
    if (testing::WaitFor([&] { return std::filesystem::exists(dir / "data" / "coordinator.address"); }, 60))
      std::ifstream(dir / "data" / "coordinator.address") >> address;
  }
  std::string Logs() const { return "--- reel serve\n" + process.Log(); }
};

TEST_F(TopTest, ShowsWorkersJobsAndThroughputAndQuitsOnQ) {
  std::filesystem::create_directories(dir_);
  Serve cluster(dir_);
  ASSERT_FALSE(cluster.address.empty()) << cluster.Logs();

  PtyProcess top({REEL_BINARY, "top", "--coordinator", cluster.address, "--interval", "0.2"}, 120, 40);
  ASSERT_TRUE(top.started());
  // Both workers, idle, with device memory used / peak / capacity and the stages they hold.
  ASSERT_TRUE(top.WaitScreen(
      [](const TerminalScreen& s) {
        return RowHas(s, "w0 ", {"cpu", "idle", "1.00 GiB", "tiny/denoiser"}) &&
               RowHas(s, "w1 ", {"cpu", "idle", "1.00 GiB", "tiny/denoiser"});
      },
      20))
      << Shown(top) << cluster.Logs();
  EXPECT_TRUE(top.screen().alternate());
  EXPECT_FALSE(top.screen().cursor_visible());
  EXPECT_FALSE(Cooked(top.Modes())) << "keys are read one at a time without echo while it runs";
  EXPECT_EQ(Row(top.screen(), "reel top - " + cluster.address).find("q quits") != std::string::npos, true)
      << Shown(top);
  EXPECT_TRUE(Has(top.screen(), "WORKERS 2: 2 idle")) << Shown(top);

  // Three jobs on two workers: one runs its denoiser while another waits or runs beside it.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    const CommandResult r = Reel("submit --coordinator " + cluster.address + " " + kJob + " --seed " +
                                 std::to_string(i) + " 2>/dev/null");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ids.push_back(r.output.substr(0, r.output.find('\n')));
  }
  // A job row with its stage, where it runs and a progress bar; the worker's row names the job and stage.
  ASSERT_TRUE(top.WaitScreen(
      [&](const TerminalScreen& s) {
        for (const auto& id : ids)
          if (RowHas(s, id + " ", {"running", "denoiser on w", "/400"}) &&
              (RowHas(s, "w0 ", {"busy", id + " denoiser"}) || RowHas(s, "w1 ", {"busy", id + " denoiser"})))
            return true;
        return false;
      },
      60))
      << Shown(top) << cluster.Logs();

  // Once they succeed: throughput over the recent window, jobs/min and frames/s above zero.
  ASSERT_TRUE(top.WaitScreen([](const TerminalScreen& s) { return Has(s, "3 succeeded, 0 failed"); }, 90))
      << Shown(top) << cluster.Logs();
  const std::string throughput = Row(top.screen(), "throughput, last ");
  double per_min = 0, per_s = 0;
  ASSERT_EQ(std::sscanf(throughput.substr(throughput.find(": ")).c_str(), ": %lf jobs/min, %lf frames/s", &per_min,
                        &per_s),
            2)
      << throughput;
  EXPECT_GT(per_min, 0) << throughput;
  EXPECT_GT(per_s, 0) << throughput;
  for (const auto& id : ids) EXPECT_TRUE(RowHas(top.screen(), id + " ", {"succeeded", "9x64x64"})) << Shown(top);
  EXPECT_TRUE(Has(top.screen(), "queue: 0 queued, 0 running")) << Shown(top);
  EXPECT_FALSE(top.screen().overflowed()) << "a line wider than the terminal wrapped";
  EXPECT_EQ(top.screen().scrolls(), 0) << "a frame taller than the terminal scrolled";

  // q: exit 0, the main screen back, the cursor shown, line editing and echo restored.
  top.Type("q");
  const int status = top.Wait(10);
  ASSERT_TRUE(WIFEXITED(status)) << status << Shown(top);
  EXPECT_EQ(WEXITSTATUS(status), 0) << Shown(top);
  EXPECT_FALSE(top.screen().alternate()) << Shown(top);
  EXPECT_TRUE(top.screen().cursor_visible());
  EXPECT_TRUE(Cooked(top.Modes()));

  // Not a terminal (a pipe): one plain frame, no escapes, exit 0; --once too.
  for (const std::string flags : {"", " --once"}) {
    const CommandResult r = Reel("top --coordinator " + cluster.address + flags);  // stdout is a pipe
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("q quits"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("WORKERS 2: 2 idle"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("3 succeeded"), std::string::npos) << r.output;
  }
}

TEST_F(TopTest, RetriesUntilTheCoordinatorAnswersAndQuitsOnCtrlC) {
  const std::string address = fmt::format("127.0.0.1:{}", FreePort());
  PtyProcess top({REEL_BINARY, "top", "--coordinator", address, "--interval", "0.3"}, 100, 30);
  ASSERT_TRUE(top.started());
  ASSERT_TRUE(top.WaitScreen(
      [&](const TerminalScreen& s) {
        return RowHas(s, "! coordinator " + address, {"unreachable", "retrying every 0.3s"});
      },
      20))
      << Shown(top);

  // The coordinator comes up on that address: the next refresh shows it, the warning gone.
  Process coordinator({REEL_BINARY, "coordinator", "--listen", address, "--data", (dir_ / "data").string()},
                      dir_ / "coordinator.log");
  ASSERT_TRUE(top.WaitScreen(
      [](const TerminalScreen& s) { return Has(s, "(no workers registered)") && !Has(s, "unreachable"); }, 60))
      << Shown(top) << coordinator.Log();
  EXPECT_TRUE(Has(top.screen(), "WORKERS 0")) << Shown(top);

  // Ctrl-C quits as q does.
  top.Type("\x03");
  const int status = top.Wait(10);
  ASSERT_TRUE(WIFEXITED(status)) << status << Shown(top);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(top.screen().alternate()) << Shown(top);
  EXPECT_TRUE(top.screen().cursor_visible());
  EXPECT_TRUE(Cooked(top.Modes()));
}

TEST_F(TopTest, RedrawsForTheNewSizeOnResize) {
  const std::string address = fmt::format("127.0.0.1:{}", FreePort());
  // A refresh a minute away: only the resize itself can redraw the screen within the test.
  PtyProcess top({REEL_BINARY, "top", "--coordinator", address, "--interval", "60"}, 120, 30);
  ASSERT_TRUE(top.started());
  ASSERT_TRUE(top.WaitScreen([](const TerminalScreen& s) { return Has(s, "unreachable"); }, 20)) << Shown(top);
  ASSERT_GT(Row(top.screen(), "! coordinator").size(), 40u) << "the line must be wider than the new width";

  top.Resize(40, 6);
  ASSERT_TRUE(top.WaitScreen(
      [](const TerminalScreen& s) { return s.Rows()[0].rfind("reel top", 0) == 0 && Has(s, "! coordinator"); }, 10))
      << Shown(top);
  EXPECT_FALSE(top.screen().overflowed()) << "lines are cut to the new width:\n" << Shown(top);
  EXPECT_EQ(Row(top.screen(), "! coordinator").size(), 40u) << Shown(top);

  top.Type("q");
  const int status = top.Wait(10);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(top.screen().alternate());
  EXPECT_TRUE(Cooked(top.Modes()));
}

TEST_F(TopTest, OnceAgainstNoCoordinatorIsOneLineAndExitCode1) {
  const std::string address = fmt::format("127.0.0.1:{}", FreePort());
  CommandResult r = Reel("top --once --coordinator " + address);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_EQ(r.output.rfind("reel: error: coordinator " + address + ": unreachable", 0), 0u) << r.output;

  r = Reel("top --interval 0 --coordinator " + address);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "reel: error: --interval 0: accepted 0.1 to 3600 seconds\n");
  r = Reel("top --window 5 --once --coordinator " + address);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "reel: error: --window 5: accepted 10 to 86400 seconds\n");
}

}  // namespace
}  // namespace reel
