// The coordinator's gRPC service: each RPC becomes an event for the core (coordinator_core.h) or a read of its
// state, and the core's reply becomes the RPC's status. What it checks itself is what needs I/O: a request's
// shape, whether an old worker still answers, the store and the profile store.
#include "coordinator/coordinator.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <optional>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/printable.h"
#include "coordinator/auto_placement.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/job_validation.h"
#include "models/presets.h"
#include "models/synth.h"
#include "package/manifest.h"
#include "planner/plan_report.h"
#include "planner/planning.h"
#include "planner/search.h"
#include "security/path_policy.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"

namespace reel {

namespace fs = std::filesystem;
namespace v1 = reel::v1;

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

bool Terminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

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

}  // namespace

// Without a planner: the placement file's entry for the worker's name, else every stage with no offload.
core::Assignments Coordinator::Impl::StaticTarget(const std::string& worker) const {
  core::Assignments out;
  for (const auto& [model, m] : models) {
    core::Assignment& a = out[model];
    if (const auto* entry = placement.Find(worker)) {
      for (const auto& [k, s] : entry->stages)
        if (m.has_stage(k)) a.push_back({k, StrategyOf(s)});
      continue;
    }
    for (const auto& [k, sm] : m.stages) a.push_back({k, {}});
  }
  return out;
}

grpc::Status Coordinator::Impl::Register(grpc::ServerContext*, const v1::RegisterRequest* req,
                                         v1::RegisterResponse* resp) {
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
  // A live worker of that name elsewhere: a second worker given the same name, or this one started again after its
  // old process died (its lease has not run out yet). The old address answering tells which; the core decides.
  core::ev::Register e;
  {
    std::string other, address;
    {
      std::lock_guard lock(mu);
      if (const core::Worker* old = core->LiveElsewhere(req->name(), req->address()))
        other = old->id, address = old->address;
    }
    if (!other.empty() && !Answers(address, std::chrono::milliseconds(1000))) e.silent_id = other;
  }
  e.name = req->name();
  e.address = req->address();
  e.host = req->host();
  e.device = req->device();
  e.capacity_bytes = req->device_capacity_bytes();
  e.host_memory_bytes = req->host_memory_bytes();
  e.sequence_parallel = req->sequence_parallel();
  if (!Planned()) e.static_target = StaticTarget(req->name());
  std::lock_guard lock(mu);
  const core::Reply r = Step(e);
  if (r.code != core::Code::kOk) return StatusOf(r);
  resp->set_worker_id(r.id);
  resp->set_heartbeat_interval_ms(o.heartbeat_ms);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatResponse*) {
  std::lock_guard lock(mu);
  const core::Reply r = Step(core::ev::Heartbeat{req->worker_id(), req->device_used_bytes(),
                                                 req->device_peak_bytes(), req->host_rss_bytes()});
  if (r.code != core::Code::kOk) return StatusOf(r);
  const auto it = core->workers().find(req->worker_id());
  const std::string& n = it->second.name;
  metrics.worker_device.Add({{"worker", n}, {"kind", "used"}}).Set(static_cast<double>(req->device_used_bytes()));
  metrics.worker_device.Add({{"worker", n}, {"kind", "peak"}}).Set(static_cast<double>(req->device_peak_bytes()));
  metrics.worker_device.Add({{"worker", n}, {"kind", "capacity"}})
      .Set(static_cast<double>(it->second.capacity_bytes));
  metrics.worker_host.Add({{"worker", n}, {"kind", "rss"}}).Set(static_cast<double>(req->host_rss_bytes()));
  metrics.worker_host.Add({{"worker", n}, {"kind", "total"}}).Set(static_cast<double>(it->second.host_memory_bytes));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::Leave(grpc::ServerContext*, const v1::LeaveRequest* req, v1::LeaveResponse* resp) {
  std::lock_guard lock(mu);
  const core::Reply r = Step(core::ev::Leave{req->worker_id(), req->going()});
  if (r.code != core::Code::kOk) return StatusOf(r);
  resp->set_stages_running(r.stages_running);
  resp->set_tensors_needed(r.tensors_needed);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req,
                                          v1::SubmitJobResponse* resp) {
  if (req->request_id().size() > 128)
    return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  fmt::format("request_id: {} bytes; accepted at most 128", req->request_id().size()));
  v1::JobSpec spec = req->spec();
  try {
    ValidateSubmit(models, *req, spec, o.limits);
  } catch (const Error& e) {
    return Refuse(grpc::StatusCode::INVALID_ARGUMENT, e.what());
  }
  core::ev::Submit e;
  e.shape = {spec.model(), spec.frames(), spec.height(), spec.width(), spec.steps(), spec.guidance(),
             spec.objective() == "latency"};
  e.priority = req->priority();
  e.request_id = req->request_id();
  std::lock_guard lock(mu);
  // A retry of a request whose job left memory: the store still has it (the core answers the rest).
  if (!e.request_id.empty() && !core->FindRequest(e.request_id)) {
    try {
      if (auto earlier = store->LoadByRequest(e.request_id)) {
        resp->set_job_id(earlier->job.id());
        return grpc::Status::OK;
      }
    } catch (const Error& err) {
      return Refuse(grpc::StatusCode::INTERNAL, err.what());
    }
  }
  if (!core->FindRequest(e.request_id) || e.request_id.empty()) {
    if (auto refusal = core->Admission()) return StatusOf(*refusal);
    // Durable before it is acknowledged: an accepted job survives a restart.
    const core::Job preview = core->Preview(e, Now());
    extras[preview.id].spec = spec;
    try {
      store->Save(RecordOf(preview));
    } catch (const Error& err) {
      extras.erase(preview.id);
      return Refuse(grpc::StatusCode::INTERNAL, err.what());
    }
    e.stored = true;
  }
  const core::Reply r = Step(e);
  if (r.code != core::Code::kOk) return StatusOf(r);
  resp->set_job_id(r.id);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::GetJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* resp) {
  {
    std::lock_guard lock(mu);
    if (const core::Job* j = core->FindJob(req->job_id())) {
      *resp = Public(*j);
      return grpc::Status::OK;
    }
  }
  const auto stored = Stored(req->job_id());
  if (!stored) return NoSuchJob(req->job_id());
  *resp = stored->job;
  resp->mutable_spec()->clear_image();
  return grpc::Status::OK;
}

// A job that ended long enough ago to have left memory (ended_jobs_kept), read from the store; none if unknown.
std::optional<JobRecord> Coordinator::Impl::Stored(const std::string& id) {
  try {
    return store->Load(id);
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return std::nullopt;
  }
}

grpc::Status Coordinator::Impl::ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                                         v1::ListJobsResponse* resp) {
  if (req->limit() < 0)
    return Refuse(grpc::StatusCode::INVALID_ARGUMENT, fmt::format("limit {}: accepted 0 or more", req->limit()));
  if (req->page_size() < 0)
    return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  fmt::format("page_size {}: accepted 0 (the default) or more", req->page_size()));
  // The token is where the last page ended: jobs older than its sequence number come next.
  int64_t before = INT64_MAX;
  if (!req->page_token().empty()) {
    const std::string& t = req->page_token();
    char* end = nullptr;
    const long long seq = t.rfind("seq-", 0) == 0 ? std::strtoll(t.c_str() + 4, &end, 10) : 0;
    if (seq <= 0 || !end || *end != '\0')
      return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                    fmt::format("page_token '{}': not one this listing gave; accepted a next_page_token of an earlier "
                                "ListJobs, or empty for the first page",
                                Printable(t)));
    before = seq;
  }
  const size_t limit = req->page_size() > 0 ? static_cast<size_t>(std::min(req->page_size(), 1000))
                       : req->limit() > 0   ? static_cast<size_t>(req->limit())
                                            : 100;
  std::map<int64_t, v1::Job, std::greater<>> page;  // newest first
  std::lock_guard lock(mu);
  for (const auto& [id, j] : core->jobs())
    if (j.seq < before && (!req->active_only() || !core::Terminal(j.state))) page[j.seq] = Public(j);
  // More than memory holds: the older ended jobs come from the store (memory has the fresher copy of the rest).
  if (!req->active_only() && core->evicted_any() && page.size() <= limit) {
    try {
      for (auto& r : store->LoadPage(before, static_cast<int>(std::min<size_t>(limit + 1, 1 << 20))))
        if (!page.count(r.seq)) {
          r.job.mutable_spec()->clear_image();
          page[r.seq] = std::move(r.job);
        }
    } catch (const Error& e) {
      spdlog::error("{}", e.what());
    }
  }
  int64_t last = 0;
  for (auto& [seq, job] : page) {
    if (static_cast<size_t>(resp->jobs_size()) == limit) {
      if (req->page_size() > 0) resp->set_next_page_token(fmt::format("seq-{}", last));  // there is more
      break;
    }
    *resp->add_jobs() = std::move(job);
    last = seq;
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::WatchJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                                         grpc::ServerWriter<v1::Job>* writer) {
  uint64_t seen = 0;
  while (!ctx->IsCancelled()) {
    v1::Job snapshot;
    {
      std::unique_lock lock(mu);
      const core::Job* j = core->FindJob(req->job_id());
      if (!j) {
        lock.unlock();
        // Ended and out of memory (or never known): its last state, from the store.
        auto stored = Stored(req->job_id());
        if (!stored) return NoSuchJob(req->job_id());
        stored->job.mutable_spec()->clear_image();
        writer->Write(stored->job);
        return grpc::Status::OK;
      }
      const uint64_t v = j->version;
      if (v == seen && seen != 0) {
        cv.wait_for(lock, std::chrono::milliseconds(500));
        if (core->stopping()) return Refuse(grpc::StatusCode::UNAVAILABLE, "the coordinator is shutting down");
        continue;
      }
      seen = v == 0 ? 1 : v;
      snapshot = Public(*j);
    }
    if (!writer->Write(snapshot)) break;
    if (Terminal(snapshot.state())) break;
  }
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::CancelJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* resp) {
  std::lock_guard lock(mu);
  if (!core->FindJob(req->job_id())) {
    const auto stored = Stored(req->job_id());  // only ended jobs leave memory
    if (!stored) return NoSuchJob(req->job_id());
    return Refuse(grpc::StatusCode::FAILED_PRECONDITION,
                  fmt::format("job {}: already {}", stored->job.id(), v1::JobState_Name(stored->job.state())));
  }
  const core::Reply r = Step(core::ev::Cancel{req->job_id()});
  if (r.code != core::Code::kOk) return StatusOf(r);
  *resp = Public(*core->FindJob(req->job_id()));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::ListWorkers(grpc::ServerContext*, const v1::ListWorkersRequest*,
                                            v1::ListWorkersResponse* resp) {
  std::lock_guard lock(mu);
  for (const auto& [id, w] : core->workers()) {
    v1::WorkerInfo* info = resp->add_workers();
    info->set_id(w.id);
    info->set_name(w.name);
    info->set_address(w.address);
    info->set_host(w.host);
    info->set_device(w.device);
    info->set_device_capacity_bytes(w.capacity_bytes);
    info->set_host_memory_bytes(w.host_memory_bytes);
    info->set_state(core::WorkerStateName(w.state));
    info->set_job_id(w.job_id);
    for (const auto& d : w.described) info->add_stages(d);
    info->set_device_used_bytes(w.device_used_bytes);
    info->set_device_peak_bytes(w.device_peak_bytes);
    info->set_host_rss_bytes(w.host_rss_bytes);
    info->set_last_heartbeat_unix_us(w.last_heartbeat);
    info->set_error(w.error);
    info->set_stages_run(w.stages_run);
    info->set_sequence_parallel(w.sequence_parallel);
    // What it runs now, read from the runs in flight (a worker is in at most one that is not superseded).
    for (const auto& [attempt, run] : core->runs()) {
      if (!run.Involves(id)) continue;
      const core::Job* j = core->FindJob(run.job);
      if (!j || run.stage_index >= static_cast<int>(j->stages.size())) continue;
      const core::StageRun& s = j->stages[run.stage_index];
      info->set_stage(StageOf(s.kind));
      info->set_step(s.step);
      info->set_steps(s.steps);
      info->set_guidance_branch(run.peer_id == id);
    }
  }
  for (const auto& [name, m] : models) resp->add_models(name);
  return grpc::Status::OK;
}

grpc::Status Coordinator::Impl::PlanJob(grpc::ServerContext*, const v1::PlanJobRequest* req, v1::PlanJobResponse* resp) {
  std::string report;
  const grpc::Status st = PlanReportFor(*req, &report);
  if (st.ok()) resp->set_report_json(report);
  return st;
}

// The plan for a job shape on the live workers, from the profile store: PlanJob's answer, and Tune's last event.
grpc::Status Coordinator::Impl::PlanReportFor(const v1::PlanJobRequest& request, std::string* report) {
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
      for (const auto& [id, w] : core->workers())
        if (w.state != core::WorkerState::kLost && w.state != core::WorkerState::kFailed &&
            w.state != core::WorkerState::kDraining)
          slots.push_back({w.name, w.host, w.device, w.capacity_bytes, w.host_memory_bytes});
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
    std::vector<LinkProfile> links;
    try {
      if (profiles) links = profiles->Links();
    } catch (const Error& e) {
      spdlog::warn("planning without the measured links: {}", e.what());
    }
    *report = planner::PlanReport(m, job, objective, problem, plan, would_fit, req->explain(), &model, &links).dump();
  } catch (const Error& e) {
    return Refuse(e.kind() == ErrorKind::kInvalidArgument ? grpc::StatusCode::INVALID_ARGUMENT
                                                          : grpc::StatusCode::INTERNAL,
                  e.what());
  }
  return grpc::Status::OK;
}


grpc::Status Coordinator::Impl::Tune(grpc::ServerContext* ctx, const v1::TuneClusterRequest* req,
                                     grpc::ServerWriter<v1::TuneClusterEvent>* writer) {
  const v1::TuneRequest& t = req->tune();
  if (!models.count(t.model()))
    return Refuse(grpc::StatusCode::INVALID_ARGUMENT,
                  fmt::format("model '{}': this coordinator does not serve it", t.model()));
  // The workers to tune, "tuning" in the core so nothing is dispatched to them until their turn is over.
  std::vector<std::pair<std::string, std::string>> chosen;  // id, address
  {
    std::lock_guard lock(mu);
    const core::Reply r = Step(core::ev::TuneBegin{{req->workers().begin(), req->workers().end()}});
    if (r.code != core::Code::kOk) return StatusOf(r);
    chosen = r.chosen;
  }
  for (const auto& [id, address] : chosen) {
    std::string name;
    {
      std::lock_guard lock(mu);
      auto it = core->workers().find(id);
      if (it == core->workers().end() || it->second.state != core::WorkerState::kTuning) continue;  // lost meanwhile
      name = it->second.name;
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
    Step(core::ev::TuneEnd{{id}, false});
  }
  {
    std::lock_guard lock(mu);
    std::vector<std::string> ids;  // a cancelled call leaves none of them tuning
    for (const auto& [id, address] : chosen) ids.push_back(id);
    Step(core::ev::TuneEnd{ids, true});  // new measurements: the placement may change
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

grpc::Status Coordinator::Impl::DownloadOutput(grpc::ServerContext*, const v1::GetJobRequest* req,
                            grpc::ServerWriter<v1::TensorChunk>* writer) {
  std::string path;
  std::optional<JobRecord> stored;
  {
    std::lock_guard lock(mu);
    if (const core::Job* j = core->FindJob(req->job_id())) stored = RecordOf(*j);
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

  core::CoreOptions co;
  for (const auto& [name, manifest] : m.models) {
    core::ModelInfo info;
    for (const auto& [k, sm] : manifest.stages) info.stages.push_back(k);
    info.image_conditioned = manifest.image_conditioned;
    co.models[name] = info;
  }
  co.planned = m.Planned();
  co.guidance_parallel = m.o.guidance_parallel;
  co.heartbeat_us = int64_t{m.o.heartbeat_ms} * 1000;
  co.worker_timeout_us = int64_t{m.o.worker_timeout_ms} * 1000;
  co.plan_settle_us = int64_t{m.o.plan_settle_ms} * 1000;
  co.max_attempts = m.o.max_attempts;
  co.max_queued_jobs = m.o.limits.max_queued_jobs;
  co.ended_jobs_kept = m.o.ended_jobs_kept;
  co.estimate = [&m](const core::JobShape& shape, StageKind kind) { return m.Estimate(shape, kind); };
  // Its estimates price every stage on one CPU device (Estimate): right in proportion, which the guidance-split
  // choice needs, but not in seconds on a given worker, which bounding early dispatch by a producer's time left
  // would. Early dispatch stays unbounded here until estimates are per worker (docs/COORDINATOR.md).
  co.bound_early_dispatch = false;
  m.core = std::make_unique<core::CoordinatorCore>(std::move(co));
  m.clock_base_us = NowUnixUs();
  m.steady_base_us = std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::steady_clock::now().time_since_epoch())
                         .count();

  const int64_t boot = m.store->Boot();
  const int64_t next_seq = m.store->NextSeq();
  std::vector<core::Job> stored;
  for (auto& r : m.store->LoadForStart(m.o.ended_jobs_kept)) {
    stored.push_back(CoreJobOf(r));
    m.extras[r.job.id()] = {r.job.spec(), r.stage_profiles};
  }
  std::lock_guard lock(m.mu);
  core::StepResult restored = m.core->Restore(std::move(stored), boot, next_seq, m.Now());
  for (auto& c : restored.commands)
    if (auto* log = std::get_if<core::cmd::Log>(&c)) log->text = fmt::format("job store {}: {}", m.store->path(), log->text);
  // Its writes in one transaction; a store that cannot take them fails the start (as reading it would have).
  for (auto& c : restored.commands)
    if (auto* persist = std::get_if<core::cmd::Persist>(&c); persist && !persist->jobs.empty()) {
      std::vector<JobRecord> records;
      for (const auto& j : persist->jobs) records.push_back(m.RecordOf(j));
      std::vector<const JobRecord*> writes;
      for (const auto& r : records) writes.push_back(&r);
      m.store->SaveAll(writes);
      persist->jobs.clear();
    }
  m.Execute(restored.commands);
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
    m.Step(core::ev::Tick{});
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
  m.Step(core::ev::Drain{});
}

int Coordinator::running_jobs() {
  Impl& m = *impl_;
  std::lock_guard lock(m.mu);
  return m.core->RunningJobs();
}

void Coordinator::Shutdown() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mu);
    if (!m.core || m.core->stopping()) return;
    m.Step(core::ev::Shutdown{});  // cancels the runs and fetches; running jobs go back to the queue in the store
    for (auto& [job, ctx] : m.storing) ctx->TryCancel();
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
