// `reel coordinator`: the control plane. Keeps the job queue in SQLite under the data directory, places stages
// on the workers that register, dispatches each job's stages to workers holding them (several jobs in flight, so
// different stages of different jobs run at once), and serves clients. Tensors never pass through it.
#pragma once

#include <signal.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/limits.h"
#include "security/security_flags.h"

namespace reel {

struct CoordinatorOptions {
  std::string listen = "127.0.0.1:7070";
  std::string metrics;  // HOST:PORT for /metrics, empty for none
  std::filesystem::path data;
  std::vector<std::string> models = {"tiny"};  // presets or package directories it serves
  std::string placement;  // placement file (docs/COORDINATOR.md); empty: the planner places stages
  bool plan = true;       // false (and no placement file): every worker holds every stage with no offload
  std::string plan_objective = "throughput";  // what the default placement optimises: throughput | latency
  std::string plan_dtype = "package";  // package: each stage's own dtype; any: the planner may pick bf16/f16
  double plan_margin = 0.10;                  // fraction of every device's and host's memory the plan keeps free
  int plan_settle_ms = 300;  // the worker set must be still this long before it is planned (workers start together)
  bool guidance_parallel = true;               // split guided denoising across two idle denoiser workers
  int heartbeat_ms = 1000;
  int worker_timeout_ms = 5000;  // a worker silent this long is lost
  int drain_seconds = 30;        // on SIGTERM: how long running jobs may take to finish before it stops anyway
  int ended_jobs_kept = 1000;    // ended jobs kept in memory for listings; older ones are read from the store
  int max_attempts = 3;          // a job whose workers keep failing is failed after this many attempts
  Limits limits;                 // queue, job shape, prompt and message bounds (coordinator/limits.h)
  SecurityFlags security;        // TLS, token file, --insecure (docs/SECURITY.md)
  std::vector<std::string> model_roots;  // package directories load only from under these; none: the model cache
};

// The default data directory: $XDG_DATA_HOME/reel, else ~/.local/share/reel.
std::filesystem::path DefaultDataDir();
// The coordinator address clients use: $REEL_COORDINATOR, else 127.0.0.1:7070.
std::string DefaultCoordinatorAddress();

class Coordinator {
 public:
  // Validates the options, opens the job store (a queued or interrupted job is queued again) and reads the
  // models' manifests. Throws InvalidArgument naming the flag, IoError for the data directory.
  explicit Coordinator(const CoordinatorOptions& options);
  ~Coordinator();

  // Binds and serves; writes DATA/coordinator.address with the bound address.
  void Start();
  std::string address() const;
  int metrics_port() const;
  // Stops taking work: SubmitJob answers UNAVAILABLE with the reason and queued jobs are not started; running jobs
  // go on (their next stages are dispatched), and clients can still watch them and download outputs.
  void BeginDrain();
  // Jobs with a stage started that have not ended: 0 when a drain is complete.
  int running_jobs();
  // Stops serving. Jobs still running are written back to the store as queued, to run from their first stage at
  // the next start; queued jobs stay queued.
  void Shutdown();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Start, then serve until SIGINT or SIGTERM, then drain (running jobs finish within --drain-seconds) and stop;
// returns the exit code (0).
int RunCoordinator(const CoordinatorOptions& options);

// The drain after a stop signal: BeginDrain, then wait until no job runs, `seconds` pass, or another of the blocked
// `signals` arrives (SIGCHLD does not count). The caller shuts the coordinator down after.
void DrainCoordinator(Coordinator& c, const sigset_t& signals, int seconds);

}  // namespace reel
