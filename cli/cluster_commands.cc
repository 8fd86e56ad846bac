// The distributed commands: `reel coordinator`, `reel worker`, `reel serve` (both in one command) and the clients
// `reel submit`, `reel jobs`, `reel job`, `reel cancel`, `reel workers`.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/job_flags.h"
#include "cli/reconnect.h"
#include "cli/service_flags.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/printable.h"
#include "common/utf8.h"
#include "common/progress.h"
#include "coordinator/coordinator.h"
#include "profiler/host_memory.h"
#include "reel/v1/coordinator.grpc.pb.h"
#include "security/transport_security.h"
#include "transfer/server_status.h"
#include "transfer/tensor_stream.h"
#include "worker/worker.h"

namespace reel::cli {

namespace fs = std::filesystem;
namespace v1 = reel::v1;

namespace {

// A TLS client refused during the handshake, or a plaintext client whose connection a TLS server closed.
bool IsHandshakeFailure(const std::string& message) {
  for (const char* sign : {"handshake", "Handshake", "SSL", "ssl", "certificate"})
    if (message.find(sign) != std::string::npos) return true;
  return message.find("Socket closed") != std::string::npos && !ClientSecurityFlags().WithEnvironmentDefaults().tls.any();
}

// A gRPC failure as the one line a user sees, with the exit code its kind deserves.
[[noreturn]] void Raise(const grpc::Status& status, const std::string& address) {
  // Never an empty line, and nothing a server wrote reaches the terminal unescaped.
  const grpc::Status filled = WithMessage(status, "coordinator " + address);
  const grpc::Status st(filled.error_code(), TerminalText(filled.error_message()));
  switch (st.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT: throw InvalidArgument(st.error_message());
    case grpc::StatusCode::NOT_FOUND: throw NotFound(st.error_message());
    case grpc::StatusCode::UNAUTHENTICATED: throw InvalidArgument(fmt::format("coordinator {}: {}", address,
                                                                              st.error_message()));
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      // gRPC's own refusal of a large message names the sizes but not the flag.
      if (st.error_message().find("larger than max") != std::string::npos)
        throw InvalidArgument(fmt::format("coordinator {}: {}; the coordinator's --max-message-bytes raises its "
                                          "limit",
                                          address, st.error_message()));
      throw Unavailable(st.error_message());
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      if (IsHandshakeFailure(st.error_message()))
        throw Unavailable(fmt::format("coordinator {}: no TLS connection ({}); if it serves TLS, give --tls-cert, "
                                      "--tls-key and --tls-ca (or $REEL_TLS_*) that its CA signed and trusts",
                                      address, st.error_message()));
      throw Unavailable(fmt::format("coordinator {}: unreachable ({}); start one with `reel serve` or "
                                    "`reel coordinator`, or pass --coordinator HOST:PORT",
                                    address, st.error_message()));
    default: throw Internal(st.error_message());
  }
}

std::unique_ptr<v1::Coordinator::Stub> Connect(const std::string& address) {
  return v1::Coordinator::NewStub(ChannelTo(address));
}

void Deadline(grpc::ClientContext& ctx, int seconds = 10) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string StateName(v1::JobState s) {
  std::string n = v1::JobState_Name(s);
  for (auto& c : n) c = static_cast<char>(std::tolower(c));
  return n;
}

std::string StageName(v1::Stage s) {
  std::string n = v1::Stage_Name(s);
  for (auto& c : n) c = static_cast<char>(std::tolower(c));
  return n;
}

std::string Ago(int64_t unix_us) {
  if (unix_us <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_us / 1000000);
  char buf[32];
  std::strftime(buf, sizeof buf, "%H:%M:%S", std::localtime(&t));
  return buf;
}

std::string Seconds(int64_t from_us, int64_t to_us) {
  if (from_us <= 0) return "-";
  if (to_us <= 0) to_us = std::chrono::duration_cast<std::chrono::microseconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
  return fmt::format("{:.1f}s", (to_us - from_us) / 1e6);
}

// What the job is doing now, in a few words (control characters escaped: it goes to a terminal).
std::string Activity(const v1::Job& j) {
  for (const auto& s : j.stages())
    if (s.state() == "running") {
      std::string a = fmt::format("{} on {}", StageName(s.stage()), TerminalText(s.worker()));
      for (const auto& p : s.sequence_peers()) a += "+" + TerminalText(p);
      if (!s.guidance_peer().empty()) a += "+" + TerminalText(s.guidance_peer());
      for (const auto& p : s.sequence_guidance_peers()) a += "+" + TerminalText(p);
      if (s.steps() > 0 && s.stage() == v1::DENOISER) a += fmt::format(" ({}/{})", s.step(), s.steps());
      return a;
    }
  if (j.state() == v1::FAILED) return TerminalText(j.error());
  return "";
}

// With `reconnect`, a coordinator that is away (restarting) is waited for.
void Download(v1::Coordinator::Stub& stub, const std::string& address, const std::string& job, const fs::path& out,
              Reconnect* reconnect = nullptr) {
  grpc::Status st;
  std::string error;
  std::shared_ptr<const TensorBlob> blob;
  do {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(job);
    auto reader = stub.DownloadOutput(&ctx, req);
    blob = ReadTensor(*reader, ctx, &st, &error);
  } while (!st.ok() && reconnect && reconnect->Again(st, "downloading the output of " + job));
  if (!st.ok()) {
    if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) throw InvalidArgument(st.error_message());
    Raise(st, address);
  }
  if (!blob) throw IoError(fmt::format("downloading job {}: {}", job, error));
  AtomicFile file(out, "--out");
  {
    std::ofstream f(file.temp_path(), std::ios::binary);
    f.write(blob->data.data(), static_cast<std::streamsize>(blob->data.size()));
    if (!f) throw IoError(fmt::format("--out {}: write failed", out.string()));
  }
  file.Commit();
}

void CheckOut(const std::string& out) {
  const fs::path p(out);
  if (p.extension() != ".mp4") throw InvalidArgument(fmt::format("--out {}: accepted a file name ending in .mp4", out));
  RequireWritableDirectory(p.has_parent_path() ? p.parent_path() : fs::path("."), "--out");
}

// ---- coordinator / worker / serve ----

struct ServeFlags {
  CoordinatorOptions coordinator;
  int workers = 2;
  std::string device_memory;
  int threads = 0;
};

void AddCoordinatorFlags(CLI::App& c, CoordinatorOptions& o) {
  c.add_option("--listen", o.listen, "HOST:PORT for the gRPC API (port 0 picks a free one)")->default_val(o.listen);
  c.add_option("--metrics", o.metrics, "HOST:PORT to serve Prometheus /metrics on");
  c.add_option("--data", o.data, "Data directory: jobs.db, profiles.db, outputs/ (default ~/.local/share/reel)");
  c.add_option("--model", o.models, "Model(s) to serve: presets or package directories")->default_val("tiny");
  c.add_option("--placement", o.placement,
               "Placement file: which worker holds which stages (docs/COORDINATOR.md); default: the planner decides");
  c.add_flag("!--no-plan", o.plan, "Without a placement file, every worker holds every stage with no offload");
  c.add_option("--plan-objective", o.plan_objective, "What the planned placement optimises: throughput or latency")
      ->default_val(o.plan_objective)
      ->check(CLI::IsMember({"throughput", "latency"}));
  c.add_option("--plan-dtype", o.plan_dtype,
               "package: stages compute in their package's dtype (as reel generate); any: the plan may pick bf16/f16")
      ->default_val(o.plan_dtype)
      ->check(CLI::IsMember({"package", "any"}));
  c.add_option("--plan-margin", o.plan_margin, "Fraction of every device's and host's memory the plan keeps free")
      ->default_val(o.plan_margin)
      ->check(CLI::Range(0.0, 0.9));
  c.add_flag("!--no-guidance-parallel", o.guidance_parallel,
             "Never split a guided denoise across two workers");
  c.add_option("--heartbeat-ms", o.heartbeat_ms, "Worker heartbeat interval")->default_val(o.heartbeat_ms);
  c.add_option("--worker-timeout-ms", o.worker_timeout_ms, "A worker silent this long is lost")
      ->default_val(o.worker_timeout_ms);
  c.add_option("--drain-seconds", o.drain_seconds,
               "On SIGTERM: accept no jobs and let running ones finish for at most this long, then stop")
      ->default_val(o.drain_seconds);
  c.add_option("--keep-ended-jobs", o.ended_jobs_kept,
               "Ended jobs kept in memory for listings; older ones are read from the store when asked for")
      ->default_val(o.ended_jobs_kept);
  c.add_option("--max-attempts", o.max_attempts,
               "A job is failed once it has started this many times (lost workers, failed calls) without finishing")
      ->default_val(o.max_attempts);
  AddServerSecurityFlags(c, o.security);
  AddModelRootFlag(c, o.model_roots);
  AddLimitFlags(c, o.limits);
}

void RunServe(ServeFlags& f) {
  if (f.workers < 1 || f.workers > 64) throw InvalidArgument(fmt::format("--workers {}: accepted 1 to 64", f.workers));
  if (!f.device_memory.empty()) ParseSize(f.device_memory, "--device-memory");
  if (f.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = share the cores)", f.threads));
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const int threads = f.threads > 0 ? f.threads : std::max(1, cores / f.workers);

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  Coordinator coordinator(f.coordinator);
  coordinator.Start();
  // Local workers reach it over loopback, whatever it listens on (a certificate names 127.0.0.1, not 0.0.0.0).
  std::string local_address = coordinator.address();
  for (const char* any : {"0.0.0.0:", "[::]:"})
    if (local_address.rfind(any, 0) == 0) local_address = "127.0.0.1:" + local_address.substr(std::strlen(any));
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::map<pid_t, std::string> children;
  for (int i = 0; i < f.workers; ++i) {
    const std::string name = fmt::format("w{}", i);
    std::vector<std::string> args = {self,     "worker",      "--coordinator", local_address,
                                     "--name", name,          "--threads",     std::to_string(threads),
                                     "--device", "cpu"};
    for (const auto& a : WorkerArgs(f.coordinator.security, f.coordinator.model_roots, f.coordinator.limits))
      args.push_back(a);
    if (!f.device_memory.empty()) {
      args.push_back("--device-memory");
      args.push_back(f.device_memory);
    }
    const pid_t pid = ::fork();
    if (pid < 0) throw IoError("reel serve: cannot start a worker process");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // workers never outlive `reel serve`
      sigset_t none;
      sigemptyset(&none);
      pthread_sigmask(SIG_SETMASK, &none, nullptr);
      ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(self.c_str(), argv.data());
      std::fprintf(stderr, "reel serve: cannot run %s: %s\n", self.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    children[pid] = name;
  }
  std::printf("reel serve: coordinator on %s with %d worker(s), %d thread(s) each; data in %s\n",
              coordinator.address().c_str(), f.workers, threads, f.coordinator.data.string().c_str());
  std::fflush(stdout);
  for (;;) {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig != SIGCHLD) break;
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      spdlog::error("reel serve: worker {} exited ({})", children[pid],
                    WIFEXITED(status) ? fmt::format("status {}", WEXITSTATUS(status))
                                      : fmt::format("signal {}", WTERMSIG(status)));
      children.erase(pid);
    }
  }
  // Running jobs finish on the workers first; then the workers, idle by then, leave at once.
  DrainCoordinator(coordinator, sigs, f.coordinator.drain_seconds);
  spdlog::info("reel serve: stopping");
  for (const auto& [pid, name] : children) ::kill(pid, SIGTERM);
  for (const auto& [pid, name] : children) ::waitpid(pid, nullptr, 0);
  coordinator.Shutdown();
}

// ---- clients ----

struct SubmitFlags {
  JobFlags job;
  int priority = 0;
  std::string objective = "throughput";
  bool wait = false;
  int reconnect_seconds = 60;
  std::string out;
  std::string coordinator = DefaultCoordinatorAddress();
  std::string request_id;  // empty: a random one
};

// 128 random bits in hex: the request id a submission is retried under (AIP-155).
std::string NewRequestId() {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < 4; ++i) out += fmt::format("{:08x}", rd());
  return out;
}

std::string ReadFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("{} {}: cannot read the file", flag, path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One update of a followed job: a line when its activity changes, the progress bar while it denoises.
void Show(const v1::Job& job, const std::string& id, std::string& last, std::unique_ptr<Progress>& progress) {
  for (const auto& s : job.stages()) {
    if (s.stage() == v1::DENOISER && s.state() == "running" && s.steps() > 0) {
      if (!progress) progress = std::make_unique<Progress>("denoise", s.steps());
      progress->Step(s.step());
    }
  }
  const std::string activity = StateName(job.state()) + (Activity(job).empty() ? "" : ": " + Activity(job));
  const bool stepping = progress && activity.find("denoiser on") != std::string::npos;
  if (activity != last && !stepping) {
    if (progress) {
      progress->Finish();
      progress.reset();
    }
    spdlog::info("{} {}", TerminalText(id), activity);
  }
  last = activity;
}

// The coordinator is away (stopped, restarting), as opposed to refusing this client.
bool CoordinatorAway(const grpc::Status& st) {
  return st.error_code() == grpc::StatusCode::UNAVAILABLE && !IsHandshakeFailure(st.error_message());
}

// Follows a job until it ends, showing its stages and denoising progress on stderr. When the coordinator goes away
// (a restart), it is watched again once the coordinator is back, within the reconnect window.
v1::Job Follow(v1::Coordinator::Stub& stub, const std::string& address, const std::string& id, Reconnect& reconnect) {
  v1::Job job;
  std::string last;
  std::unique_ptr<Progress> progress;
  for (;;) {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(id);
    auto reader = stub.WatchJob(&ctx, req);
    while (reader->Read(&job)) {
      reconnect.Reached();
      Show(job, id, last, progress);
    }
    grpc::Status st = reader->Finish();
    const bool ended = job.state() == v1::SUCCEEDED || job.state() == v1::FAILED || job.state() == v1::CANCELLED;
    if (st.ok() && ended) break;
    if (st.ok()) st = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the watch ended before the job did");
    if (progress) {
      progress->Finish();
      progress.reset();
    }
    if (reconnect.Again(st, "lost while following " + id)) continue;
    if (reconnect.Outage(st) && reconnect.seconds() > 0)
      throw Unavailable(fmt::format("coordinator {}: unreachable for {:.0f} s while following {} (--reconnect-seconds "
                                    "{}); the job is kept: `reel job {} --out FILE` gets its video once the "
                                    "coordinator is back",
                                    address, reconnect.away_seconds(), id, reconnect.seconds(), id));
    Raise(st, address);
  }
  if (progress) progress->Finish();
  return job;
}

void RunSubmit(SubmitFlags& f) {
  CheckJobText(f.job);  // refused here as `reel generate` refuses it, before anything is sent
  if (!f.out.empty()) CheckOut(f.out);
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  const GenerateRequest& r = f.job.request;
  s->set_model(f.job.model);
  s->set_prompt(r.prompt);
  s->set_negative_prompt(r.negative_prompt);
  s->set_frames(f.job.frames.value_or(0));
  s->set_height(f.job.height.value_or(0));
  s->set_width(f.job.width.value_or(0));
  s->set_steps(f.job.steps.value_or(0));
  s->set_fps(f.job.fps.value_or(0));
  s->set_guidance(r.guidance);
  s->set_dynamic_cfg(r.dynamic_cfg);
  s->set_seed(r.seed);
  for (const auto& [flag, v] : {std::pair{"--frames", f.job.frames}, {"--height", f.job.height},
                                {"--width", f.job.width}, {"--steps", f.job.steps}, {"--fps", f.job.fps}})
    if (v && *v <= 0) throw InvalidArgument(fmt::format("{} {}: accepted a positive number", flag, *v));
  if (!r.image.empty()) {
    s->set_image(ReadFile(r.image, "--image"));
    s->set_image_name(Printable(r.image, 1024));  // for messages only; a file name need not be UTF-8, the field must
  }
  req.set_priority(f.priority);
  s->set_objective(f.objective);  // checked by the coordinator, which names the flag
  if (f.request_id.size() > 128)
    throw InvalidArgument(fmt::format("--request-id: {} bytes; accepted at most 128", f.request_id.size()));
  req.set_request_id(f.request_id.empty() ? NewRequestId() : f.request_id);
  if (f.reconnect_seconds < 0 || f.reconnect_seconds > 86400)
    throw InvalidArgument(fmt::format("--reconnect-seconds {}: accepted 0 to 86400", f.reconnect_seconds));
  auto stub = Connect(f.coordinator);
  Reconnect reconnect(f.coordinator, f.reconnect_seconds, CoordinatorAway);
  v1::SubmitJobResponse resp;
  for (;;) {
    grpc::ClientContext ctx;
    Deadline(ctx, 30);
    const grpc::Status st = stub->SubmitJob(&ctx, req, &resp);
    if (st.ok()) break;
    // Sent again after a refusal that queued nothing, or a call whose reply may have been lost (the coordinator
    // restarting, the connection breaking): the request id makes a retry return the job the first try queued, so a
    // job is never submitted twice.
    const bool lost = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                      st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!(Draining(st) || lost) || !reconnect.Again(st, lost ? "submitting" : "draining")) Raise(st, f.coordinator);
  }
  reconnect.Reached();
  std::printf("%s\n", TerminalText(resp.job_id()).c_str());
  std::fflush(stdout);
  if (!f.wait) return;
  const v1::Job job = Follow(*stub, f.coordinator, resp.job_id(), reconnect);
  if (job.state() != v1::SUCCEEDED)
    throw Internal(fmt::format("job {} {}: {}", TerminalText(job.id()), StateName(job.state()),
                               TerminalText(job.error())));
  const std::string out = f.out.empty() ? resp.job_id() + ".mp4" : f.out;
  Download(*stub, f.coordinator, job.id(), out, &reconnect);
  std::fprintf(stderr, "wrote %s (%d frames, %dx%d) in %s\n", out.c_str(), job.spec().frames(), job.spec().width(),
               job.spec().height(), Seconds(job.submitted_unix_us(), job.finished_unix_us()).c_str());
}

struct ListFlags {
  std::string coordinator = DefaultCoordinatorAddress();
  bool json = false;
  bool active = false;
  int limit = 20;
  std::string id, out;
};

void PrintJobs(const v1::ListJobsResponse& resp) {
  std::printf("%-10s %-10s %4s %-14s %-12s %5s %9s %8s  %s\n", "ID", "STATE", "PRIO", "MODEL", "SHAPE", "STEPS",
              "SUBMITTED", "TIME", "NOW");
  for (const auto& j : resp.jobs()) {
    const auto& s = j.spec();
    std::printf("%-10s %-10s %4d %-14s %-12s %5d %9s %8s  %s\n", TerminalText(j.id()).c_str(),
                StateName(j.state()).c_str(), j.priority(), TerminalText(s.model()).c_str(),
                fmt::format("{}x{}x{}", s.frames(), s.width(), s.height()).c_str(),
                s.steps(), Ago(j.submitted_unix_us()).c_str(),
                Seconds(j.started_unix_us(), j.finished_unix_us()).c_str(), Activity(j).c_str());
  }
}

void RunJobs(ListFlags& f) {
  if (f.limit < 1) throw InvalidArgument(fmt::format("--limit {}: accepted 1 or more", f.limit));
  auto stub = Connect(f.coordinator);
  // Page by page (AIP-158), so a listing stays bounded on the coordinator however many jobs its store holds.
  v1::ListJobsResponse resp;
  std::string token;
  do {
    grpc::ClientContext page_ctx;
    Deadline(page_ctx);
    v1::ListJobsRequest req;
    req.set_page_size(std::min(f.limit - resp.jobs_size(), 1000));
    req.set_page_token(token);
    req.set_active_only(f.active);
    v1::ListJobsResponse page;
    const grpc::Status st = stub->ListJobs(&page_ctx, req, &page);
    if (!st.ok()) Raise(st, f.coordinator);
    for (auto& j : *page.mutable_jobs()) *resp.add_jobs() = std::move(j);
    token = page.next_page_token();
  } while (!token.empty() && resp.jobs_size() < f.limit);
  if (f.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return;
  }
  PrintJobs(resp);
}

void RunJob(ListFlags& f) {
  RequireUtf8("job id", f.id);
  if (!f.out.empty()) CheckOut(f.out);
  auto stub = Connect(f.coordinator);
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::GetJobRequest req;
  req.set_job_id(f.id);
  v1::Job j;
  const grpc::Status st = stub->GetJob(&ctx, req, &j);
  if (!st.ok()) Raise(st, f.coordinator);
  if (f.json) {
    std::printf("%s\n", ToJson(j).c_str());
  } else {
    const auto& s = j.spec();
    // Stored text as another client wrote it: escaped, so no control sequence reaches this terminal.
    std::printf("job %s: %s (priority %d, attempts %d)\n", TerminalText(j.id()).c_str(),
                StateName(j.state()).c_str(), j.priority(), j.attempts());
    std::printf("  %s, \"%s\", %d frames %dx%d, %d steps, guidance %.2g%s, seed %llu\n",
                TerminalText(s.model()).c_str(), TerminalText(s.prompt()).c_str(), s.frames(), s.width(), s.height(),
                s.steps(), s.guidance(), s.dynamic_cfg() ? " (dynamic)" : "", static_cast<unsigned long long>(s.seed()));
    std::printf("  submitted %s, queued %s, ran %s\n", Ago(j.submitted_unix_us()).c_str(),
                Seconds(j.submitted_unix_us(), j.started_unix_us()).c_str(),
                Seconds(j.started_unix_us(), j.finished_unix_us()).c_str());
    for (const auto& st2 : j.stages()) {
      std::string where = st2.worker().empty() ? "" : " on " + TerminalText(st2.worker());
      if (st2.sequence_peers_size() > 0) {
        // Ranks in order; with the guided batch split besides, their unconditional halves' workers after them.
        std::string ranks, uncond = TerminalText(st2.guidance_peer());
        for (const auto& p : st2.sequence_peers()) ranks += ", " + TerminalText(p);
        for (const auto& p : st2.sequence_guidance_peers()) uncond += ", " + TerminalText(p);
        where += ranks + " (sequence-parallel" +
                 (st2.guidance_peer().empty() ? ")" : "; the unconditional halves on " + uncond + ")");
      } else if (!st2.guidance_peer().empty()) {
        where += " + " + TerminalText(st2.guidance_peer()) + " (guidance-parallel)";
      }
      std::printf("  %-13s %-9s%s%s\n", StageName(st2.stage()).c_str(), st2.state().c_str(), where.c_str(),
                  st2.finished_unix_us() > 0
                      ? fmt::format(" {}", Seconds(st2.started_unix_us(), st2.finished_unix_us())).c_str()
                      : "");
    }
    if (!j.error().empty()) std::printf("  error: %s\n", TerminalText(j.error()).c_str());
  }
  if (!f.out.empty()) {
    Download(*stub, f.coordinator, f.id, f.out);
    std::fprintf(stderr, "wrote %s\n", f.out.c_str());
  }
}

void RunCancel(ListFlags& f) {
  RequireUtf8("job id", f.id);
  auto stub = Connect(f.coordinator);
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::GetJobRequest req;
  req.set_job_id(f.id);
  v1::Job j;
  const grpc::Status st = stub->CancelJob(&ctx, req, &j);
  if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION) throw InvalidArgument(st.error_message());
  if (!st.ok()) Raise(st, f.coordinator);
  std::printf("cancelled %s\n", TerminalText(j.id()).c_str());
}

void RunWorkers(ListFlags& f) {
  auto stub = Connect(f.coordinator);
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::ListWorkersResponse resp;
  const grpc::Status st = stub->ListWorkers(&ctx, v1::ListWorkersRequest{}, &resp);
  if (!st.ok()) Raise(st, f.coordinator);
  if (f.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return;
  }
  std::printf("%-12s %-8s %-22s %-6s %-22s %-10s %6s  %s\n", "NAME", "STATE", "ADDRESS", "DEVICE", "DEVICE MEMORY",
              "HOST RSS", "RUNS", "STAGES");
  for (const auto& w : resp.workers()) {
    const std::string mem =
        w.device_capacity_bytes() > 0
            ? fmt::format("{} / {}", FormatBytes(w.device_used_bytes()), FormatBytes(w.device_capacity_bytes()))
            : fmt::format("{} / -", FormatBytes(w.device_used_bytes()));
    std::string stages;
    for (const auto& s : w.stages()) stages += (stages.empty() ? "" : ", ") + TerminalText(s);
    if (!w.error().empty()) stages += (stages.empty() ? "" : "; ") + TerminalText(w.error());
    std::string state = TerminalText(w.state());
    if (state == "busy") state += " " + TerminalText(w.job_id());
    std::printf("%-12s %-8s %-22s %-6s %-22s %-10s %6lld  %s\n", TerminalText(w.name()).c_str(), state.c_str(),
                TerminalText(w.address()).c_str(), TerminalText(w.device()).c_str(), mem.c_str(),
                FormatBytes(w.host_rss_bytes()).c_str(),
                static_cast<long long>(w.stages_run()), stages.c_str());
  }
  if (resp.workers().empty()) std::printf("(no workers registered; models served: %s)\n",
                                          fmt::format("{}", fmt::join(resp.models(), ", ")).c_str());
}

// --coordinator on every client command, and --json where there is a table to replace.
void AddClientFlags(CLI::App& c, std::string& coordinator, bool* json = nullptr) {
  c.add_option("--coordinator", coordinator, "Coordinator HOST:PORT (or $REEL_COORDINATOR)");
  AddClientSecurityFlags(c);
  if (json) c.add_flag("--json", *json, "JSON for scripts");
}

}  // namespace

void TuneOnCoordinator(const std::string& address_flag, const v1::TuneClusterRequest& request,
                       const std::function<void(const v1::TuneClusterEvent&)>& each) {
  const std::string address = address_flag.empty() ? DefaultCoordinatorAddress() : address_flag;
  auto stub = Connect(address);
  grpc::ClientContext ctx;  // no deadline: measuring every candidate on every worker takes what it takes
  auto reader = stub->Tune(&ctx, request);
  v1::TuneClusterEvent ev;
  while (reader->Read(&ev)) each(ev);
  const grpc::Status st = reader->Finish();
  if (!st.ok()) Raise(st, address);
}

std::string PlanOnCoordinator(const std::string& address_flag, const PlanQuery& q) {
  const std::string address = address_flag.empty() ? DefaultCoordinatorAddress() : address_flag;
  auto stub = Connect(address);
  v1::PlanJobRequest req;
  req.set_model(q.model);
  req.set_frames(q.frames);
  req.set_height(q.height);
  req.set_width(q.width);
  req.set_steps(q.steps);
  if (q.guidance) req.set_guidance(*q.guidance);
  req.set_objective(q.objective);
  req.set_margin(q.margin);
  req.set_explain(q.explain);
  req.set_allow_int8(q.allow_int8);
  v1::PlanJobResponse resp;
  grpc::ClientContext ctx;
  Deadline(ctx, 60);
  const grpc::Status st = stub->PlanJob(&ctx, req, &resp);
  if (!st.ok()) Raise(st, address);
  return resp.report_json();
}

void AddClusterCommands(CLI::App& app) {
  {
    auto o = std::make_shared<CoordinatorOptions>();
    auto* c = app.add_subcommand("coordinator", "Run the coordinator: job queue, placement, dispatch, client API");
    AddCoordinatorFlags(*c, *o);
    c->callback([o] {
      if (o->data.empty()) o->data = DefaultDataDir();
      CommandExitCode() = RunCoordinator(*o);
    });
  }
  {
    auto o = std::make_shared<WorkerOptions>();
    auto mem = std::make_shared<std::string>();
    auto* c = app.add_subcommand("worker", "Run a worker for one device; it registers with the coordinator");
    c->add_option("--coordinator", o->coordinator, "Coordinator HOST:PORT")->default_val(DefaultCoordinatorAddress());
    c->add_option("--device", o->device, "cpu or cuda:N")->default_val("cpu");
    c->add_option("--device-memory", *mem, "Capacity of the (simulated) device, e.g. 12GiB");
    c->add_option("--listen", o->listen, "HOST:PORT for the worker API (port 0 picks a free one)")
        ->default_val(o->listen);
    c->add_option("--metrics", o->metrics, "HOST:PORT to serve Prometheus /metrics on");
    c->add_option("--name", o->name, "Name in placement files and listings (default HOST-DEVICE-PID)");
    c->add_option("--threads", o->threads, "Intra-op CPU threads (0 = all cores)")->default_val(0);
    c->add_flag("--no-oom-retry", o->no_oom_retry,
                "A stage out of device memory fails instead of running again with a cheaper strategy");
    AddServerSecurityFlags(*c, o->security);
    AddModelRootFlag(*c, o->model_roots);
    c->add_option("--max-message-bytes", o->max_message_bytes, "Largest gRPC message it receives or sends")
        ->default_val(o->max_message_bytes);
    c->add_option("--drain-seconds", o->drain_seconds,
                  "On SIGTERM: finish the running stage and hand over its tensors for at most this long, then exit")
        ->default_val(o->drain_seconds);
    c->add_option("--sequence-parallel", o->sequence_parallel,
                  "Offer to share denoises with other workers (latency jobs): loopback (only on a loopback address), "
                  "network (any address; the exchanges have no TLS or token: trusted networks only), off")
        ->default_val(o->sequence_parallel);
    c->callback([o, mem] {
      if (!mem->empty()) o->device_memory = ParseSize(*mem, "--device-memory");
      CommandExitCode() = RunWorker(*o);
    });
  }
  {
    auto f = std::make_shared<ServeFlags>();
    auto* c = app.add_subcommand("serve", "Start a coordinator and N local workers in one command");
    AddCoordinatorFlags(*c, f->coordinator);
    c->add_option("--workers", f->workers, "Local worker processes")->default_val(2);
    c->add_option("--device-memory", f->device_memory, "Each worker's (simulated) device capacity, e.g. 12GiB");
    c->add_option("--threads", f->threads, "Intra-op threads per worker (0 = cores / workers)")->default_val(0);
    c->callback([f] {
      if (f->coordinator.data.empty()) f->coordinator.data = DefaultDataDir();
      RunServe(*f);
    });
  }
  {
    auto f = std::make_shared<SubmitFlags>();
    auto* c = app.add_subcommand("submit", "Queue a job with the coordinator; prints its id");
    AddJobFlags(*c, f->job);
    c->add_option("--priority", f->priority, "Higher runs first; FIFO within a priority (-1000..1000)")
        ->default_val(0);
    c->add_option("--objective", f->objective,
                  "throughput: the cluster's jobs per hour (one worker, or two for guidance); latency: this job's own "
                  "time (its denoise may take several idle workers, sequence-parallel)")
        ->default_val(f->objective);
    c->add_flag("--wait", f->wait, "Follow the job and download its MP4 when it succeeds");
    c->add_option("--request-id", f->request_id,
                  "Retries under the same id return the same job (default: a random one per call)");
    c->add_option("--reconnect-seconds", f->reconnect_seconds,
                  "How long to keep reconnecting to a coordinator that went away (a restart): the submission, retried under "
                  "its request id, and with --wait the job")
        ->default_val(f->reconnect_seconds);
    c->add_option("--out", f->out, "With --wait: where to write the MP4 (default JOB.mp4)");
    AddClientFlags(*c, f->coordinator);
    c->callback([f] { RunSubmit(*f); });
  }
  {
    auto f = std::make_shared<ListFlags>();
    auto* c = app.add_subcommand("jobs", "List jobs, newest first");
    AddClientFlags(*c, f->coordinator, &f->json);
    c->add_flag("--active", f->active, "Only queued and running jobs");
    c->add_option("--limit", f->limit, "At most this many")->default_val(20);
    c->callback([f] { RunJobs(*f); });
  }
  {
    auto f = std::make_shared<ListFlags>();
    auto* c = app.add_subcommand("job", "Show one job; --out downloads its MP4");
    c->add_option("id", f->id, "Job id")->required();
    AddClientFlags(*c, f->coordinator, &f->json);
    c->add_option("--out", f->out, "Download the job's MP4 here");
    c->callback([f] { RunJob(*f); });
  }
  {
    auto f = std::make_shared<ListFlags>();
    auto* c = app.add_subcommand("cancel", "Cancel a queued or running job");
    c->add_option("id", f->id, "Job id")->required();
    AddClientFlags(*c, f->coordinator);
    c->callback([f] { RunCancel(*f); });
  }
  {
    auto f = std::make_shared<ListFlags>();
    auto* c = app.add_subcommand("workers", "List registered workers");
    AddClientFlags(*c, f->coordinator, &f->json);
    c->callback([f] { RunWorkers(*f); });
  }
}

}  // namespace reel::cli
