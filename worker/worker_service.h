// The worker's reel.v1.Worker service: loads and unloads stages, runs them (and guidance branches and
// sequence-parallel shares) on the runtime, serves the tensors they produce. RunWorker (run_worker.cc) starts it,
// registers with the coordinator and drives the heartbeat, drain and signals around it.
#pragma once

#include <memory>
#include <string>

#include "reel/v1/worker.grpc.pb.h"
#include "worker/worker.h"

namespace reel {

class Metrics;

class WorkerService : public reel::v1::Worker::Service {
 public:
  virtual void set_name(const std::string& n) = 0;
  virtual void set_address(const std::string& a) = 0;
  virtual int tensors_held() const = 0;
  // Stage runs and guidance branches in progress or waiting for the device: a draining worker exits at 0.
  virtual int busy() const = 0;
  // Drops every tensor it holds: after the coordinator forgot it (a restart, or it was declared lost) no job will
  // fetch them, since their stages run again under new attempts. Returns how many.
  virtual int DropTensors() = 0;
};

// `metrics` may be null (no --metrics-port) and must outlive the service.
std::unique_ptr<WorkerService> MakeWorkerService(const WorkerOptions& options, Metrics* metrics);

}  // namespace reel
