// The coordinator's decisions as a deterministic state machine: Step(now, event) changes the cluster state
// (cluster_state.h) and returns a reply and the commands to carry out (core_commands.h). Dispatch, early dispatch,
// guidance-parallel pairs, leases, suspects, requeues, re-plans, drains and restarts all live here; threads, gRPC,
// the clock and SQLite live in the adapters (coordinator.cc, worker_calls.cc, job_store.cc) and in the simulator.
// Iteration orders that affect decisions are those of ordered maps, so one sequence of events gives one sequence
// of commands.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "coordinator/cluster_state.h"
#include "coordinator/core_commands.h"
#include "coordinator/core_events.h"
#include "coordinator/dispatch_index.h"

namespace reel::core {

struct CoreOptions {
  std::map<std::string, ModelInfo> models;  // what it serves
  bool planned = true;            // the planner places stages (Replan commands); false: ev::Register's static_target
  bool guidance_parallel = true;  // split guided denoising across two idle denoiser workers
  Micros heartbeat_us = 1'000'000;
  Micros worker_timeout_us = 5'000'000;  // a worker silent this long is lost
  Micros plan_settle_us = 300'000;       // the worker set must be still this long before it is planned
  int max_attempts = 3;
  int max_queued_jobs = 1000;
  int ended_jobs_kept = 1000;
  // The cost model, for the choice between early dispatch and guidance-parallel; none: always early.
  std::function<StageEstimate(const JobShape&, StageKind)> estimate;
  // What a dispatch of the next stage costs beyond the stage itself (a result's round trip, the input's fetch).
  Micros handoff_us = 20'000;
  // Early dispatch bounded by the cost model: a stage is sent before its inputs exist only in its producers'
  // last handoff_us by the estimate (what early dispatch saves), so its worker is not parked for the whole of a
  // producer's run while new work could have used it. False: sent as soon as its producers start.
  bool bound_early_dispatch = true;
  // Test and simulator hooks for the bugs the simulator found: true brings the old behaviour back.
  bool revert_register_holds = false;  // (a): a registering worker's reported stages ignored
  bool revert_split_choice = false;    // (b): early dispatch always taken (unbounded), never the guidance split
};

struct StepResult {
  Reply reply;
  std::vector<Command> commands;
};

class CoordinatorCore {
 public:
  explicit CoordinatorCore(CoreOptions options);

  // A start from the durable store: `boot` counts this start (ids made here never repeat across restarts),
  // `next_seq` numbers the next job. Jobs of models no longer served fail; running ones are queued again from
  // their first stage. The commands persist what changed, in one transaction.
  StepResult Restore(std::vector<Job> stored, int64_t boot, int64_t next_seq, Micros now);

  StepResult Step(Micros now, const Event& event);

  // ---- queries (the adapter's listings; the simulator's invariants) ----
  const CoreOptions& options() const { return o_; }
  const std::map<std::string, Job>& jobs() const { return jobs_; }
  const Job* FindJob(const std::string& id) const;
  const std::map<std::string, Worker>& workers() const { return workers_; }
  const Worker* FindWorkerByName(const std::string& name) const;
  const std::map<uint64_t, Run>& runs() const { return runs_; }
  // Submit's refusal before anything is stored (draining, stopping, the queue full), else none.
  std::optional<Reply> Admission() const;
  // The job a Submit would create now (the adapter stores it before stepping Submit with it).
  Job Preview(const ev::Submit& s, Micros now) const;
  // The job an earlier Submit with this request id created, if memory still holds it.
  const Job* FindRequest(const std::string& request_id) const;
  int QueuedJobs() const;
  int RunningJobs() const;
  bool draining() const { return draining_; }
  bool stopping() const { return stopping_; }
  bool evicted_any() const { return evicted_ > 0; }
  int64_t next_seq() const { return next_seq_; }
  // When the core next wants a Tick (the re-plan settles, an early dispatch falls due); 0: only the heartbeat
  // cadence.
  Micros NextWake() const;
  // A live worker of this name at another address (what the adapter checks is still answering).
  const Worker* LiveElsewhere(const std::string& name, const std::string& address) const;
  // Tensors on worker `name` that an unfinished stage (or the coordinator, for the video) still has to fetch.
  int TensorsNeededOn(const std::string& name) const;
  // What differs between the core's indexes (dispatch_index.h) and a scan of its state; empty: they agree.
  std::string IndexMismatch() const;

 private:
  // Each handler appends to out_.
  void OnSubmit(Micros now, const ev::Submit& e);
  void OnCancel(Micros now, const ev::Cancel& e);
  void OnRegister(Micros now, const ev::Register& e);
  void OnHeartbeat(Micros now, const ev::Heartbeat& e);
  void OnLeave(Micros now, const ev::Leave& e);
  void OnLoaded(Micros now, const ev::Loaded& e);
  void OnProgress(const ev::StageProgress& e);
  void OnResult(Micros now, const ev::StageResult& e);
  void OnFailed(Micros now, const ev::StageFailed& e);
  void OnOutputStored(Micros now, const ev::OutputStored& e);
  void OnPlanned(Micros now, const ev::Planned& e);
  void OnTuneBegin(const ev::TuneBegin& e);
  void OnTuneEnd(Micros now, const ev::TuneEnd& e);
  void OnTick(Micros now);
  void OnShutdown();

  // ---- helpers (coordinator_core.cc) ----
  void Touch(Job& j);  // the job changed: its version, and its place in the dispatch index
  void Reindex(Job& j);
  void Reindex(const Worker& w);
  void SetState(Job& j, JobState s);
  void Persist(const Job& j);
  void Emit(Command c) { out_.commands.push_back(std::move(c)); }
  void Log(cmd::Level level, std::string text);
  void Count(const char* event);
  Worker* WorkerByName(const std::string& name);
  void ScheduleReplan(Micros now);
  void StartLoad(Worker& w);
  Assignments Want(const Worker& w) const;
  void FreeWorkers(const Run& run);
  Job* EndRun(Micros now, uint64_t attempt, bool unavailable, const std::vector<std::string>& reloaded, Run* ended);
  void Suspect(const Run& run);
  void Requeue(Job& j, const std::string& why);
  void End(Micros now, Job& j, JobState state, const std::string& error);
  void Forget();
  void ReleaseTensors(Job& j);
  // A run of an ended job that ended after it (superseded, or its result late): its worker releases again.
  void ReleaseLate(const Job& j, const Run& run);
  void CancelRuns(const std::string& job_id);
  void CancelStoring(const std::string& job_id);
  void WorkerGone(Micros now, const std::string& worker_id, const std::string& why);
  // What WorkerGone does to one running job: the stages the worker `name` (id `worker_id`) took with it run again
  // (recovery.h), or the whole job when no stage keeps a result, or it fails past max_attempts.
  void RerunWithout(Micros now, Job& j, const std::string& worker_id, const std::string& name,
                    const std::string& what);
  const ModelInfo& Model(const Job& j) const { return o_.models.at(j.shape.model); }

  // ---- dispatch (core_dispatch.cc) ----
  void Dispatch(Micros now);
  // Places stages of one pass (ready, or early) in dispatch order, looking only at (model, stage)s an idle worker
  // holds.
  void DispatchPass(Micros now, bool early);
  void Place(Micros now, Job& j, int index, bool early);
  // How many ready stages worker `w` could take besides stage `index` of `j`: a guided denoise borrows a second
  // worker (and an early dispatch takes one) only when nothing else is waiting for it, so neither costs throughput.
  size_t WaitingFor(const Worker& w, const Job& j, int index, bool early) const;
  // `sequence`: ranks 1.. of a sequence-parallel denoise; `sequence_guidance`: with the guided batch split besides,
  // their unconditional halves' workers (`peer` is rank 0's).
  void Launch(Micros now, Job& j, int index, Worker* w, Worker* peer, bool early,
              const std::vector<Worker*>& sequence = {}, const std::vector<Worker*>& sequence_guidance = {});
  // A latency job's denoise on k of `idle` (in preference order) with sequence parallelism, when the cost model
  // finds it faster than one worker and than the guidance split: launched, -1. Else the workers the faster of
  // those takes (1 or 2; the comparison in `note`, for the job's record), or 0 without an estimate.
  int PlaceSequence(Micros now, Job& j, int index, const std::vector<Worker*>& idle, std::string* note);
  // A guided denoiser's estimated finish from now: early on one worker, and split across two after its inputs
  // (0, 0 without a cost model).
  std::pair<double, double> SplitTimes(Micros now, const Job& j, int index) const;
  TensorRef RefFor(const Job& j, const std::string& name) const;
  // Whether to leave a guided denoiser undispatched now (its producer still running) so it can run split across
  // two workers when the producer is done; records the choice on the job.
  bool WaitForSplit(Micros now, Job& j, int index, const std::vector<Worker*>& idle);
  // When stage `index`, its inputs being produced, may be sent early: the producers' estimated end less a
  // handoff; 0 (at once) without a cost model or an estimate.
  Micros EarlyFrom(const Job& j, int index) const;

  CoreOptions o_;
  std::map<std::string, Job> jobs_;      // every job in memory, ended ones too (for listings)
  std::set<std::string> live_;           // queued and running
  std::map<std::string, std::string> requests_;  // request id → job id (jobs in memory)
  std::map<std::string, Worker> workers_;  // by id
  std::map<uint64_t, Run> runs_;           // by attempt
  std::set<std::string> storing_;          // jobs whose video is being fetched
  std::deque<std::string> ended_;          // ended jobs in memory, oldest first
  int64_t evicted_ = 0;
  int queued_ = 0, running_ = 0;  // live jobs by state
  int64_t boot_ = 1;
  int64_t next_seq_ = 1;
  uint32_t runs_started_ = 0;
  int next_worker_ = 1;
  uint64_t version_ = 0;
  uint64_t worker_generation_ = 0;
  Micros replan_due_ = 0;
  bool draining_ = false;
  bool stopping_ = false;
  DispatchIndex index_;
  StepResult out_;
};

}  // namespace reel::core
