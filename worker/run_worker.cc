// The worker process: its flags checked, its device opened, the service started on its port, then registration
// with the coordinator, heartbeats, drain and signals (the decisions in control.h), until it is told to leave.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/printable.h"
#include "profiler/host_memory.h"
#include "profiler/metrics.h"
#include "reel/v1/coordinator.grpc.pb.h"
#include "runtime/sequence_parallel.h"
#include "security/transport_security.h"
#include "transfer/tensor_stream.h"
#include "worker/control.h"
#include "worker/stage_io.h"
#include "worker/worker_service.h"

namespace reel {

namespace v1 = reel::v1;

namespace {

std::string HostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

}  // namespace

int RunWorker(const WorkerOptions& o) {
  SetWorkerDevice(OpenComputeDevice(o.device, "--device"));
  if (o.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = all cores)", o.threads));
  if (o.sequence_parallel != "loopback" && o.sequence_parallel != "network" && o.sequence_parallel != "off")
    throw InvalidArgument(fmt::format("--sequence-parallel '{}': accepted loopback, network or off",
                                      Printable(o.sequence_parallel)));
  if (o.drain_seconds < 0 || o.drain_seconds > 3600)
    throw InvalidArgument(fmt::format("--drain-seconds {}: accepted 0 to 3600", o.drain_seconds));
  if (o.device_memory < 0)
    throw InvalidArgument(fmt::format("--device-memory {}: accepted a positive size", o.device_memory));
  if (o.max_message_bytes < kDefaultChunkBytes + (64 << 10) || o.max_message_bytes > INT32_MAX)
    throw InvalidArgument(fmt::format("--max-message-bytes {}: accepted {} (a tensor chunk and its header) to {}",
                                      o.max_message_bytes, kDefaultChunkBytes + (64 << 10), INT32_MAX));
  const TransportSecurity security = LoadSecurity(o.security);
  CheckListen(o.listen, security);
  SetClientSecurity(security);  // its calls to the coordinator and other workers present the same credentials
  // The coordinator and other workers verify this worker's certificate against the host it advertises: a
  // certificate that does not name it would fail every one of their handshakes, so it is one line here instead.
  if (security.tls.enabled()) {
    const std::string listen_host = o.listen.substr(0, o.listen.rfind(':'));
    const std::string host = listen_host == "0.0.0.0" || listen_host == "[::]" ? HostName() : listen_host;
    if (const std::string problem = CertificateNameProblem(security.tls.cert_pem, host); !problem.empty())
      throw InvalidArgument(fmt::format("{} {}: does not name {}, the host this worker is reached at ({}); the "
                                        "coordinator would refuse every connection to it. Accepted a certificate "
                                        "whose subjectAltName names {} (docs/SECURITY.md), or a --listen host it "
                                        "names",
                                        o.security.tls.cert_name, o.security.tls.cert, host, problem, host));
  }
  // Refused now, before anything is dialled: the token never goes to a coordinator in clear off loopback.
  if (const std::string refusal = ClientChannelRefusal(o.coordinator); !refusal.empty())
    throw InvalidArgument("--coordinator " + refusal);

  // Signals are taken by sigwait on this thread only; every thread started from here inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  WorkerDevice().SetCapacity(o.device_memory);
  std::unique_ptr<Metrics> metrics;
  if (!o.metrics.empty()) {
    metrics = std::make_unique<Metrics>();
    metrics->Serve(o.metrics);
  }
  const std::unique_ptr<WorkerService> owned = MakeWorkerService(o, metrics.get());
  WorkerService& service = *owned;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.listen, ServerCredentials(security), &port);
  ConfigureServer(builder);
  builder.SetMaxReceiveMessageSize(static_cast<int>(o.max_message_bytes));  // --max-message-bytes
  builder.SetMaxSendMessageSize(static_cast<int>(o.max_message_bytes));
  // Pings on its connections: a guidance branch or tensor fetch whose caller was stopped (SIGSTOP, a hung host)
  // ends within seconds instead of holding the device until the caller wakes.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0)
    throw InvalidArgument(fmt::format("--listen {}: cannot listen there; accepted HOST:PORT that is free (port 0 "
                                      "picks one)",
                                      o.listen));
  const std::string host_part = o.listen.substr(0, o.listen.rfind(':'));
  const std::string address = fmt::format("{}:{}", host_part == "0.0.0.0" || host_part == "[::]" ? HostName()
                                                                                                 : host_part,
                                          port);
  const std::string name =
      o.name.empty() ? fmt::format("{}-{}-{}", HostName(), o.device, ::getpid()) : o.name;
  service.set_name(name);
  service.set_address(address);
  spdlog::info("worker {} ({}) serving on {} ({}); coordinator {}{}", name, o.device, address, security.Describe(),
               o.coordinator, metrics ? fmt::format("; metrics on port {}", metrics->port()) : "");

  // Sequence parallelism's store and all-to-alls have neither TLS nor the token: offered on loopback unless told.
  const bool offers_sequence =
      SequenceParallelBuilt() && (o.sequence_parallel == "network" ||
                                  (o.sequence_parallel == "loopback" &&
                                   IsLoopbackHost(address.substr(0, address.rfind(':')))));
  if (o.sequence_parallel == "network" && SequenceParallelBuilt())
    spdlog::warn("worker {}: --sequence-parallel network: its sequence-parallel exchanges cross the network without "
                 "TLS or the token",
                 name);

  std::atomic<bool> stop{false};      // the control thread ends
  std::atomic<bool> draining{false};  // a stop signal came: finish, tell the coordinator, leave
  std::atomic<bool> drained{false};   // nothing keeps it any more (the coordinator was told it is going)
  std::atomic<int> exit_code{0};
  std::mutex mu;
  std::condition_variable cv;
  std::thread control([&] {
    auto stub = v1::Coordinator::NewStub(ChannelTo(o.coordinator));
    worker::ControlState state;  // its registration, as worker/control.h decides it
    auto leave = [&](const std::string& id, bool going, v1::LeaveResponse* resp) {
      v1::LeaveRequest req;
      req.set_worker_id(id);
      req.set_going(going);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      return stub->Leave(&ctx, req, resp);
    };
    auto reply_of = [](const grpc::Status& st) {
      if (st.ok()) return worker::Reply::kOk;
      if (st.error_code() == grpc::StatusCode::NOT_FOUND) return worker::Reply::kNotFound;
      if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
        return worker::Reply::kUnreachable;
      return worker::Reply::kRefused;
    };
    while (!stop) {
      const bool was_draining = draining;  // the drain starting wakes it at once
      worker::Outcome out;
      switch (worker::NextCall(state, was_draining, service.busy())) {
        case worker::Call::kNone:
          drained = true;
          break;
        case worker::Call::kWait:
          out.wait_ms = worker::WaitMs(state, true);
          break;
        case worker::Call::kAskToLeave: {
          v1::LeaveResponse resp;
          const grpc::Status st = leave(state.id, false, &resp);
          out = worker::OnAskToLeave(state, reply_of(st), resp.stages_running(), resp.tensors_needed(),
                                     service.busy());
          if (!out.leave_id.empty()) {
            v1::LeaveResponse bye;
            leave(out.leave_id, true, &bye);
            spdlog::info("worker {}: drained; left the coordinator", name);
          }
          break;
        }
        case worker::Call::kRegister: {
          if (worker::TakeForgotten(state)) {
            // The coordinator restarted or declared it lost: the stages its tensors came from run again elsewhere.
            if (const int n = service.DropTensors(); n > 0)
              spdlog::info("worker {}: dropped {} tensor(s) of earlier runs", name, n);
          }
          v1::RegisterRequest req;
          req.set_name(name);
          req.set_host(HostName());
          req.set_address(address);
          req.set_device(o.device);
          req.set_device_capacity_bytes(o.device_memory);
          req.set_host_memory_bytes(MachineMemory().total_bytes);
          req.set_pid(::getpid());
          req.set_version("0.1.0");
          req.set_sequence_parallel(offers_sequence);
          v1::RegisterResponse resp;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          const grpc::Status st = stub->Register(&ctx, req, &resp);
          out = worker::OnRegister(state, reply_of(st), resp.worker_id(), resp.heartbeat_interval_ms());
          if (st.ok()) spdlog::info("worker {}: registered as {}", name, state.id);
          // Once, with gRPC's reason (a certificate that does not name the coordinator's host shows here).
          if (out.warn)
            spdlog::warn("worker {}: coordinator {} unreachable ({}); retrying", name, o.coordinator,
                         Printable(st.error_message(), 400));
          if (out.exit) {
            spdlog::error("worker {}: the coordinator refused registration: {}", name, st.error_message());
            exit_code = 2;
            stop = true;
            ::kill(::getpid(), SIGTERM);
          }
          break;
        }
        case worker::Call::kHeartbeat: {
          v1::HeartbeatRequest req;
          req.set_worker_id(state.id);
          const auto mem = WorkerDevice().Memory();
          req.set_device_used_bytes(mem.allocated);
          req.set_device_peak_bytes(mem.peak);
          req.set_host_rss_bytes(HostRssBytes());
          req.set_tensors_held(service.tensors_held());
          v1::HeartbeatResponse resp;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
          const std::string was = state.id;
          out = worker::OnHeartbeat(state, reply_of(stub->Heartbeat(&ctx, req, &resp)));
          if (state.id.empty()) spdlog::info("worker {}: the coordinator no longer knows {}; registering again", name, was);
          break;
        }
      }
      if (out.drained) drained = true;
      if (drained || out.exit) break;
      if (out.again_now) continue;
      std::unique_lock lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(out.wait_ms),
                  [&] { return stop.load() || draining.load() != was_draining; });
    }
    if (!state.id.empty() && exit_code == 0) {
      // Stopping before its drain finished: the coordinator hears it now rather than after the lease, and runs
      // what it still had elsewhere.
      v1::LeaveResponse bye;
      leave(state.id, true, &bye);
    }
  });

  int sig = 0;
  sigwait(&sigs, &sig);
  if (exit_code == 0 && o.drain_seconds > 0) {
    spdlog::info("worker {}: draining: finishing its stage, then leaving (within --drain-seconds {})", name,
                 o.drain_seconds);
    {
      std::lock_guard lock(mu);
      draining = true;
    }
    cv.notify_all();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.drain_seconds);
    while (!drained) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::steady_clock::duration::zero()) {
        spdlog::warn("worker {}: still busy after --drain-seconds {}; leaving anyway", name, o.drain_seconds);
        break;
      }
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(100)))
                          .count();
      const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      if (sigtimedwait(&sigs, nullptr, &ts) > 0) {
        spdlog::warn("worker {}: a second signal; leaving now", name);
        break;
      }
    }
  }
  {
    std::lock_guard lock(mu);
    stop = true;
  }
  cv.notify_all();
  control.join();
  spdlog::info("worker {}: stopping", name);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return exit_code;
}

}  // namespace reel
