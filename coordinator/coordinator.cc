#include "coordinator/coordinator.h"

#include <malloc.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <nlohmann/json.hpp>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/printable.h"
#include "coordinator/auto_placement.h"
#include "coordinator/job_store.h"
#include "coordinator/job_validation.h"
#include "coordinator/placement.h"
#include "coordinator/recovery.h"
#include "media/video_io.h"
#include "models/presets.h"
#include "models/synth.h"
#include "package/job_request.h"
#include "package/manifest.h"
#include "planner/plan_report.h"
#include "planner/planning.h"
#include "planner/search.h"
#include "profiler/metrics.h"
#include "profiler/profile_store.h"
#include "profiler/stage_profile.h"
#include "reel/v1/coordinator.grpc.pb.h"
#include "reel/v1/worker.grpc.pb.h"
#include "security/path_policy.h"
#include "security/transport_security.h"
#include "transfer/stored_name.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"

namespace reel {

namespace fs = std::filesystem;
namespace v1 = reel::v1;
using json = nlohmann::json;

fs::path DefaultDataDir() {
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return fs::path(x) / "reel";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".local" / "share" / "reel";
  return fs::path(".reel");
}

std::string DefaultCoordinatorAddress() {
  if (const char* a = std::getenv("REEL_COORDINATOR"); a && *a) return a;
  return "127.0.0.1:7070";
}

namespace {


int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool Terminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }



// Stages in jobs and workers' answers are always one of the four.
StageKind KindOfStage(v1::Stage s) { return KindOf(s).value_or(StageKind::kVaeDecoder); }

// What each stage needs and produces.
std::vector<std::string> InputsOf(StageKind k, bool i2v) {
  switch (k) {
    case StageKind::kDenoiser:
      return i2v ? std::vector<std::string>{"text", "image_moments"} : std::vector<std::string>{"text"};
    case StageKind::kVaeDecoder: return {"latents"};
    default: return {};
  }
}

std::vector<StageKind> DepsOf(StageKind k, bool i2v) { return StageDependencies(k, i2v); }

grpc::Status Refuse(grpc::StatusCode code, const std::string& message) {
  return {code, message.empty() ? "refused without a reason (a bug in the coordinator)" : message};
}

// An unknown id, echoed escaped and cut: a 10 KB id must not outgrow gRPC's metadata limit.
grpc::Status NoSuchJob(const std::string& id) {
  return Refuse(grpc::StatusCode::NOT_FOUND, fmt::format("job '{}': no such job", Printable(id)));
}

// Whether a process answers gRPC's health check at `address` within `wait` (any reply counts: it is alive). A
// worker killed and started again under its name is registered before its old entry's lease runs out; the old
// address not answering tells a restart from a second live worker given the same name.
bool Answers(const std::string& address, std::chrono::milliseconds wait) {
  grpc::GenericStub stub(ChannelTo(address));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + wait);
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status st) { done.set_value(std::move(st)); });
  const grpc::Status st = done.get_future().get();
  return st.ok() || (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
                     st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED);
}

const std::vector<double>& DurationBuckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
  return b;
}

const std::vector<double>& DispatchBuckets() {
  static const std::vector<double> b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1};
  return b;
}

// The coordinator's Prometheus families.
struct CoordinatorMetrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& jobs = prometheus::BuildCounter()
                                                      .Name("reel_jobs_total")
                                                      .Help("Jobs by what happened to them: submitted, succeeded, "
                                                            "failed, cancelled, requeued")
                                                      .Register(*registry);
  prometheus::Family<prometheus::Gauge>& queue_depth =
      prometheus::BuildGauge().Name("reel_queue_depth").Help("Jobs waiting for their first stage").Register(*registry);
  prometheus::Family<prometheus::Gauge>& running =
      prometheus::BuildGauge().Name("reel_jobs_running").Help("Jobs with a stage started").Register(*registry);
  prometheus::Family<prometheus::Histogram>& job_seconds =
      prometheus::BuildHistogram()
          .Name("reel_job_duration_seconds")
          .Help("From a job's first stage starting to its output being stored")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& wait_seconds = prometheus::BuildHistogram()
                                                                .Name("reel_job_queue_wait_seconds")
                                                                .Help("From submission to the first stage starting")
                                                                .Register(*registry);
  prometheus::Family<prometheus::Histogram>& stage_seconds =
      prometheus::BuildHistogram()
          .Name("reel_job_stage_duration_seconds")
          .Help("A stage's run on a worker, dispatch to result, by stage and worker")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& dispatch_seconds =
      prometheus::BuildHistogram()
          .Name("reel_stage_dispatch_seconds")
          .Help("From a stage's result reaching the coordinator to the next stage of that job being sent")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& frames =
      prometheus::BuildCounter().Name("reel_frames_generated_total").Help("Frames in stored outputs").Register(*registry);
  prometheus::Family<prometheus::Gauge>& workers =
      prometheus::BuildGauge().Name("reel_workers").Help("Registered workers by state").Register(*registry);
  prometheus::Family<prometheus::Gauge>& worker_device = prometheus::BuildGauge()
                                                             .Name("reel_worker_device_memory_bytes")
                                                             .Help("Device memory each worker last reported")
                                                             .Register(*registry);
  prometheus::Family<prometheus::Gauge>& worker_host = prometheus::BuildGauge()
                                                           .Name("reel_worker_host_memory_bytes")
                                                           .Help("Host memory each worker last reported")
                                                           .Register(*registry);
  MetricsEndpoint endpoint{registry};

  CoordinatorMetrics() {
    for (const char* what : {"submitted", "succeeded", "failed", "cancelled", "requeued"}) jobs.Add({{"event", what}});
    queue_depth.Add({});
    running.Add({});
    job_seconds.Add({}, DurationBuckets());
    wait_seconds.Add({}, DurationBuckets());
    dispatch_seconds.Add({}, DispatchBuckets());
    frames.Add({});
    for (const char* s : {"loading", "idle", "busy", "draining", "failed", "lost"}) workers.Add({{"state", s}});
  }
  void Count(const std::string& event) { jobs.Add({{"event", event}}).Increment(); }
};

struct WorkerEntry {
  v1::WorkerInfo info;
  std::set<std::pair<std::string, StageKind>> holds;
  std::map<std::string, StageAssignment> target;  // the plan's stages for it, by model (planned placement)
  std::map<std::string, StageAssignment> applied;  // what its last LoadWorker asked for
  bool reload_pending = false;  // the plan changed while it was busy or loading
  bool load_in_flight = false;  // a LoadWorker call for it is running
  bool loaded_once = false;     // its first LoadWorker finished
  int64_t last_heartbeat_ms = 0;
  // A call to it failed as a call to a dead worker does: nothing is dispatched to it until it heartbeats again, so
  // a worker killed a moment ago is not handed its own job's next attempt before its lease runs out.
  bool suspect = false;
};

// A stage run in flight: the call to cancel and the workers it occupies.
struct ActiveRun {
  std::shared_ptr<grpc::ClientContext> ctx;
  std::string job, worker_id, peer_id;
  int stage_index = 0;
  uint64_t attempt = 0;  // RunStageRequest.attempt: a result counts only while its stage still has this attempt
};

}  // namespace

struct Coordinator::Impl final : public v1::Coordinator::Service {
  CoordinatorOptions o;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<ProfileStore> profiles;
  std::map<std::string, Manifest> models;
  Placement placement;
  CoordinatorMetrics metrics;
  TransportSecurity security;  // loaded from o.security: what the server requires and its channels present

  std::mutex mu;
  std::condition_variable cv;        // dispatcher wake-ups and watchers
  uint64_t version = 0;              // bumped on every job change
  std::map<std::string, JobRecord> jobs;  // every job this coordinator knows, ended ones too (for listings)
  std::set<std::string> live;             // the queued and running ones: what dispatch and gauges look at
  std::map<std::string, uint64_t> job_version;
  std::map<std::string, std::map<std::string, v1::TensorRef>> outputs;  // job → tensor name → where it lives
  std::map<std::string, int64_t> result_us;  // job → when its last stage result arrived (for dispatch latency)
  std::map<std::string, WorkerEntry> workers;  // by id
  std::vector<ActiveRun> active;
  std::set<const grpc::ClientContext*> superseded;  // calls cancelled because their job moved on
  int next_worker = 1;
  int threads = 0;  // pool threads alive
  int idle = 0;     // pool threads waiting for a task
  std::deque<std::function<void()>> tasks;
  std::condition_variable pool_cv, monitor_cv;
  bool stopping = false;
  bool draining = false;  // BeginDrain: no job is accepted or started; running ones go on
  int64_t boot = 0;       // this start's count in the job store: ids made here never repeat across restarts
  uint32_t runs = 0;      // stage runs dispatched since this start (the low half of an attempt)
  std::map<std::string, std::shared_ptr<grpc::ClientContext>> storing;  // job → its MP4's fetch from the decoder
  std::deque<std::string> ended;  // ended jobs still in memory, in the order they ended (oldest leaves first)
  int64_t evicted = 0;            // ended jobs that left memory: listings past memory read the store

  std::unique_ptr<grpc::Server> server;
  std::string bound;
  std::thread monitor;

  explicit Impl(const CoordinatorOptions& opts) : o(opts) {}

  // ---- state helpers (mu held) ----

  void Touch(const std::string& id) {
    job_version[id] = ++version;
    cv.notify_all();
  }

  void Persist(const JobRecord& r) {
    try {
      store->Save(r);
    } catch (const Error& e) {
      spdlog::error("{}", e.what());
    }
  }

  WorkerEntry* WorkerByName(const std::string& name) {
    for (auto& [id, w] : workers)
      if (w.info.name() == name) return &w;
    return nullptr;
  }

  // Queued and running jobs. It walks the job map rather than looking each live id up: with a thousand jobs
  // queued, the lookups' string comparisons were most of a submission's cost.
  std::pair<int, int> LiveCounts() const {
    int queued = 0, running = 0;
    for (const auto& [id, r] : jobs) {
      queued += r.job.state() == v1::QUEUED;
      running += r.job.state() == v1::RUNNING;
    }
    return {queued, running};
  }

  void UpdateGauges() {
    const auto [queued, run] = LiveCounts();
    metrics.queue_depth.Add({}).Set(queued);
    metrics.running.Add({}).Set(run);
    std::map<std::string, int> by_state = {{"loading", 0}, {"idle", 0},   {"busy", 0},
                                           {"draining", 0}, {"failed", 0}, {"lost", 0}};
    for (const auto& [id, w] : workers) by_state[w.info.state()]++;
    for (const auto& [s, n] : by_state) metrics.workers.Add({{"state", s}}).Set(n);
  }

  static v1::Job Public(const JobRecord& r) {
    v1::Job j = r.job;
    j.mutable_spec()->clear_image();
    return j;
  }

  // Runs `fn` on a pooled thread (mu held by the caller). Stage calls block for a stage's length, so the pool grows
  // when every thread is busy; an idle thread picks the next task up in microseconds, where starting a thread
  // would sit in every stage handoff.
  void StartThread(std::function<void()> fn) {
    tasks.push_back(std::move(fn));
    if (idle > 0) {
      pool_cv.notify_one();
      return;
    }
    ++threads;
    std::thread([this] { PoolLoop(); }).detach();
  }

  void PoolLoop() {
    std::unique_lock lock(mu);
    for (;;) {
      if (tasks.empty() && !stopping) {
        ++idle;
        pool_cv.wait_for(lock, std::chrono::seconds(30), [&] { return !tasks.empty() || stopping; });
        --idle;
      }
      if (tasks.empty()) break;  // stopping, or idle for long: the pool shrinks
      auto fn = std::move(tasks.front());
      tasks.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
    --threads;
    cv.notify_all();
  }

  // ---- placement ----

  bool Planned() const { return o.placement.empty() && o.plan; }

  planner::PlanningOptions PlanOptions() const {
    planner::PlanningOptions po;
    po.package_dtype_only = o.plan_dtype != "any";
    return po;
  }

  // The stages (and strategies) a worker is to hold for a model (mu held): the plan's, else the placement file's
  // entry for its name, else every stage with no offload.
  StageAssignment Assignment(const WorkerEntry& w, const std::string& model, const Manifest& m) {
    if (Planned()) {
      auto it = w.target.find(model);
      return it == w.target.end() ? StageAssignment{} : it->second;
    }
    StageAssignment out;
    if (const auto* entry = placement.Find(w.info.name())) {
      for (const auto& [k, s] : entry->stages)
        if (m.has_stage(k)) out.emplace_back(k, s);
      return out;
    }
    for (const auto& [k, sm] : m.stages) out.emplace_back(k, v1::StageStrategy{});
    return out;
  }

  // ---- planned placement ----

  int64_t replan_due_ms = 0;  // when the worker set last changed + a settling delay; 0: nothing to do
  uint64_t worker_generation = 0;  // bumped on every change of the worker set

  void ScheduleReplan() {
    ++worker_generation;
    if (!Planned()) return;
    replan_due_ms = SteadyMs() + o.plan_settle_ms;
    monitor_cv.notify_all();
  }

  // The workers a plan may use: registered, not lost, failed or leaving.
  static bool Plannable(const WorkerEntry& w) {
    const std::string& st = w.info.state();
    return st != "lost" && st != "failed" && st != "draining";
  }

  std::vector<WorkerSlot> PlannableWorkers() {
    std::vector<WorkerSlot> out;
    for (const auto& [id, w] : workers) {
      if (!Plannable(w)) continue;
      out.push_back({w.info.name(), w.info.host(), w.info.device(), w.info.device_capacity_bytes(),
                     w.info.host_memory_bytes()});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    return out;
  }

  std::vector<StageProfile> StoredProfiles() {
    std::vector<StageProfile> out;
    try {
      for (auto& row : profiles->All()) out.push_back(std::move(row.profile));
    } catch (const Error& e) {
      spdlog::warn("planning without the profile store: {}", e.what());
    }
    return out;
  }

  // Plans the current workers (the lock released while the planner runs) and sends each worker whose stages
  // changed its new ones: an idle worker at once, a busy or loading one when it is free.
  void Replan(std::unique_lock<std::mutex>& lock) {
    replan_due_ms = 0;
    const uint64_t generation = worker_generation;
    const std::vector<WorkerSlot> slots = PlannableWorkers();
    lock.unlock();
    AutoPlacement placed;
    try {
      placed = PlanPlacement(models, slots, StoredProfiles(),
                             planner::ParseObjective(o.plan_objective, "--plan-objective"), o.plan_margin,
                             PlanOptions());
    } catch (const std::exception& e) {
      spdlog::error("planning failed: {}", e.what());
    }
    lock.lock();
    if (generation != worker_generation || stopping) return;  // the workers changed meanwhile: planned again later
    for (const auto& note : placed.notes) spdlog::info("plan for {} worker(s): {}", slots.size(), note);
    for (auto& [id, w] : workers) {
      const std::string& st = w.info.state();
      if (!Plannable(w)) continue;
      auto it = placed.workers.find(w.info.name());
      w.target = it == placed.workers.end() ? std::map<std::string, StageAssignment>{} : it->second;
      if (w.loaded_once && SameAssignment(w.target, w.applied)) continue;
      if (w.load_in_flight || st == "busy") {
        w.reload_pending = true;  // LoadWorker or FreeWorkers picks it up
      } else {
        StartLoad(w);
      }
    }
    UpdateGauges();
  }

  void StartLoad(WorkerEntry& w) {
    w.info.set_state("loading");
    w.load_in_flight = true;
    w.reload_pending = false;
    StartThread([this, id = w.info.id()] { LoadWorker(id); });
  }

  static bool SameAssignment(const std::map<std::string, StageAssignment>& a,
                             const std::map<std::string, StageAssignment>& b) {
    if (a.size() != b.size()) return false;
    for (const auto& [model, x] : a) {
      auto it = b.find(model);
      if (it == b.end() || it->second.size() != x.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (x[i].first != it->second[i].first || StrategyString(x[i].second) != StrategyString(it->second[i].second))
          return false;
    }
    return true;
  }

  // Brings a worker's stages to its assignment: loads (or re-places) what it is to hold, unloads what it no
  // longer is. Runs on a pool thread; the worker is "loading" (nothing is dispatched to it) meanwhile.
  void LoadWorker(std::string worker_id) {
    std::string address, name;
    std::map<std::string, StageAssignment> want;
    std::set<std::pair<std::string, StageKind>> held;
    {
      std::lock_guard lock(mu);
      auto it = workers.find(worker_id);
      if (it == workers.end()) return;
      address = it->second.info.address();
      name = it->second.info.name();
      for (const auto& [model, manifest] : models) want[model] = Assignment(it->second, model, manifest);
      held = it->second.holds;
    }
    auto stub = v1::Worker::NewStub(ChannelTo(address));
    std::string error;
    std::optional<google::protobuf::RepeatedPtrField<v1::LoadedStage>> loaded;
    for (const auto& [model, assignment] : want) {
      grpc::ClientContext ctx;
      grpc::Status st;
      if (!assignment.empty()) {
        v1::LoadStagesRequest req;
        req.set_model(model);
        for (const auto& [k, s] : assignment) {
          auto* item = req.add_stages();
          item->set_stage(StageOf(k));
          *item->mutable_strategy() = s;
        }
        v1::LoadStagesResponse resp;
        st = stub->LoadStages(&ctx, req, &resp);
        if (st.ok()) loaded = resp.loaded();
      }
      // Stages of this model it holds and is no longer to hold.
      v1::UnloadStagesRequest unload;
      unload.set_model(model);
      for (const auto& [m, k] : held) {
        if (m != model) continue;
        const bool kept = std::any_of(assignment.begin(), assignment.end(), [&](const auto& a) { return a.first == k; });
        if (!kept) unload.add_stages(StageOf(k));
      }
      if (st.ok() && unload.stages_size() > 0) {
        if (assignment.empty()) unload.clear_stages();  // the whole model goes
        grpc::ClientContext uctx;
        v1::UnloadStagesResponse uresp;
        st = stub->UnloadStages(&uctx, unload, &uresp);
        if (st.ok()) loaded = uresp.loaded();
      }
      if (!st.ok()) {
        error = fmt::format("loading {} failed: {}", model, st.error_message());
        spdlog::error("worker {}: {}", name, error);
        break;
      }
    }
    std::set<std::pair<std::string, StageKind>> holds;
    std::vector<std::string> described;
    if (loaded) {
      for (const auto& l : *loaded) {
        if (!models.count(l.model())) continue;
        holds.insert({l.model(), KindOfStage(l.stage())});
        described.push_back(fmt::format("{}/{} ({})", l.model(), StageKindName(KindOfStage(l.stage())),
                                        StrategyString(l.strategy())));
      }
    } else if (error.empty()) {
      holds = held;  // nothing asked of it: it keeps what it had
    }
    std::lock_guard lock(mu);
    auto it = workers.find(worker_id);
    if (it == workers.end()) return;
    WorkerEntry& w = it->second;
    if (loaded || !error.empty()) {
      w.holds = holds;
      w.info.clear_stages();
      for (const auto& d : described) w.info.add_stages(d);
    }
    w.applied = want;
    w.info.set_error(error);
    w.load_in_flight = false;
    w.loaded_once = true;
    if (w.info.state() == "loading") {
      if (!error.empty()) {
        w.info.set_state("failed");
        ScheduleReplan();  // the others take over what it was to hold
      } else if (w.reload_pending) {
        StartLoad(w);  // the plan changed while it loaded
      } else {
        w.info.set_state("idle");
      }
    }
    if (error.empty()) spdlog::info("worker {} holds {}", name, described.empty() ? "nothing" : fmt::format("{}", fmt::join(described, ", ")));
    UpdateGauges();
    Dispatch();
  }

  // ---- dispatch (mu held) ----

  struct Ready {
    std::string job;
    int index;
    int priority;
    int64_t seq;
  };

  void Dispatch() {
    if (stopping) return;
    // Nothing can be placed without an idle worker: the common case under load (busy workers, a growing queue),
    // where every submission and result would otherwise scan the whole queue.
    if (std::none_of(workers.begin(), workers.end(),
                     [](const auto& w) { return w.second.info.state() == "idle" && !w.second.suspect; })) {
      UpdateGauges();
      return;
    }
    // Stages whose inputs all exist (ready), or whose inputs are being produced now (early).
    auto collect = [&](bool early) {
      std::vector<Ready> out;
      for (const auto& id : live) {
        const JobRecord& r = jobs.at(id);
        if (draining && r.job.state() == v1::QUEUED) continue;  // a draining coordinator starts nothing new
        const bool i2v = models.at(r.job.spec().model()).image_conditioned;
        for (int i = 0; i < r.job.stages_size(); ++i) {
          const auto& s = r.job.stages(i);
          if (s.state() != "pending") continue;
          bool all_done = true, all_started = true;
          for (StageKind d : DepsOf(KindOfStage(s.stage()), i2v))
            for (const auto& other : r.job.stages())
              if (KindOfStage(other.stage()) == d) {
                all_done = all_done && other.state() == "done";
                all_started = all_started && (other.state() == "done" || other.state() == "running");
              }
          if (early ? (!all_done && all_started) : all_done) out.push_back({id, i, r.job.priority(), r.seq});
        }
      }
      // Highest priority first, then submission order: an older job's next stage goes before a newer job's first.
      std::sort(out.begin(), out.end(), [](const Ready& a, const Ready& b) {
        return a.priority != b.priority ? a.priority > b.priority
                                        : (a.seq != b.seq ? a.seq < b.seq : a.index < b.index);
      });
      return out;
    };
    const std::vector<Ready> ready = collect(false);
    // How many ready stages a worker could take: a guided denoise borrows a second worker only when nothing
    // else is waiting for it, so guidance-parallel lowers latency without costing throughput.
    auto waiting_for = [&](const WorkerEntry* w, const Ready& except) {
      int n = 0;
      for (const auto& rd : ready) {
        if (rd.job == except.job && rd.index == except.index) continue;
        const JobRecord& r = jobs[rd.job];
        if (r.job.stages(rd.index).state() != "pending") continue;
        n += w->holds.count({r.job.spec().model(), KindOfStage(r.job.stages(rd.index).stage())}) > 0;
      }
      return n;
    };
    auto place = [&](const Ready& rd, bool early) {
      JobRecord& r = jobs[rd.job];
      if (r.job.stages(rd.index).state() != "pending") return;
      const std::string& model = r.job.spec().model();
      const StageKind kind = KindOfStage(r.job.stages(rd.index).stage());
      std::vector<WorkerEntry*> idle;
      for (auto& [wid, w] : workers)
        if (w.info.state() == "idle" && !w.suspect && w.holds.count({model, kind}) &&
            (!early || waiting_for(&w, rd) == 0))
          idle.push_back(&w);
      if (idle.empty()) return;
      // Prefer the worker already holding the inputs, then the one that has run least.
      auto local_bytes = [&](const WorkerEntry* w) {
        int64_t n = 0;
        for (const auto& [name, ref] : outputs[rd.job])
          if (ref.worker() == w->info.name()) n += ref.bytes();
        return n;
      };
      std::stable_sort(idle.begin(), idle.end(), [&](const WorkerEntry* a, const WorkerEntry* b) {
        const int64_t la = local_bytes(a), lb = local_bytes(b);
        if (la != lb) return la > lb;
        return a->info.stages_run() < b->info.stages_run();
      });
      WorkerEntry* w = idle[0];
      WorkerEntry* peer = nullptr;
      if (kind == StageKind::kDenoiser && o.guidance_parallel && r.job.spec().guidance() > 1.0 && idle.size() > 1 &&
          waiting_for(idle[1], rd) == 0)
        peer = idle[1];
      Launch(r, rd.index, w, peer);
    };
    for (const auto& rd : ready) place(rd, false);
    const std::vector<Ready> early = collect(true);
    // Then stages whose inputs are still being produced, on workers nothing else is waiting for: they start
    // fetching at once and compute the moment the producer stores its output, with no round trip through here.
    for (const auto& rd : early) place(rd, true);
    UpdateGauges();
  }

  // Where a stage input is, or will be: a stored output, else the worker now running the stage producing it.
  v1::TensorRef RefFor(const JobRecord& r, const std::string& name) {
    if (auto it = outputs[r.job.id()].find(name); it != outputs[r.job.id()].end()) return it->second;
    const StageKind producer = name == "text"            ? StageKind::kTextEncoder
                               : name == "image_moments" ? StageKind::kVaeEncoder
                                                         : StageKind::kDenoiser;
    v1::TensorRef ref;
    ref.set_job_id(r.job.id());
    ref.set_name(name);
    for (const auto& s : r.job.stages())
      if (KindOfStage(s.stage()) == producer && s.state() == "running")
        if (const WorkerEntry* w = WorkerByName(s.worker())) {
          ref.set_address(w->info.address());
          ref.set_worker(w->info.name());
          ref.set_attempt(s.attempt());
        }
    return ref;
  }

  // Stops a job's stage calls; their endings change nothing (the job was requeued or ended).
  void CancelRuns(const std::string& job) {
    for (auto& a : active)
      if (a.job == job) {
        superseded.insert(a.ctx.get());
        a.ctx->TryCancel();
      }
    CancelStoring(job);
  }

  void CancelStoring(const std::string& job) {
    if (auto it = storing.find(job); it != storing.end()) it->second->TryCancel();
  }

  // This start's count in the high half, so an attempt never repeats across restarts of the coordinator (a worker
  // that outlived one may still hold the tensors of an earlier start's attempts).
  uint64_t NextAttempt() { return (static_cast<uint64_t>(boot) << 32) | ++runs; }

  void Launch(JobRecord& r, int index, WorkerEntry* w, WorkerEntry* peer) {
    const int64_t now = NowUnixUs();
    auto& job = r.job;
    if (job.state() == v1::QUEUED) {
      job.set_state(v1::RUNNING);
      job.set_started_unix_us(now);
      job.set_attempts(job.attempts() + 1);
      metrics.wait_seconds.Add({}, DurationBuckets()).Observe((now - job.submitted_unix_us()) / 1e6);
      Persist(r);  // its attempts count, across a restart too
    }
    auto* s = job.mutable_stages(index);
    s->set_state("running");
    s->set_attempt(NextAttempt());
    s->set_worker(w->info.name());
    s->set_guidance_peer(peer ? peer->info.name() : "");
    s->set_started_unix_us(now);
    s->set_finished_unix_us(0);
    s->set_step(0);
    s->set_error("");
    w->info.set_state("busy");
    w->info.set_job_id(job.id());
    if (peer) {
      peer->info.set_state("busy");
      peer->info.set_job_id(job.id());
    }

    v1::RunStageRequest req;
    req.set_job_id(job.id());
    *req.mutable_spec() = job.spec();
    const StageKind kind = KindOfStage(s->stage());
    if (kind != StageKind::kVaeEncoder) req.mutable_spec()->clear_image();
    req.set_stage(s->stage());
    req.set_attempt(s->attempt());
    const bool i2v = models.at(job.spec().model()).image_conditioned;
    for (const auto& name : InputsOf(kind, i2v)) *req.add_inputs() = RefFor(r, name);
    if (peer) {
      req.set_guidance_peer_address(peer->info.address());
      req.set_guidance_peer(peer->info.name());
    }
    if (auto it = result_us.find(job.id()); it != result_us.end()) {
      metrics.dispatch_seconds.Add({}, DispatchBuckets()).Observe((NowUnixUs() - it->second) / 1e6);
      result_us.erase(it);
    }
    ActiveRun run;
    run.ctx = std::make_shared<grpc::ClientContext>();
    run.job = job.id();
    run.worker_id = w->info.id();
    run.peer_id = peer ? peer->info.id() : "";
    run.stage_index = index;
    run.attempt = s->attempt();
    active.push_back(run);
    Touch(job.id());
    const std::string address = w->info.address();
    StartThread([this, run, req = std::move(req), address] { RunThread(run, req, address); });
  }

  void RunThread(const ActiveRun& run, const v1::RunStageRequest& req, const std::string& address) {
    auto stub = v1::Worker::NewStub(ChannelTo(address));
    auto reader = stub->RunStage(run.ctx.get(), req);
    v1::RunStageEvent ev;
    bool completed = false;
    std::string profile;
    while (reader->Read(&ev)) {
      if (ev.has_result()) {
        if (ev.result().loaded_size() > 0) Reloaded(run.worker_id, ev.result().loaded());
        // Acted on at once: the next stage is dispatched before the worker's profile and the call's end arrive.
        Finished(run, grpc::Status::OK, ev.result());
        completed = true;
        continue;
      }
      if (ev.has_profile()) {
        if (completed) {
          profile = ev.profile().json();
        } else {
          // An attempt that ran out of device memory (the worker retries cheaper): the planner must know.
          StoreProfile(ev.profile().json());
          std::lock_guard lock(mu);
          ScheduleReplan();
        }
        continue;
      }
      if (completed) continue;
      std::lock_guard lock(mu);
      auto it = jobs.find(run.job);
      if (it == jobs.end()) continue;
      auto* s = it->second.job.mutable_stages(run.stage_index);
      s->set_step(ev.step_done());
      s->set_steps(ev.steps_total());
      Touch(run.job);
    }
    grpc::Status st = reader->Finish();
    if (completed) {
      RecordProfile(run, profile);
      return;
    }
    if (st.ok()) st = grpc::Status(grpc::StatusCode::INTERNAL, "the worker ended the stage without a result");
    Finished(run, st, std::nullopt);
  }

  // A worker changed its strategies after running out of device memory: list what it holds now.
  void Reloaded(const std::string& worker_id, const google::protobuf::RepeatedPtrField<v1::LoadedStage>& loaded) {
    std::lock_guard lock(mu);
    auto it = workers.find(worker_id);
    if (it == workers.end()) return;
    it->second.info.clear_stages();
    for (const auto& l : loaded)
      it->second.info.add_stages(fmt::format("{}/{} ({})", l.model(), StageKindName(KindOfStage(l.stage())),
                                             StrategyString(l.strategy())));
  }

  // The worker's measurements of a finished run: into the profile store (the planner's truth) and the job's row.
  void RecordProfile(const ActiveRun& run, const std::string& profile) {
    if (profile.empty()) return;
    StoreProfile(profile);
    std::lock_guard lock(mu);
    auto it = jobs.find(run.job);
    if (it == jobs.end()) return;
    JobRecord& r = it->second;
    if (r.job.stages(run.stage_index).attempt() != run.attempt) return;  // a superseded run: not this job's stage
    if (r.stage_profiles.size() < static_cast<size_t>(r.job.stages_size())) r.stage_profiles.resize(r.job.stages_size());
    r.stage_profiles[run.stage_index] = profile;
    if (Terminal(r.job.state())) Persist(r);
  }

  void FreeWorkers(const ActiveRun& run) {
    for (const std::string& id : {run.worker_id, run.peer_id}) {
      auto it = workers.find(id);
      if (it == workers.end()) continue;
      WorkerEntry& w = it->second;
      w.info.set_job_id("");
      if (id == run.worker_id) w.info.set_stages_run(w.info.stages_run() + 1);
      if (w.info.state() == "busy") w.info.set_state("idle");
      if (w.reload_pending && !w.load_in_flight && w.info.state() == "idle") StartLoad(w);
    }
    active.erase(std::remove_if(active.begin(), active.end(),
                                [&](const ActiveRun& a) { return a.ctx == run.ctx; }),
                 active.end());
  }

  void Finished(const ActiveRun& run, const grpc::Status& st, const std::optional<v1::RunStageResult>& result) {
    std::unique_lock lock(mu);
    FreeWorkers(run);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE && !stopping) Suspect(run);
    if (superseded.erase(run.ctx.get())) {
      Dispatch();
      return;
    }
    auto it = jobs.find(run.job);
    if (it == jobs.end()) return;
    JobRecord& r = it->second;
    auto* s = r.job.mutable_stages(run.stage_index);
    const StageKind kind = KindOfStage(s->stage());
    if (s->attempt() != run.attempt || (s->state() != "running" && !Terminal(r.job.state()))) {
      // A run the job has moved on from (it was given up when its worker was lost): whatever it did is not the
      // job's any more. Runs given up are cancelled, so this is the narrow case of a result already on its way.
      spdlog::warn("job {}: the result of a superseded run of {} (attempt {}) was ignored", run.job,
                   StageKindName(kind), run.attempt);
      Dispatch();
      return;
    }
    const std::string worker_name = s->worker();
    const int64_t now = NowUnixUs();
    metrics.stage_seconds.Add({{"stage", StageKindName(kind)}, {"worker", worker_name}}, DurationBuckets())
        .Observe((now - s->started_unix_us()) / 1e6);

    if (Terminal(r.job.state())) {
      // Ended while it ran (cancelled): the worker is free again; its tensors go.
      s->set_state("cancelled");
      Persist(r);
      Touch(r.job.id());
      ReleaseTensors(r.job.id());
      Dispatch();
      return;
    }
    if (st.ok() && result) {
      s->set_state("done");
      s->set_accepted_unix_us(result->accepted_unix_us());
      s->set_started_unix_us(result->started_unix_us());
      s->set_finished_unix_us(result->finished_unix_us());
      std::string address;
      if (auto w = workers.find(run.worker_id); w != workers.end()) address = w->second.info.address();
      for (const auto& out : result->outputs()) {
        v1::TensorRef ref;
        ref.set_job_id(r.job.id());
        ref.set_name(out.name());
        ref.set_address(address);
        ref.set_worker(worker_name);
        ref.set_bytes(out.bytes());
        ref.set_attempt(run.attempt);
        outputs[r.job.id()][out.name()] = ref;
      }
      if (kind == StageKind::kVaeDecoder) {
        const v1::TensorRef video = outputs[r.job.id()]["video.mp4"];
        const int frames = result->frames();
        Touch(r.job.id());
        Dispatch();
        // Cancelled when the decoder's worker is lost meanwhile (the decoder then runs again) or the job ends.
        auto ctx = std::make_shared<grpc::ClientContext>();
        storing[run.job] = ctx;
        lock.unlock();
        // The output is the one thing the coordinator keeps: clients download it from here.
        std::string error;
        fs::path path;
        int64_t bytes = 0;
        try {
          auto blob = FetchOutput(video, *ctx);
          path = o.data / "outputs" / (run.job + ".mp4");
          AtomicFile file(path, "output");
          {
            std::ofstream f(file.temp_path(), std::ios::binary);
            f.write(blob->data.data(), static_cast<std::streamsize>(blob->data.size()));
            if (!f) throw IoError(fmt::format("output {}: write failed", path.string()));
          }
          file.Commit();
          bytes = blob->bytes();
        } catch (const std::exception& e) {
          error = fmt::format("storing the output: {}", e.what());
        }
        lock.lock();
        if (auto sit = storing.find(run.job); sit != storing.end() && sit->second == ctx) storing.erase(sit);
        auto again = jobs.find(run.job);
        if (again == jobs.end()) return;
        JobRecord& j = again->second;
        if (Terminal(j.job.state())) return;
        const v1::StageRun& decoded = j.job.stages(run.stage_index);
        if (decoded.attempt() != run.attempt || decoded.state() != "done") return;  // lost meanwhile: it runs again
        if (error.empty()) {
          j.output_path = path.string();
          j.job.set_output_bytes(bytes);
          End(j, v1::SUCCEEDED, "");
          metrics.frames.Add({}).Increment(frames);
        } else {
          End(j, v1::FAILED, error);
        }
        return;
      }
      result_us[r.job.id()] = NowUnixUs();
      Touch(r.job.id());
      Dispatch();
      // Intermediate stage states need not be durable: a restarted coordinator runs interrupted jobs again.
      return;
    }
    if (stopping) return;
    const std::string what = fmt::format("stage {} on worker {}: {}", StageKindName(kind), worker_name,
                                         st.error_message());
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      // The worker (or one it fetched from, or its guidance peer) went away: the job runs again from its first
      // stage elsewhere. Which worker failed is not known yet; the lease (Monitor) tells, and Suspect keeps the
      // job off both meanwhile.
      spdlog::warn("job {}: {}; running it again", r.job.id(), what);
      if (r.job.attempts() >= o.max_attempts) {
        End(r, v1::FAILED, fmt::format("gave up after {} attempts; last: {}", r.job.attempts(), what));
      } else {
        Requeue(r, what);
      }
      Dispatch();
      return;
    }
    s->set_state("failed");
    s->set_error(st.error_message());
    End(r, v1::FAILED, what);
    Dispatch();
  }

  // After a call failed as calls to a dead process do, every worker the run depended on is suspect until it
  // heartbeats again: the run's own worker and guidance peer, the job's other running stages' workers and the
  // holders of its results (a stage that failed fetching its input names a dead producer, not a dead self). So the
  // job's next attempt does not go to the dead one during its last seconds of lease.
  void Suspect(const ActiveRun& run) {
    std::set<std::string> ids = {run.worker_id, run.peer_id};
    for (const auto& a : active)
      if (a.job == run.job) ids.insert({a.worker_id, a.peer_id});
    std::set<std::string> names;
    if (auto held = outputs.find(run.job); held != outputs.end())
      for (const auto& [tensor, ref] : held->second) names.insert(ref.worker());
    for (auto& [id, w] : workers)
      if (w.info.state() != "lost" && (ids.count(id) || names.count(w.info.name()))) w.suspect = true;
  }

  // The decoder's MP4, from the worker that made it, on a context the coordinator can cancel.
  std::shared_ptr<const TensorBlob> FetchOutput(const v1::TensorRef& ref, grpc::ClientContext& ctx) {
    auto stub = v1::Worker::NewStub(ChannelTo(ref.address()));
    v1::FetchTensorRequest req;
    req.set_job_id(ref.job_id());
    req.set_name(StoredTensorName(ref.name(), ref.attempt()));
    auto reader = stub->FetchTensor(&ctx, req);
    grpc::Status st;
    std::string error;
    auto blob = ReadTensor(*reader, ctx, &st, &error);
    if (!blob)
      throw Unavailable(fmt::format("fetching {} of {} from worker {} ({}): {}", ref.name(), ref.job_id(), ref.worker(),
                                    ref.address(), st.ok() ? error : st.error_message()));
    return blob;
  }

  static void ResetStage(v1::StageRun& s) {
    s.set_state("pending");
    s.set_worker("");
    s.set_guidance_peer("");
    s.set_step(0);
    s.set_started_unix_us(0);
    s.set_finished_unix_us(0);
    s.set_accepted_unix_us(0);
    s.set_attempt(0);
  }

  void Requeue(JobRecord& r, const std::string& why) {
    CancelRuns(r.job.id());
    ReleaseTensors(r.job.id());
    r.job.set_state(v1::QUEUED);
    r.job.set_error(why);
    for (auto& s : *r.job.mutable_stages()) ResetStage(s);
    metrics.Count("requeued");
    Persist(r);
    Touch(r.job.id());
  }

  // A worker is gone: lost (silent past its lease) or left with work unfinished. Each running job that needed it
  // runs again: only the stages it took with it (coordinator/recovery.h) while others of the job keep results on
  // live workers, else from its first stage; a job is failed after --max-attempts. Its runs and output fetches that
  // are given up are cancelled and their results ignored (superseded, attempt).
  void WorkerGone(const std::string& worker_id, const std::string& why) {
    const std::string name = workers.at(worker_id).info.name();
    for (const std::string& id : std::vector<std::string>(live.begin(), live.end())) {
      JobRecord& r = jobs.at(id);
      if (r.job.state() != v1::RUNNING) continue;
      const bool i2v = models.at(r.job.spec().model()).image_conditioned;
      std::vector<StageView> view(r.job.stages_size());
      for (int i = 0; i < r.job.stages_size(); ++i) {
        view[i].kind = KindOfStage(r.job.stages(i).stage());
        view[i].state = r.job.stages(i).state();
      }
      for (const auto& a : active)
        if (a.job == id && (a.worker_id == worker_id || a.peer_id == worker_id)) view[a.stage_index].runs_on_gone = true;
      for (const auto& [tensor, ref] : outputs[id])
        if (ref.worker() == name)
          for (auto& v : view) v.output_on_gone = v.output_on_gone || v.kind == ProducerOf(tensor);
      const std::set<int> rerun = StagesToRerun(view, i2v);
      if (rerun.empty()) continue;
      const std::string what = fmt::format("worker {} {}", name, why);
      std::vector<std::string> names;
      bool kept = false;  // a stage keeps its result on a live worker
      for (int i = 0; i < r.job.stages_size(); ++i) {
        if (rerun.count(i)) names.push_back(StageKindName(view[i].kind));
        kept = kept || (!rerun.count(i) && view[i].state == "done");
      }
      if (r.job.attempts() >= o.max_attempts) {
        End(r, v1::FAILED, fmt::format("gave up after {} attempts; last: {}", r.job.attempts(), what));
        continue;
      }
      if (!kept) {
        spdlog::warn("job {}: {}; running it again from its first stage", id, what);
        Requeue(r, what);
        continue;
      }
      spdlog::warn("job {}: {}; running {} again (the other stages keep their results)", id, what,
                   fmt::join(names, ", "));
      for (auto& a : active)
        if (a.job == id && rerun.count(a.stage_index)) {
          superseded.insert(a.ctx.get());
          a.ctx->TryCancel();
        }
      for (int i : rerun) {
        if (view[i].kind == StageKind::kVaeDecoder) CancelStoring(id);
        for (auto out = outputs[id].begin(); out != outputs[id].end();)
          out = ProducerOf(out->first) == view[i].kind ? outputs[id].erase(out) : std::next(out);
        ResetStage(*r.job.mutable_stages(i));
      }
      r.job.set_attempts(r.job.attempts() + 1);
      r.job.set_error(what);
      metrics.Count("requeued");
      Persist(r);
      Touch(id);
    }
  }

  // Tensors held by the worker named `name` that a running job's unfinished stage (or the coordinator, for a
  // decoder's video) still has to fetch: a draining worker stays until none are left.
  int TensorsNeededOn(const std::string& name) {
    int n = 0;
    for (const auto& [id, held] : outputs) {
      auto it = jobs.find(id);
      if (it == jobs.end() || Terminal(it->second.job.state())) continue;
      const v1::Job& job = it->second.job;
      std::vector<StageView> view(job.stages_size());
      for (int i = 0; i < job.stages_size(); ++i) {
        view[i].kind = KindOfStage(job.stages(i).stage());
        view[i].state = job.stages(i).state();
      }
      const bool i2v = models.at(job.spec().model()).image_conditioned;
      for (const auto& [tensor, ref] : held)
        if (ref.worker() == name)
          for (int i = 0; i < job.stages_size(); ++i)
            n += view[i].kind == ProducerOf(tensor) && view[i].state == "done" && OutputNeeded(view, i, i2v);
    }
    return n;
  }

  void End(JobRecord& r, v1::JobState state, const std::string& error) {
    CancelRuns(r.job.id());
    live.erase(r.job.id());  // a later stage may be waiting for an input that will not come
    const int64_t now = NowUnixUs();
    r.job.set_state(state);
    r.job.set_error(error);
    r.job.set_finished_unix_us(now);
    for (auto& s : *r.job.mutable_stages()) {
      if (s.state() == "pending") s.set_state(state == v1::CANCELLED ? "cancelled" : "skipped");
      if (s.state() == "running") s.set_state("cancelled");
    }
    metrics.Count(state == v1::SUCCEEDED ? "succeeded" : state == v1::FAILED ? "failed" : "cancelled");
    if (state == v1::SUCCEEDED && r.job.started_unix_us() > 0)
      metrics.job_seconds.Add({}, DurationBuckets()).Observe((now - r.job.started_unix_us()) / 1e6);
    Persist(r);  // before it is said: a job logged as ended is ended in the store
    if (state == v1::FAILED) spdlog::error("job {} failed: {}", r.job.id(), error);
    else spdlog::info("job {} {}", r.job.id(), state == v1::SUCCEEDED ? "succeeded" : "cancelled");
    Touch(r.job.id());
    ReleaseTensors(r.job.id());
    UpdateGauges();
    ended.push_back(r.job.id());
    Forget();
    if (live.empty()) StartThread([] { malloc_trim(0); });  // the queue drained: its memory goes back to the system
  }

  // Memory holds the live jobs and the newest ended ones; older ended jobs are read from the store when asked for,
  // so a coordinator that has run a million jobs holds no more than one that has run a thousand. The job that just
  // ended is the newest, so the caller's reference to it stays good.
  void Forget() {
    while (ended.size() > static_cast<size_t>(std::max(1, o.ended_jobs_kept))) {
      const std::string id = ended.front();
      ended.pop_front();
      if (auto it = jobs.find(id); it == jobs.end() || !Terminal(it->second.job.state())) continue;
      jobs.erase(id);
      job_version.erase(id);
      outputs.erase(id);
      result_us.erase(id);
      ++evicted;
    }
  }

  void ReleaseTensors(const std::string& job) {
    std::set<std::string> addresses;
    for (const auto& [name, ref] : outputs[job]) addresses.insert(ref.address());
    outputs.erase(job);
    result_us.erase(job);
    if (addresses.empty()) return;
    StartThread([job, addresses] {
      for (const auto& a : addresses) {
        auto stub = v1::Worker::NewStub(ChannelTo(a));
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        v1::ReleaseJobRequest req;
        req.set_job_id(job);
        v1::ReleaseJobResponse resp;
        stub->ReleaseJob(&ctx, req, &resp);
      }
    });
  }

  void StoreProfile(const std::string& text) {
    if (!profiles || text.empty()) return;
    try {
      profiles->Insert(StageProfile::FromJson(json::parse(text), "worker profile"));
    } catch (const std::exception& e) {
      spdlog::warn("a worker's stage profile was not stored: {}", e.what());
    }
  }

  // ---- monitor: lost workers ----

  void Monitor() {
    std::unique_lock lock(mu);
    while (!stopping) {
      int64_t wait_ms = std::max(50, o.heartbeat_ms / 2);
      if (replan_due_ms > 0) wait_ms = std::clamp<int64_t>(replan_due_ms - SteadyMs(), 0, wait_ms);
      monitor_cv.wait_for(lock, std::chrono::milliseconds(wait_ms));
      if (stopping) break;
      if (replan_due_ms > 0 && SteadyMs() >= replan_due_ms) Replan(lock);
      if (stopping) break;
      const int64_t now = SteadyMs();
      bool changed = false;
      for (auto& [id, w] : workers) {
        if (w.info.state() == "lost" || now - w.last_heartbeat_ms <= o.worker_timeout_ms) continue;
        spdlog::warn("worker {} ({}) sent no heartbeat for {} ms: lost", w.info.name(), w.info.address(),
                     now - w.last_heartbeat_ms);
        w.info.set_state("lost");
        w.info.set_job_id("");
        changed = true;
        WorkerGone(id, fmt::format("stopped answering (no heartbeat for {} ms)", now - w.last_heartbeat_ms));
      }
      if (changed) {
        ScheduleReplan();  // what the lost worker held goes elsewhere
        UpdateGauges();
        Dispatch();
      }
    }
  }

  // ---- the service ----

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* req, v1::RegisterResponse* resp) override {
    static const std::regex device_re("^(cpu|cuda:[0-9]{1,3})$");
    if (req->name().empty() || req->name().size() > 128)
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, "name: accepted 1 to 128 characters");
    if (!std::regex_match(req->device(), device_re))
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("device '{}': accepted cpu or cuda:N", Printable(req->device())));
    if (req->device_capacity_bytes() < 0 || req->device_capacity_bytes() > (int64_t{1} << 50))
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("device_capacity_bytes {}: accepted 0 (unlimited) up to 1 PiB",
                                req->device_capacity_bytes()));
    if (req->host_memory_bytes() < 0)
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("host_memory_bytes {}: accepted 0 or more", req->host_memory_bytes()));
    if (req->address().find(':') == std::string::npos)
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("address '{}': accepted HOST:PORT", Printable(req->address())));
    // Its channels to the worker would carry this coordinator's token: in clear only to a loopback address.
    if (const std::string refusal = ClientChannelRefusal(req->address()); !refusal.empty())
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, "address " + refusal);
    // A live worker of that name elsewhere: a second worker given the same name, or this one started again after
    // its old process died (its lease has not run out yet). The old address answering tells which.
    std::string silent;  // the old entry, found not answering
    {
      std::string other, address;
      {
        std::lock_guard lock(mu);
        if (WorkerEntry* old = WorkerByName(req->name());
            old && old->info.state() != "lost" && old->info.address() != req->address())
          other = old->info.id(), address = old->info.address();
      }
      if (!other.empty()) {
        if (Answers(address, std::chrono::milliseconds(1000)))
          return Refuse(grpc::StatusCode::ALREADY_EXISTS,
                        fmt::format("name '{}': a live worker at {} already has it; give each worker its own --name",
                                    Printable(req->name()), address));
        silent = other;
      }
    }
    std::string replaced;
    {
      std::lock_guard lock(mu);
      if (WorkerEntry* old = WorkerByName(req->name())) {
        if (old->info.state() != "lost" && old->info.address() != req->address() && old->info.id() != silent)
          return Refuse(grpc::StatusCode::ALREADY_EXISTS,
                        fmt::format("name '{}': a live worker at {} already has it; give each worker its own --name",
                                    Printable(req->name()), old->info.address()));
        if (old->info.state() != "lost" && old->info.address() == req->address() && old->info.state() == "busy")
          return Refuse(grpc::StatusCode::ALREADY_EXISTS,
                        fmt::format("name '{}': this worker is already registered and running a stage",
                                    Printable(req->name())));
        replaced = old->info.id();
        // The same process registering again (its heartbeat was refused), a new one at its address, or a new one
        // elsewhere whose predecessor no longer answers: whatever the old registration held is not there any more.
        if (old->info.state() != "lost")
          WorkerGone(replaced, old->info.id() == silent ? "was started again (its old process does not answer)"
                                                        : "registered again");
        workers.erase(replaced);
      }
      WorkerEntry w;
      // Unique across restarts too: a worker still heartbeating an id from before a restart is told NOT_FOUND and
      // registers again, rather than keeping alive another worker's new entry under a reused id.
      const std::string id = fmt::format("w{}-{}", boot, next_worker++);
      w.info.set_id(id);
      w.info.set_name(req->name());
      w.info.set_address(req->address());
      w.info.set_host(req->host());
      w.info.set_device(req->device());
      w.info.set_device_capacity_bytes(req->device_capacity_bytes());
      w.info.set_host_memory_bytes(req->host_memory_bytes());
      w.info.set_state("loading");
      w.info.set_last_heartbeat_unix_us(NowUnixUs());
      w.last_heartbeat_ms = SteadyMs();
      workers[id] = w;
      resp->set_worker_id(id);
      resp->set_heartbeat_interval_ms(o.heartbeat_ms);
      if (Planned()) {
        ScheduleReplan();  // every worker's share may change with one more
      } else {
        StartLoad(workers[id]);
      }
      UpdateGauges();
    }
    spdlog::info("worker {} registered from {} ({}, {}){}", Printable(req->name()), Printable(req->address()),
                 Printable(req->device()),
                 req->device_capacity_bytes() > 0 ? FormatCapacity(req->device_capacity_bytes()) : "unlimited",
                 replaced.empty() ? "" : " replacing its earlier registration");
    return grpc::Status::OK;
  }

  static std::string FormatCapacity(int64_t b) { return fmt::format("{:.1f} GiB", b / double(int64_t{1} << 30)); }

  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req, v1::HeartbeatResponse*) override {
    std::lock_guard lock(mu);
    auto it = workers.find(req->worker_id());
    if (it == workers.end())
      return Refuse(grpc::StatusCode::NOT_FOUND,
                    fmt::format("worker {}: not registered here", Printable(req->worker_id())));
    WorkerEntry& w = it->second;
    if (w.info.state() == "lost")
      // It went silent and its work was given away; it registers again from scratch.
      return Refuse(grpc::StatusCode::NOT_FOUND,
                    fmt::format("worker {}: was declared lost", Printable(req->worker_id())));
    w.last_heartbeat_ms = SteadyMs();
    w.info.set_last_heartbeat_unix_us(NowUnixUs());
    if (std::exchange(w.suspect, false)) Dispatch();  // it is alive after all
    w.info.set_device_used_bytes(req->device_used_bytes());
    w.info.set_device_peak_bytes(req->device_peak_bytes());
    w.info.set_host_rss_bytes(req->host_rss_bytes());
    const std::string& n = w.info.name();
    metrics.worker_device.Add({{"worker", n}, {"kind", "used"}}).Set(static_cast<double>(req->device_used_bytes()));
    metrics.worker_device.Add({{"worker", n}, {"kind", "peak"}}).Set(static_cast<double>(req->device_peak_bytes()));
    metrics.worker_device.Add({{"worker", n}, {"kind", "capacity"}})
        .Set(static_cast<double>(w.info.device_capacity_bytes()));
    metrics.worker_host.Add({{"worker", n}, {"kind", "rss"}}).Set(static_cast<double>(req->host_rss_bytes()));
    metrics.worker_host.Add({{"worker", n}, {"kind", "total"}}).Set(static_cast<double>(w.info.host_memory_bytes()));
    return grpc::Status::OK;
  }

  grpc::Status Leave(grpc::ServerContext*, const v1::LeaveRequest* req, v1::LeaveResponse* resp) override {
    std::lock_guard lock(mu);
    auto it = workers.find(req->worker_id());
    if (it == workers.end() || it->second.info.state() == "lost")
      return Refuse(grpc::StatusCode::NOT_FOUND,
                    fmt::format("worker {}: not registered here (its work, if any, was given to others)",
                                Printable(req->worker_id())));
    WorkerEntry& w = it->second;
    const std::string id = w.info.id(), name = w.info.name();
    w.last_heartbeat_ms = SteadyMs();  // a draining worker asks often: that is its heartbeat
    w.info.set_last_heartbeat_unix_us(NowUnixUs());
    w.suspect = false;
    int running = 0;
    for (const auto& a : active) running += a.worker_id == id || a.peer_id == id;
    const int needed = TensorsNeededOn(name);
    if (req->going()) {
      spdlog::info("worker {} left{}", name,
                   running + needed > 0 ? fmt::format(" with {} stage run(s) and {} needed tensor(s) unfinished",
                                                      running, needed)
                                        : "");
      if (running + needed > 0) WorkerGone(id, "left before its work was done");
      workers.erase(it);
      ScheduleReplan();
      UpdateGauges();
      Dispatch();
      return grpc::Status::OK;
    }
    if (w.info.state() != "draining") {
      spdlog::info("worker {} is draining: nothing new is sent to it; it leaves once {} stage run(s) end and {} "
                   "tensor(s) are fetched",
                   name, running, needed);
      w.info.set_state("draining");
      w.reload_pending = false;
      ScheduleReplan();  // its stages go to the others
      UpdateGauges();
    }
    resp->set_stages_running(running);
    resp->set_tensors_needed(needed);
    return grpc::Status::OK;
  }

  grpc::Status SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req, v1::SubmitJobResponse* resp) override {
    v1::JobSpec spec = req->spec();
    const Manifest* m_ptr = nullptr;
    try {
      m_ptr = &ValidateSubmit(models, *req, spec, o.limits);
    } catch (const Error& e) {
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    }
    const Manifest& m = *m_ptr;
    JobRecord rec;
    {
      std::lock_guard lock(mu);
      if (stopping) return Refuse(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
      if (draining)
        return Refuse(grpc::StatusCode::UNAVAILABLE,
                      "the coordinator is draining (it was told to stop): it accepts no jobs until it starts again; "
                      "submit then");
      const int queued = LiveCounts().first;
      if (queued >= o.limits.max_queued_jobs)
        return Refuse(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      fmt::format("queue full: {} jobs queued, the most this coordinator holds (its "
                                  "--max-queued-jobs {} raises it); retry when jobs have started",
                                  queued, o.limits.max_queued_jobs));
      try {
        rec.seq = store->NextSeq();
      } catch (const Error& e) {
        return Refuse(grpc::StatusCode::INTERNAL, e.what());
      }
      auto& j = rec.job;
      j.set_id(fmt::format("job-{}", rec.seq));
      j.set_state(v1::QUEUED);
      j.set_priority(req->priority());
      *j.mutable_spec() = spec;
      j.set_submitted_unix_us(NowUnixUs());
      for (const auto& [k, sm] : m.stages) {
        auto* s = j.add_stages();
        s->set_stage(StageOf(k));
        s->set_state("pending");
        if (k == StageKind::kDenoiser) s->set_steps(spec.steps());
      }
      // Durable before it is acknowledged: an accepted job survives a restart.
      try {
        store->Save(rec);
      } catch (const Error& e) {
        return Refuse(grpc::StatusCode::INTERNAL, e.what());
      }
      resp->set_job_id(j.id());
      jobs[j.id()] = rec;
      live.insert(j.id());
      metrics.Count("submitted");
      Touch(j.id());
      spdlog::info("job {} queued: {} {} frames {}x{}, {} steps, priority {}", j.id(), spec.model(), spec.frames(),
                   spec.width(), spec.height(), spec.steps(), req->priority());
      Dispatch();
    }
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* resp) override {
    {
      std::lock_guard lock(mu);
      if (auto it = jobs.find(req->job_id()); it != jobs.end()) {
        *resp = Public(it->second);
        return grpc::Status::OK;
      }
    }
    const auto stored = Stored(req->job_id());
    if (!stored) return NoSuchJob(req->job_id());
    *resp = Public(*stored);
    return grpc::Status::OK;
  }

  // A job that ended long enough ago to have left memory (ended_jobs_kept), read from the store; none if unknown.
  std::optional<JobRecord> Stored(const std::string& id) {
    try {
      return store->Load(id);
    } catch (const Error& e) {
      spdlog::error("{}", e.what());
      return std::nullopt;
    }
  }

  grpc::Status ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override {
    if (req->limit() < 0)
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, fmt::format("limit {}: accepted 0 or more", req->limit()));
    std::lock_guard lock(mu);
    std::vector<const JobRecord*> all;
    for (const auto& [id, r] : jobs)
      if (!req->active_only() || !Terminal(r.job.state())) all.push_back(&r);
    const size_t limit = req->limit() > 0 ? static_cast<size_t>(req->limit()) : 100;
    // More than memory holds: the older ended jobs come from the store (memory has the fresher copy of the rest).
    std::vector<JobRecord> older;
    if (!req->active_only() && all.size() < limit && evicted > 0) {
      try {
        for (auto& r : store->LoadNewest(static_cast<int>(std::min<size_t>(limit, 1 << 20))))
          if (!jobs.count(r.job.id())) older.push_back(std::move(r));
      } catch (const Error& e) {
        spdlog::error("{}", e.what());
      }
      for (const auto& r : older) all.push_back(&r);
    }
    std::sort(all.begin(), all.end(), [](const JobRecord* a, const JobRecord* b) { return a->seq > b->seq; });
    for (size_t i = 0; i < all.size() && i < limit; ++i) *resp->add_jobs() = Public(*all[i]);
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                        grpc::ServerWriter<v1::Job>* writer) override {
    uint64_t seen = 0;
    while (!ctx->IsCancelled()) {
      v1::Job snapshot;
      {
        std::unique_lock lock(mu);
        auto it = jobs.find(req->job_id());
        if (it == jobs.end()) {
          lock.unlock();
          // Ended and out of memory (or never known): its last state, from the store.
          const auto stored = Stored(req->job_id());
          if (!stored) return NoSuchJob(req->job_id());
          writer->Write(Public(*stored));
          return grpc::Status::OK;
        }
        const uint64_t v = job_version[req->job_id()];
        if (v == seen && seen != 0) {
          cv.wait_for(lock, std::chrono::milliseconds(500));
          if (stopping) return Refuse(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
          continue;
        }
        seen = v == 0 ? 1 : v;
        snapshot = Public(it->second);
      }
      if (!writer->Write(snapshot)) break;
      if (Terminal(snapshot.state())) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* resp) override {
    std::lock_guard lock(mu);
    auto it = jobs.find(req->job_id());
    if (it == jobs.end()) {
      const auto stored = Stored(req->job_id());  // only ended jobs leave memory
      if (!stored) return NoSuchJob(req->job_id());
      return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                    fmt::format("job {}: already {}", stored->job.id(), v1::JobState_Name(stored->job.state())));
    }
    JobRecord& r = it->second;
    if (Terminal(r.job.state()))
      return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                    fmt::format("job {}: already {}", r.job.id(), v1::JobState_Name(r.job.state())));
    End(r, v1::CANCELLED, "cancelled by a client");  // the worker stops at its next step and is free again
    *resp = Public(r);
    return grpc::Status::OK;
  }

  grpc::Status ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*, v1::ListWorkersResponse* resp) override {
    std::lock_guard lock(mu);
    for (const auto& [id, w] : workers) *resp->add_workers() = w.info;
    // What each busy worker runs now, read from the runs in flight (a worker is in at most one).
    for (auto& info : *resp->mutable_workers())
      for (const auto& a : active) {
        if (a.worker_id != info.id() && a.peer_id != info.id()) continue;
        auto it = jobs.find(a.job);
        if (it == jobs.end() || a.stage_index >= it->second.job.stages_size()) continue;
        const v1::StageRun& s = it->second.job.stages(a.stage_index);
        info.set_stage(s.stage());
        info.set_step(s.step());
        info.set_steps(s.steps());
        info.set_guidance_branch(a.peer_id == info.id());
      }
    for (const auto& [name, m] : models) resp->add_models(name);
    return grpc::Status::OK;
  }

  grpc::Status PlanJob(grpc::ServerContext*, const v1::PlanJobRequest* req, v1::PlanJobResponse* resp) override {
    std::string report;
    const grpc::Status st = PlanReportFor(*req, &report);
    if (st.ok()) resp->set_report_json(report);
    return st;
  }

  // The plan for a job shape on the live workers, from the profile store: PlanJob's answer, and Tune's last event.
  grpc::Status PlanReportFor(const v1::PlanJobRequest& request, std::string* report) {
    const v1::PlanJobRequest* req = &request;
    auto mit = models.find(req->model());
    if (mit == models.end()) {
      std::vector<std::string> names;
      for (const auto& [n, m] : models) names.push_back(n);
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("model '{}': this coordinator serves {}", Printable(req->model()),
                                fmt::join(names, ", ")));
    }
    const Manifest& m = mit->second;
    planner::Job job = planner::JobOf(m, req->frames(), req->height(), req->width(), req->steps());
    if (req->has_guidance()) job.guidance = req->guidance();
    const double margin = req->has_margin() ? req->margin() : 0.10;
    std::vector<WorkerSlot> slots;
    try {
      if (!(margin >= 0 && margin < 0.9))
        throw InvalidArgument(fmt::format("margin {}: accepted 0 to 0.9", margin));
      const planner::Objective objective =
          planner::ParseObjective(req->objective().empty() ? o.plan_objective : req->objective(), "objective");
      planner::ValidateJob(m, job);
      {
        std::lock_guard lock(mu);
        slots = PlannableWorkers();
      }
      if (slots.empty())
        return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                      "no live workers to plan for; start workers, or plan for a described machine with "
                      "`reel plan --device-memory SIZE`");
      const planner::Machine machine = MachineOfWorkers(slots, margin);
      const planner::CostModel model(m, StoredProfiles());
      planner::PlanningOptions po = PlanOptions();
      po.allow_int8 = req->allow_int8();
      const planner::Problem problem = planner::BuildProblem(model, machine, job, po);
      const planner::Plan plan = planner::Search(problem, objective);
      const std::vector<std::string> would_fit =
          plan.feasible ? std::vector<std::string>{} : planner::WhatWouldFit(model, machine, job, objective, po);
      *report = planner::PlanReport(m, job, objective, problem, plan, would_fit, req->explain()).dump();
    } catch (const Error& e) {
      return Refuse(e.kind() == ErrorKind::kInvalidArgument ? grpc::StatusCode::INVALID_ARGUMENT
                                                            : grpc::StatusCode::INTERNAL,
                    e.what());
    }
    return grpc::Status::OK;
  }

  grpc::Status Tune(grpc::ServerContext* ctx, const v1::TuneClusterRequest* req,
                    grpc::ServerWriter<v1::TuneClusterEvent>* writer) override {
    const v1::TuneRequest& t = req->tune();
    if (!models.count(t.model()))
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT, fmt::format("model '{}': this coordinator does not serve it",
                                                                     t.model()));
    // The workers to tune, marked "tuning" so nothing is dispatched to them until their turn is over.
    std::vector<std::pair<std::string, std::string>> chosen;  // id, address
    {
      std::lock_guard lock(mu);
      std::set<std::string> named(req->workers().begin(), req->workers().end());
      for (const auto& n : named) {
        WorkerEntry* w = WorkerByName(n);
        if (!w || w->info.state() == "lost")
          return Refuse(grpc::StatusCode::NOT_FOUND, fmt::format("worker '{}': not registered here", Printable(n)));
        if (w->info.state() != "idle")
          return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                        fmt::format("worker '{}' is {}; tune it when it is idle", Printable(n), w->info.state()));
      }
      for (auto& [id, w] : workers)
        if (w.info.state() == "idle" && (named.empty() || named.count(w.info.name()))) {
          w.info.set_state("tuning");
          chosen.emplace_back(id, w.info.address());
        }
      if (chosen.empty())
        return Refuse(grpc::StatusCode::FAILED_PRECONDITION, "no idle workers to tune; wait for running jobs to end");
      UpdateGauges();
    }
    for (const auto& [id, address] : chosen) {
      std::string name;
      {
        std::lock_guard lock(mu);
        auto it = workers.find(id);
        if (it == workers.end() || it->second.info.state() != "tuning") continue;  // lost meanwhile
        name = it->second.info.name();
      }
      auto stub = v1::Worker::NewStub(ChannelTo(address));
      grpc::ClientContext wctx;
      auto reader = stub->Tune(&wctx, t);
      v1::TuneClusterEvent ev;
      ev.set_worker(name);
      while (reader->Read(ev.mutable_measurement())) {
        if (ev.measurement().has_profile()) StoreProfile(ev.measurement().profile().json());
        if (ctx->IsCancelled() || !writer->Write(ev)) wctx.TryCancel();
      }
      const grpc::Status st = reader->Finish();
      if (!st.ok() && !ctx->IsCancelled()) {
        spdlog::error("worker {}: tuning failed: {}", name, st.error_message());
        ev.mutable_measurement()->Clear();
        ev.mutable_measurement()->set_outcome("error");
        ev.mutable_measurement()->set_error(st.error_message());
        writer->Write(ev);
      }
      std::lock_guard lock(mu);
      auto it = workers.find(id);
      if (it != workers.end() && it->second.info.state() == "tuning") it->second.info.set_state("idle");
      UpdateGauges();
      Dispatch();
    }
    {
      std::lock_guard lock(mu);
      for (const auto& [id, address] : chosen)  // a cancelled call leaves none of them tuning
        if (auto it = workers.find(id); it != workers.end() && it->second.info.state() == "tuning") {
          it->second.info.set_state("idle");
        }
      ScheduleReplan();  // new measurements: the placement may change
      Dispatch();
    }
    if (ctx->IsCancelled()) return Refuse(grpc::StatusCode::CANCELLED, "the client went away");
    v1::PlanJobRequest plan;
    plan.set_model(t.model());
    plan.set_frames(t.frames());
    plan.set_height(t.height());
    plan.set_width(t.width());
    plan.set_steps(t.steps());
    if (t.has_guidance()) plan.set_guidance(t.guidance());
    if (t.has_margin()) plan.set_margin(t.margin());
    plan.set_allow_int8(t.allow_int8());
    std::string report;
    const grpc::Status st = PlanReportFor(plan, &report);
    if (!st.ok()) return st;
    v1::TuneClusterEvent last;
    last.set_plan_report_json(report);
    writer->Write(last);
    return grpc::Status::OK;
  }

  grpc::Status DownloadOutput(grpc::ServerContext*, const v1::GetJobRequest* req,
                              grpc::ServerWriter<v1::TensorChunk>* writer) override {
    std::string path;
    std::optional<JobRecord> stored;
    {
      std::lock_guard lock(mu);
      auto it = jobs.find(req->job_id());
      if (it != jobs.end()) stored = it->second;
    }
    if (!stored) stored = Stored(req->job_id());
    if (!stored) return NoSuchJob(req->job_id());
    if (stored->job.state() != v1::SUCCEEDED)
      return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                    fmt::format("job {}: {}, it has no output", Printable(req->job_id()),
                                v1::JobState_Name(stored->job.state())));
    path = stored->output_path;
    TensorBlob blob;
    std::ifstream in(path, std::ios::binary);
    if (!in)
      return Refuse(grpc::StatusCode::DATA_LOSS,
                    fmt::format("job {}: output {} is missing", Printable(req->job_id()), path));
    blob.data.assign(std::istreambuf_iterator<char>(in), {});
    blob.dtype = "u8";
    blob.shape = {blob.bytes()};
    blob.xxh3 = Checksum(blob.data);
    if (!WriteTensor(writer, std::make_shared<const TensorBlob>(std::move(blob)))) return Refuse(grpc::StatusCode::CANCELLED, "the client went away");
    return grpc::Status::OK;
  }
};

Coordinator::Coordinator(const CoordinatorOptions& options) : impl_(std::make_unique<Impl>(options)) {
  Impl& m = *impl_;
  if (m.o.data.empty()) m.o.data = DefaultDataDir();
  if (m.o.heartbeat_ms <= 0 || m.o.worker_timeout_ms <= m.o.heartbeat_ms)
    throw InvalidArgument(fmt::format("--worker-timeout-ms {}: accepted more than the heartbeat interval ({} ms)",
                                      m.o.worker_timeout_ms, m.o.heartbeat_ms));
  if (m.o.drain_seconds < 0 || m.o.drain_seconds > 3600)
    throw InvalidArgument(fmt::format("--drain-seconds {}: accepted 0 to 3600", m.o.drain_seconds));
  if (m.o.ended_jobs_kept < 1 || m.o.ended_jobs_kept > 1000000)
    throw InvalidArgument(fmt::format("--keep-ended-jobs {}: accepted 1 to 1000000", m.o.ended_jobs_kept));
  if (m.o.max_attempts < 1 || m.o.max_attempts > 100)
    throw InvalidArgument(fmt::format("--max-attempts {}: accepted 1 to 100", m.o.max_attempts));
  ValidateLimits(m.o.limits);
  m.security = LoadSecurity(m.o.security);
  CheckListen(m.o.listen, m.security);
  SetClientSecurity(m.security);  // its calls to workers present the same certificate and token
  const ModelRoots roots(m.o.model_roots, ModelCacheDir());
  std::error_code ec;
  fs::create_directories(m.o.data / "outputs", ec);
  RequireWritableDirectory(m.o.data, "--data");
  if (m.o.models.empty()) throw InvalidArgument("--model: accepted one or more presets or package directories");
  for (const auto& name : m.o.models)
    m.models[name] = LoadManifest(FindPreset(name) ? ResolveModel(name) : roots.Confine(name, "--model"));
  if (!m.o.placement.empty()) m.placement = LoadPlacement(m.o.placement);
  m.store = std::make_unique<JobStore>((m.o.data / "jobs.db").string());
  m.profiles = std::make_unique<ProfileStore>((m.o.data / "profiles.db").string());
  m.boot = m.store->Boot();
  int requeued = 0, queued = 0;
  std::vector<std::string> changed;
  for (auto& r : m.store->LoadForStart(m.o.ended_jobs_kept)) {
    const std::string id = r.job.id();
    if (!Terminal(r.job.state()) && !m.models.count(r.job.spec().model())) {
      r.job.set_state(v1::FAILED);
      r.job.set_error(fmt::format("model '{}' is no longer served by this coordinator", r.job.spec().model()));
      changed.push_back(id);
    } else if (r.job.state() == v1::RUNNING) {
      // Its tensors were on workers that may be gone: it runs again from its first stage.
      r.job.set_state(v1::QUEUED);
      for (auto& s : *r.job.mutable_stages()) Impl::ResetStage(s);
      changed.push_back(id);
      ++requeued;
    } else if (r.job.state() == v1::QUEUED) {
      ++queued;
    }
    if (!Terminal(r.job.state())) m.live.insert(id);
    if (Terminal(r.job.state())) m.ended.push_back(id);
    m.jobs[id] = std::move(r);
  }
  // As many ended jobs as memory keeps: the store may hold older ones, which listings read when asked for more.
  if (m.ended.size() >= static_cast<size_t>(m.o.ended_jobs_kept)) m.evicted = 1;
  std::vector<const JobRecord*> writes;
  for (const auto& id : changed) writes.push_back(&m.jobs.at(id));
  m.store->SaveAll(writes);  // one transaction: a crash here leaves the store as it was
  if (queued + requeued > 0)
    spdlog::info("job store {}: {} queued job(s), {} interrupted job(s) queued again", m.store->path(), queued,
                 requeued);
}

Coordinator::~Coordinator() { Shutdown(); }

void Coordinator::Start() {
  Impl& m = *impl_;
  if (!m.o.metrics.empty()) m.metrics.endpoint.Serve(m.o.metrics);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(m.o.listen, ServerCredentials(m.security), &port);
  ConfigureServer(builder);
  builder.SetMaxReceiveMessageSize(static_cast<int>(m.o.limits.max_message_bytes));  // --max-message-bytes
  builder.RegisterService(&m);
  m.server = builder.BuildAndStart();
  if (!m.server || port == 0)
    throw InvalidArgument(
        fmt::format("--listen {}: cannot listen there; accepted HOST:PORT that is free (port 0 picks one)", m.o.listen));
  m.bound = fmt::format("{}:{}", m.o.listen.substr(0, m.o.listen.rfind(':')), port);
  {
    AtomicFile f(m.o.data / "coordinator.address", "--data");
    std::ofstream(f.temp_path()) << m.bound << "\n";
    f.Commit();
  }
  if (m.metrics.endpoint.port() > 0) {
    AtomicFile f(m.o.data / "metrics.address", "--data");
    std::ofstream(f.temp_path()) << m.o.metrics.substr(0, m.o.metrics.rfind(':')) << ":" << metrics_port() << "\n";
    f.Commit();
  }
  m.monitor = std::thread([&m] { m.Monitor(); });
  {
    std::lock_guard lock(m.mu);
    m.UpdateGauges();
    m.Dispatch();
  }
  std::vector<std::string> names;
  for (const auto& [n, man] : m.models) names.push_back(n);
  spdlog::info("coordinator serving on {} (models {}; data {}; {}){}", m.bound, fmt::join(names, ", "),
               m.o.data.string(), m.security.Describe(),
               m.metrics.endpoint.port() > 0 ? fmt::format("; metrics on port {}", metrics_port()) : "");
}

std::string Coordinator::address() const { return impl_->bound; }

int Coordinator::metrics_port() const { return impl_->metrics.endpoint.port(); }

void Coordinator::BeginDrain() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.draining || m.stopping) return;
  m.draining = true;
  int queued = 0;
  for (const auto& id : m.live) queued += m.jobs.at(id).job.state() == v1::QUEUED;
  spdlog::info("coordinator draining: accepting no jobs and starting none; {} running job(s) may finish within "
               "--drain-seconds {}, {} queued job(s) wait for the next start",
               m.live.size() - queued, m.o.drain_seconds, queued);
  m.cv.notify_all();
}

int Coordinator::running_jobs() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  int n = 0;
  for (const auto& id : m.live) n += m.jobs.at(id).job.state() == v1::RUNNING;
  return n;
}

void Coordinator::Shutdown() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    if (m.stopping) return;
    m.stopping = true;
    for (auto& a : m.active) a.ctx->TryCancel();
    for (auto& [job, ctx] : m.storing) ctx->TryCancel();
    // Jobs still running go back to the queue in the store now (a restart would do it too): `reel jobs` against
    // the next start, or the store read directly, shows them as what they are.
    std::vector<const JobRecord*> requeued;
    for (const auto& id : m.live) {
      JobRecord& r = m.jobs.at(id);
      if (r.job.state() != v1::RUNNING) continue;
      r.job.set_state(v1::QUEUED);
      for (auto& s : *r.job.mutable_stages()) Impl::ResetStage(s);
      requeued.push_back(&r);
    }
    if (m.store && !requeued.empty()) {
      try {
        m.store->SaveAll(requeued);
        spdlog::info("coordinator: {} running job(s) queued again for the next start", requeued.size());
      } catch (const Error& e) {
        spdlog::error("{}", e.what());
      }
    }
    m.cv.notify_all();
    m.pool_cv.notify_all();
    m.monitor_cv.notify_all();
  }
  if (m.monitor.joinable()) m.monitor.join();
  if (m.server) m.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::unique_lock lock(m.mu);
  m.cv.wait_for(lock, std::chrono::seconds(10), [&] { return m.threads == 0; });
}

int RunCoordinator(const CoordinatorOptions& options) {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  Coordinator c(options);
  c.Start();
  int sig = 0;
  sigwait(&sigs, &sig);
  DrainCoordinator(c, sigs, options.drain_seconds);
  spdlog::info("coordinator stopping");
  c.Shutdown();
  return 0;
}

void DrainCoordinator(Coordinator& c, const sigset_t& signals, int seconds) {
  c.BeginDrain();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  for (int running; (running = c.running_jobs()) > 0;) {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) {
      spdlog::warn("coordinator: {} job(s) still running after --drain-seconds {}; stopping anyway", running, seconds);
      return;
    }
    const auto wait = std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(100));
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    const int sig = sigtimedwait(&signals, nullptr, &ts);
    if (sig > 0 && sig != SIGCHLD) {
      spdlog::warn("coordinator: signal {} during the drain; stopping now", sig);
      return;
    }
  }
  spdlog::info("coordinator drained: no job running");
}

}  // namespace reel
