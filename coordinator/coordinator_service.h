// The coordinator's adapters around its core (coordinator_core.h): the gRPC service that turns RPCs into core
// events (coordinator.cc), and the executor that carries the core's commands out as calls to workers, SQLite
// writes, metrics and logs (worker_calls.cc). One mutex guards the core; nothing here decides anything.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/coordinator.h"
#include "coordinator/coordinator_core.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/job_store.h"
#include "coordinator/placement.h"
#include "package/manifest.h"
#include "planner/cost_model.h"
#include "planner/planning.h"
#include "planner/sequence_parallel_cost.h"
#include "profiler/profile_store.h"
#include "reel/v1/coordinator.grpc.pb.h"
#include "reel/v1/worker.grpc.pb.h"
#include "security/transport_security.h"

namespace reel {

// What the adapter keeps beside a core job: what the core does not decide on.
struct JobExtras {
  reel::v1::JobSpec spec;  // with the image bytes
  std::vector<std::string> stage_profiles;
};

struct Coordinator::Impl final : public reel::v1::Coordinator::Service {
  CoordinatorOptions o;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<ProfileStore> profiles;
  std::map<std::string, Manifest> models;
  Placement placement;
  CoordinatorMetrics metrics;
  TransportSecurity security;

  std::mutex mu;                 // guards everything below
  std::condition_variable cv;    // watchers; the pool's end
  std::unique_ptr<core::CoordinatorCore> core;
  std::map<std::string, JobExtras> extras;  // by job id, for the jobs the core holds
  std::map<uint64_t, std::shared_ptr<grpc::ClientContext>> calls;  // runs in flight, by attempt
  std::map<std::string, std::shared_ptr<grpc::ClientContext>> storing;  // job → its MP4's fetch
  int threads = 0, idle = 0;
  std::deque<std::function<void()>> tasks;
  std::condition_variable pool_cv, monitor_cv;
  std::unique_ptr<grpc::Server> server;
  std::string bound;
  std::thread monitor;
  int64_t clock_base_us = 0, steady_base_us = 0;  // the core's clock: wall time at start + steady time since

  explicit Impl(const CoordinatorOptions& opts) : o(opts) {}

  // ---- the core (mu held) ----
  core::Micros Now() const;
  // Steps the core and carries out its commands; wakes watchers.
  core::Reply Step(const core::Event& event);
  void Execute(std::vector<core::Command>& commands);
  void UpdateGauges();
  reel::v1::Job Public(const core::Job& j) const;
  JobRecord RecordOf(const core::Job& j) const;
  void StartThread(std::function<void()> fn);
  void PoolLoop();
  void Monitor();
  bool Planned() const { return o.placement.empty() && o.plan; }
  core::Assignments StaticTarget(const std::string& worker) const;

  // ---- worker calls (worker_calls.cc) ----
  void RunThread(core::cmd::RunStage run, reel::v1::RunStageRequest req, std::shared_ptr<grpc::ClientContext> ctx);
  void LoadWorker(core::cmd::LoadWorker load);
  void StoreOutput(core::cmd::StoreOutput store, std::shared_ptr<grpc::ClientContext> ctx);
  void Replan(core::cmd::Replan replan);
  void StoreProfile(const std::string& json);
  std::vector<StageProfile> StoredProfiles();
  planner::PlanningOptions PlanOptions() const;
  core::StageEstimate Estimate(const core::JobShape& shape, StageKind kind);
  std::map<std::string, std::unique_ptr<planner::CostModel>> cost_models;  // by model, built on first use
  std::map<std::string, core::StageEstimate> estimates;                     // by shape and stage
  // Sequence parallelism's link: what rank 0 measured (stored as a link profile; the estimates start over), and the
  // link the estimates price (the newest measured link's median, else the loopback estimate). mu held for both.
  void StoreLink(const reel::v1::RunStageRequest& req, const std::string& rank0,
                 const reel::v1::SequenceLink& measured);
  planner::Link SequenceLink();
  std::optional<std::vector<LinkProfile>> links;  // the store's, newest first; loaded on first use

  // ---- the service (coordinator.cc) ----
  grpc::Status Register(grpc::ServerContext*, const reel::v1::RegisterRequest*, reel::v1::RegisterResponse*) override;
  grpc::Status Heartbeat(grpc::ServerContext*, const reel::v1::HeartbeatRequest*,
                         reel::v1::HeartbeatResponse*) override;
  grpc::Status Leave(grpc::ServerContext*, const reel::v1::LeaveRequest*, reel::v1::LeaveResponse*) override;
  grpc::Status SubmitJob(grpc::ServerContext*, const reel::v1::SubmitJobRequest*,
                         reel::v1::SubmitJobResponse*) override;
  grpc::Status GetJob(grpc::ServerContext*, const reel::v1::GetJobRequest*, reel::v1::Job*) override;
  grpc::Status ListJobs(grpc::ServerContext*, const reel::v1::ListJobsRequest*, reel::v1::ListJobsResponse*) override;
  grpc::Status WatchJob(grpc::ServerContext*, const reel::v1::GetJobRequest*,
                        grpc::ServerWriter<reel::v1::Job>*) override;
  grpc::Status CancelJob(grpc::ServerContext*, const reel::v1::GetJobRequest*, reel::v1::Job*) override;
  grpc::Status ListWorkers(grpc::ServerContext*, const reel::v1::ListWorkersRequest*,
                           reel::v1::ListWorkersResponse*) override;
  grpc::Status PlanJob(grpc::ServerContext*, const reel::v1::PlanJobRequest*, reel::v1::PlanJobResponse*) override;
  grpc::Status PlanReportFor(const reel::v1::PlanJobRequest& req, std::string* report);
  grpc::Status Tune(grpc::ServerContext*, const reel::v1::TuneClusterRequest*,
                    grpc::ServerWriter<reel::v1::TuneClusterEvent>*) override;
  grpc::Status DownloadOutput(grpc::ServerContext*, const reel::v1::GetJobRequest*,
                              grpc::ServerWriter<reel::v1::TensorChunk>*) override;
  std::optional<JobRecord> Stored(const std::string& id);
};

// The core's plain job from a stored record, and the proto forms of its plain structs.
core::Job CoreJobOf(const JobRecord& r);
reel::v1::StageStrategy ProtoOf(const core::Strategy& s);
core::Strategy StrategyOf(const reel::v1::StageStrategy& s);
grpc::Status StatusOf(const core::Reply& r);

}  // namespace reel
