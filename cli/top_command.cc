// `reel top`: a live view of the coordinator's workers, queue and throughput on a terminal (ANSI escapes, the
// alternate screen), or one plain frame with --once or when stdout is not a terminal. The screen itself is
// cli/top_view.cc's pure function; this file polls the coordinator and runs the terminal.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "cli/commands.h"
#include "cli/service_flags.h"
#include "cli/top_view.h"
#include "common/error.h"
#include "coordinator/coordinator.h"
#include "reel/v1/coordinator.grpc.pb.h"
#include "transfer/tensor_stream.h"

namespace reel::cli {

namespace v1 = reel::v1;

namespace {

struct TopFlags {
  std::string coordinator = DefaultCoordinatorAddress();
  double interval = 1.0;
  double window = 300;
  bool once = false;
};

constexpr int kActiveLimit = 1000;  // queued and running jobs listed
constexpr int kRecentLimit = 500;   // newest jobs listed for throughput and history

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string StageName(v1::Stage s) { return s == v1::STAGE_UNSPECIFIED ? "" : Lower(v1::Stage_Name(s)); }

TopWorker WorkerOf(const v1::WorkerInfo& w) {
  TopWorker t;
  t.name = w.name();
  t.device = w.device();
  t.state = w.state();
  if (w.state() == "busy") {
    t.job = w.job_id();
    t.stage = StageName(w.stage());
    t.step = w.step();
    t.steps = w.stage() == v1::DENOISER ? w.steps() : 0;
    t.guidance_branch = w.guidance_branch();
  }
  t.used_bytes = w.device_used_bytes();
  t.peak_bytes = w.device_peak_bytes();
  t.capacity_bytes = w.device_capacity_bytes();
  t.rss_bytes = w.host_rss_bytes();
  t.stages.assign(w.stages().begin(), w.stages().end());
  t.error = w.error();
  return t;
}

TopJob JobOf(const v1::Job& j) {
  TopJob t;
  t.id = j.id();
  t.state = Lower(v1::JobState_Name(j.state()));
  t.model = j.spec().model();
  t.priority = j.priority();
  t.frames = j.spec().frames();
  t.width = j.spec().width();
  t.height = j.spec().height();
  t.submitted_us = j.submitted_unix_us();
  t.started_us = j.started_unix_us();
  t.finished_us = j.finished_unix_us();
  t.error = j.error();
  // The first running stage is the one computing: a later one sent early is still waiting for its inputs.
  for (const auto& s : j.stages())
    if (s.state() == "running") {
      t.stage = StageName(s.stage());
      t.worker = s.worker();
      t.peer = s.guidance_peer();
      t.step = s.step();
      t.steps = s.stage() == v1::DENOISER ? s.steps() : 0;
      break;
    }
  return t;
}

// The coordinator's error in a word or two, shown ahead of its message.
std::string Describe(const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "unreachable";
    case grpc::StatusCode::UNIMPLEMENTED: return "does not serve reel.v1 listings";
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED: return "refused the listing";
    default: return fmt::format("failed (gRPC code {})", static_cast<int>(st.error_code()));
  }
}

// The same line and exit code as the other client commands give for an unreachable coordinator.
[[noreturn]] void Raise(const grpc::Status& st, const std::string& address) {
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    throw Unavailable(fmt::format("coordinator {}: unreachable ({}); start one with `reel serve` or "
                                  "`reel coordinator`, or pass --coordinator HOST:PORT",
                                  address, st.error_message()));
  throw Internal(fmt::format("coordinator {}: {}", address, st.error_message()));
}

// Workers and jobs in one snapshot: the whole queue, plus the newest jobs for throughput.
grpc::Status Fetch(v1::Coordinator::Stub& stub, double timeout_s, TopSnapshot* s) {
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  v1::ListWorkersResponse workers;
  v1::ListJobsResponse active, recent;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    const grpc::Status st = stub.ListWorkers(&ctx, v1::ListWorkersRequest{}, &workers);
    if (!st.ok()) return st;
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    v1::ListJobsRequest req;
    req.set_active_only(true);
    req.set_limit(kActiveLimit);
    const grpc::Status st = stub.ListJobs(&ctx, req, &active);
    if (!st.ok()) return st;
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    v1::ListJobsRequest req;
    req.set_limit(kRecentLimit);
    const grpc::Status st = stub.ListJobs(&ctx, req, &recent);
    if (!st.ok()) return st;
  }
  s->workers.clear();
  for (const auto& w : workers.workers()) s->workers.push_back(WorkerOf(w));
  std::sort(s->workers.begin(), s->workers.end(),
            [](const TopWorker& a, const TopWorker& b) { return a.name < b.name; });
  std::map<std::string, TopJob> jobs;
  for (const auto& j : recent.jobs()) jobs[j.id()] = JobOf(j);
  for (const auto& j : active.jobs()) jobs[j.id()] = JobOf(j);  // the later reading
  s->jobs.clear();
  for (auto& [id, j] : jobs) s->jobs.push_back(std::move(j));
  s->jobs_complete = recent.jobs_size() < kRecentLimit;
  s->has_data = true;
  s->data_us = NowUs();
  s->error.clear();
  s->error_detail.clear();
  return grpc::Status::OK;
}

void WriteAll(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(STDOUT_FILENO, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the terminal went away; nothing left to show it on
    done += static_cast<size_t>(n);
  }
}

// ---- the interactive terminal ----

int signal_pipe[2] = {-1, -1};

void OnSignal(int sig) {
  const int saved = errno;
  const char c = static_cast<char>(sig);
  (void)!::write(signal_pipe[1], &c, 1);
  errno = saved;
}

// Keys without echo or line buffering (Ctrl-C still signals), the alternate screen and a hidden cursor; all put
// back as they were when it goes, however the loop ends.
class TerminalMode {
 public:
  TerminalMode() {
    has_termios_ = ::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_) == 0;
    Enter();
  }
  ~TerminalMode() { Leave(); }
  TerminalMode(const TerminalMode&) = delete;
  TerminalMode& operator=(const TerminalMode&) = delete;

  void Enter() {
    if (has_termios_) {
      termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      ::tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    WriteAll("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
    active_ = true;
  }
  void Leave() {
    if (!active_) return;
    active_ = false;
    WriteAll("\x1b[0m\x1b[?25h\x1b[?1049l");
    if (has_termios_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  bool reads_keys() const { return has_termios_; }

 private:
  termios saved_{};
  bool has_termios_ = false;
  bool active_ = false;
};

void Size(int* width, int* height) {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
    *width = ws.ws_col;
    *height = ws.ws_row;
  } else {
    *width = 80;
    *height = 24;
  }
}

// One frame: each line cleared then written (a line as wide as the screen leaves the cursor in the last column,
// where erasing after it would take its last character), the rest of the screen cleared below.
void Draw(const TopSnapshot& s) {
  int width = 0, height = 0;
  Size(&width, &height);
  const std::vector<std::string> lines = RenderTop(s, width, height);
  std::string frame = "\x1b[H";
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) frame += "\r\n";
    frame += "\x1b[2K";
    frame += i == 0 ? "\x1b[1m" + lines[i] + "\x1b[0m" : lines[i];
  }
  if (lines.size() < static_cast<size_t>(height)) frame += "\r\n\x1b[J";
  WriteAll(frame);
}

class SignalHandlers {
 public:
  SignalHandlers() {
    if (::pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) throw IoError("reel top: cannot create a pipe");
    struct sigaction sa {};
    sa.sa_handler = OnSignal;
    sigemptyset(&sa.sa_mask);
    for (int sig : kSignals) ::sigaction(sig, &sa, &saved_[sig]);
  }
  ~SignalHandlers() {
    for (int sig : kSignals) ::sigaction(sig, &saved_[sig], nullptr);
    ::close(signal_pipe[0]);
    ::close(signal_pipe[1]);
    signal_pipe[0] = signal_pipe[1] = -1;
  }
  SignalHandlers(const SignalHandlers&) = delete;
  SignalHandlers& operator=(const SignalHandlers&) = delete;

  // Ctrl-Z: the terminal as it was while stopped, ours again on `fg`.
  void Suspend(TerminalMode& term) {
    term.Leave();
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    struct sigaction mine {};
    ::sigaction(SIGTSTP, &dfl, &mine);
    ::raise(SIGTSTP);  // stops here until SIGCONT
    ::sigaction(SIGTSTP, &mine, nullptr);
    term.Enter();
  }

 private:
  static constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGTSTP, SIGCONT};
  std::map<int, struct sigaction> saved_;
};

void RunInteractive(const TopFlags& f, v1::Coordinator::Stub& stub) {
  SignalHandlers signals;
  TerminalMode term;
  TopSnapshot snap;
  snap.coordinator = f.coordinator;
  snap.interval_s = f.interval;
  snap.window_s = f.window;
  snap.interactive = true;
  const double timeout_s = std::clamp(f.interval, 1.0, 5.0);
  auto next_fetch = std::chrono::steady_clock::now();
  bool dirty = true;
  for (;;) {
    if (std::chrono::steady_clock::now() >= next_fetch) {
      const grpc::Status st = Fetch(stub, timeout_s, &snap);
      if (!st.ok()) {
        snap.error = Describe(st);
        snap.error_detail = st.error_message();
      }
      next_fetch = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(f.interval * 1000));
      dirty = true;
    }
    if (dirty) {
      snap.now_us = NowUs();
      Draw(snap);
      dirty = false;
    }
    pollfd fds[2] = {{signal_pipe[0], POLLIN, 0}, {term.reads_keys() ? STDIN_FILENO : -1, POLLIN, 0}};
    const auto wait =
        std::chrono::duration_cast<std::chrono::milliseconds>(next_fetch - std::chrono::steady_clock::now());
    const int n = ::poll(fds, 2, static_cast<int>(std::max<int64_t>(wait.count(), 0)));
    if (n <= 0) continue;
    if (fds[0].revents & POLLIN) {
      char sigs[16];
      const ssize_t got = ::read(signal_pipe[0], sigs, sizeof sigs);
      for (ssize_t i = 0; i < got; ++i) {
        const int sig = sigs[i];
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) return;
        if (sig == SIGTSTP) signals.Suspend(term);
        dirty = true;  // SIGWINCH, SIGCONT: the size or the screen changed
      }
    }
    if (fds[1].revents & (POLLHUP | POLLERR | POLLNVAL)) return;  // the terminal closed
    if (fds[1].revents & POLLIN) {
      char keys[64];
      const ssize_t got = ::read(STDIN_FILENO, keys, sizeof keys);
      for (ssize_t i = 0; i < got; ++i) {
        if (keys[i] == 'q' || keys[i] == 'Q') return;
        if (keys[i] == ' ') next_fetch = std::chrono::steady_clock::now();  // refresh now
      }
    }
  }
}

void RunOnce(const TopFlags& f, v1::Coordinator::Stub& stub) {
  TopSnapshot snap;
  snap.coordinator = f.coordinator;
  snap.interval_s = f.interval;
  snap.window_s = f.window;
  snap.interactive = false;
  const grpc::Status st = Fetch(stub, 10, &snap);
  if (!st.ok()) Raise(st, f.coordinator);
  snap.now_us = NowUs();
  // A terminal's width when there is one; a pipe gets whole lines. Every line either way: nothing scrolls away.
  int width = 100000, height = 0;
  if (::isatty(STDOUT_FILENO)) Size(&width, &height);
  std::string out;
  for (const auto& line : RenderTop(snap, width, 1000000)) out += line + "\n";
  WriteAll(out);
}

void RunTop(const TopFlags& f) {
  if (!(f.interval >= 0.1 && f.interval <= 3600))
    throw InvalidArgument(fmt::format("--interval {}: accepted 0.1 to 3600 seconds", f.interval));
  if (!(f.window >= 10 && f.window <= 86400))
    throw InvalidArgument(fmt::format("--window {}: accepted 10 to 86400 seconds", f.window));
  if (f.coordinator.empty())
    throw InvalidArgument("--coordinator '': accepted HOST:PORT (or set $REEL_COORDINATOR)");
  auto stub = v1::Coordinator::NewStub(ChannelTo(f.coordinator));
  if (f.once || !::isatty(STDOUT_FILENO)) {
    RunOnce(f, *stub);
  } else {
    RunInteractive(f, *stub);
  }
}

}  // namespace

void AddTopCommand(CLI::App& app) {
  auto f = std::make_shared<TopFlags>();
  auto* c = app.add_subcommand("top", "Live view of workers, queue and throughput (q or Ctrl-C quits)");
  c->add_option("--coordinator", f->coordinator, "Coordinator HOST:PORT (or $REEL_COORDINATOR)");
  AddClientSecurityFlags(*c);  // --tls-cert/--tls-key/--tls-ca/--token-file, as every client command
  c->add_option("--interval", f->interval, "Seconds between refreshes")->default_val(1.0);
  c->add_option("--window", f->window, "Seconds of history the throughput is computed over")->default_val(300);
  c->add_flag("--once", f->once, "Print one plain frame and exit (also when stdout is not a terminal)");
  c->callback([f] { RunTop(*f); });
}

}  // namespace reel::cli
