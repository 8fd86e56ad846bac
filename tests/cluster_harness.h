// Real coordinator and worker processes on loopback ports chosen at run time, for integration tests and
// benchmarks: started from the `reel` binary, queried over reel.v1, stopped (and their logs shown) at the end.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <future>

#include "reel/v1/coordinator.grpc.pb.h"
#include "tests/child_process.h"
#include "tests/test_util.h"
#include "transfer/tensor_stream.h"

namespace reel::testing {


// grpc.health.v1.Health/Check on `address`, spoken without its generated code: an empty request (the server as a
// whole) and the reply's bytes. True when the reply is SERVING (field 1 = 1).
inline bool HealthServing(const std::string& address) {
  grpc::GenericStub stub(ChannelTo(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status st) { done.set_value(st); });
  if (!done.get_future().get().ok()) return false;
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string bytes;
  for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return bytes == std::string("\x08\x01", 2);
}

inline bool WaitFor(const std::function<bool()>& cond, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return cond();
}

class Cluster {
 public:
  Cluster(std::string binary, std::filesystem::path dir) : binary_(std::move(binary)), dir_(std::move(dir)) {
    std::filesystem::create_directories(dir_);
  }
  ~Cluster() {
    for (auto& [name, w] : workers_) w->StopNow();
    if (coordinator_) coordinator_->StopNow();
  }

  std::filesystem::path data() const { return dir_ / "data"; }

  // Starts a coordinator on a free loopback port; returns false if it did not come up in 30 s.
  bool StartCoordinator(const std::vector<std::string>& extra = {}) { return ListenCoordinator("127.0.0.1:0", extra); }
  // Starts the coordinator again on the address it had and the same data directory (after it was killed or
  // stopped), so workers and clients that knew it find it again.
  bool RestartCoordinator(const std::vector<std::string>& extra = {}) {
    if (coordinator_) coordinator_->Stop(SIGKILL);  // reaps it when it is already gone
    return ListenCoordinator(address_, extra);
  }
  bool ListenCoordinator(const std::string& listen, const std::vector<std::string>& extra) {
    std::filesystem::remove(data() / "coordinator.address");
    std::vector<std::string> args = {binary_, "coordinator", "--listen", listen, "--data", data().string(),
                                     "--heartbeat-ms", "200", "--worker-timeout-ms", "1500"};
    args.insert(args.end(), extra.begin(), extra.end());
    coordinator_ = std::make_unique<Process>(args, dir_ / "coordinator.log");
    if (!WaitFor([&] { return std::filesystem::exists(data() / "coordinator.address"); }, 60)) return false;
    std::ifstream in(data() / "coordinator.address");
    in >> address_;
    stub_ = reel::v1::Coordinator::NewStub(ChannelTo(address_));
    return true;
  }
  Process& coordinator() { return *coordinator_; }
  void KillCoordinator() { coordinator_->Stop(SIGKILL); }

  // `key` names the process in this harness (default: the worker's name, so two processes can share a name).
  void StartWorker(const std::string& name, const std::vector<std::string>& extra = {}, std::string key = "") {
    if (key.empty()) key = name;
    std::vector<std::string> args = {binary_, "worker", "--coordinator", address_, "--name", name,
                                     "--threads", "1", "--listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    workers_[key] = std::make_unique<Process>(args, dir_ / (key + ".log"));
  }
  Process& worker(const std::string& name) { return *workers_.at(name); }

  // Waits until `n` workers are idle (stages loaded).
  bool WaitIdle(size_t n, double seconds = 60) {
    return WaitFor(
        [&] {
          size_t idle = 0;
          const auto list = Workers();
          for (const auto& w : list.workers()) idle += w.state() == "idle";
          return idle >= n;
        },
        seconds);
  }

  reel::v1::ListWorkersResponse Workers() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    reel::v1::ListWorkersResponse resp;
    stub_->ListWorkers(&ctx, reel::v1::ListWorkersRequest{}, &resp);
    return resp;
  }

  grpc::Status GetJob(const std::string& id, reel::v1::Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    reel::v1::GetJobRequest req;
    req.set_job_id(id);
    return stub_->GetJob(&ctx, req, job);
  }

  reel::v1::Job Job(const std::string& id) {
    reel::v1::Job j;
    GetJob(id, &j);
    return j;
  }

  // Waits for a job to end; returns it.
  reel::v1::Job WaitJob(const std::string& id, double seconds = 120) {
    reel::v1::Job j;
    WaitFor(
        [&] {
          j = Job(id);
          return j.state() == reel::v1::SUCCEEDED || j.state() == reel::v1::FAILED ||
                 j.state() == reel::v1::CANCELLED;
        },
        seconds);
    return j;
  }

  reel::v1::Coordinator::Stub& stub() { return *stub_; }
  const std::string& address() const { return address_; }

  // Every process's log, for a failing test's output.
  std::string Logs() const {
    std::string out = "--- coordinator\n" + (coordinator_ ? coordinator_->Log() : "");
    for (const auto& [name, w] : workers_) out += "--- " + name + "\n" + w->Log();
    return out;
  }

 private:
  std::string binary_;
  std::filesystem::path dir_;
  std::unique_ptr<Process> coordinator_;
  std::map<std::string, std::unique_ptr<Process>> workers_;
  std::string address_;
  std::unique_ptr<reel::v1::Coordinator::Stub> stub_;
};

// A job's record of one stage (an empty record when the job has none).
inline const reel::v1::StageRun& StageOf(const reel::v1::Job& j, reel::v1::Stage s) {
  for (const auto& st : j.stages())
    if (st.stage() == s) return st;
  static const reel::v1::StageRun none;
  return none;
}

// The decoded RGB of an MP4 (ffmpeg), for comparing videos frame for frame; empty when it cannot be decoded.
inline std::string DecodedRgb(const std::filesystem::path& mp4) {
  const auto raw = mp4.string() + ".rgb";
  const CommandResult r =
      RunCommand("ffmpeg -v error -y -i " + Quote(mp4.string()) + " -f rawvideo -pix_fmt rgb24 " + Quote(raw));
  if (r.exit_code != 0) return {};
  std::ifstream in(raw, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace reel::testing
