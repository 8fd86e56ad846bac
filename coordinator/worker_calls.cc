// The coordinator core's commands carried out: stage runs, loads, output fetches and releases as gRPC calls to
// workers on pooled threads (their endings become core events), writes to the job store, re-plans, metrics, logs.
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "coordinator/auto_placement.h"
#include "coordinator/coordinator_service.h"
#include "planner/plan_report.h"
#include "planner/search.h"
#include "planner/sequence_parallel_cost.h"
#include "transfer/stored_name.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"

namespace reel {

namespace fs = std::filesystem;
namespace v1 = reel::v1;
using json = nlohmann::json;

core::Micros Coordinator::Impl::Now() const {
  const int64_t steady = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count();
  return clock_base_us + (steady - steady_base_us);
}

core::Reply Coordinator::Impl::Step(const core::Event& event) {
  core::StepResult r = core->Step(Now(), event);
  Execute(r.commands);
  UpdateGauges();
  cv.notify_all();
  return std::move(r.reply);
}

void Coordinator::Impl::UpdateGauges() {
  metrics.queue_depth.Add({}).Set(core->QueuedJobs());
  metrics.running.Add({}).Set(core->RunningJobs());
  std::map<std::string, int> by_state = {{"loading", 0}, {"idle", 0},   {"busy", 0},
                                         {"draining", 0}, {"failed", 0}, {"lost", 0}};
  for (const auto& [id, w] : core->workers()) by_state[core::WorkerStateName(w.state)]++;
  for (const auto& [s, n] : by_state) metrics.workers.Add({{"state", s}}).Set(n);
}

namespace {

// The most workers one job's denoise is offered (sequence parallelism; the cost model's choice among them).
constexpr int kMaxSequenceDegree = 8;

v1::TensorRef ProtoRef(const std::string& job, const core::TensorRef& t) {
  v1::TensorRef ref;
  ref.set_job_id(job);
  ref.set_name(t.name);
  ref.set_address(t.address);
  ref.set_worker(t.worker);
  ref.set_bytes(t.bytes);
  ref.set_attempt(t.attempt);
  return ref;
}

}  // namespace

void Coordinator::Impl::Execute(std::vector<core::Command>& commands) {
  for (auto& c : commands) {
    if (auto* run = std::get_if<core::cmd::RunStage>(&c)) {
      v1::RunStageRequest req;
      req.set_job_id(run->job_id);
      if (auto it = extras.find(run->job_id); it != extras.end()) *req.mutable_spec() = it->second.spec;
      if (run->kind != StageKind::kVaeEncoder) req.mutable_spec()->clear_image();
      req.set_stage(StageOf(run->kind));
      req.set_attempt(run->attempt);
      for (const auto& in : run->inputs) *req.add_inputs() = ProtoRef(run->job_id, in);
      if (!run->peer_id.empty()) {
        req.set_guidance_peer_address(run->peer_address);
        req.set_guidance_peer(run->peer);
      }
      for (const auto& rank : run->sequence) {
        auto* p = req.add_sequence_peers();
        p->set_worker(rank.name);
        p->set_address(rank.address);
      }
      for (const auto& rank : run->sequence_guidance) {
        auto* p = req.add_sequence_guidance_peers();
        p->set_worker(rank.name);
        p->set_address(rank.address);
      }
      auto ctx = std::make_shared<grpc::ClientContext>();
      calls[run->attempt] = ctx;
      StartThread([this, r = std::move(*run), req = std::move(req), ctx]() mutable {
        RunThread(std::move(r), std::move(req), ctx);
      });
    } else if (auto* cancel = std::get_if<core::cmd::CancelRun>(&c)) {
      if (auto it = calls.find(cancel->attempt); it != calls.end()) it->second->TryCancel();
    } else if (auto* load = std::get_if<core::cmd::LoadWorker>(&c)) {
      StartThread([this, l = std::move(*load)]() mutable { LoadWorker(std::move(l)); });
    } else if (auto* release = std::get_if<core::cmd::ReleaseTensors>(&c)) {
      StartThread([job = release->job_id, addresses = release->addresses] {
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
    } else if (auto* store_out = std::get_if<core::cmd::StoreOutput>(&c)) {
      auto ctx = std::make_shared<grpc::ClientContext>();
      storing[store_out->job_id] = ctx;
      StartThread([this, s = std::move(*store_out), ctx]() mutable { StoreOutput(std::move(s), ctx); });
    } else if (auto* cancel_store = std::get_if<core::cmd::CancelStore>(&c)) {
      if (auto it = storing.find(cancel_store->job_id); it != storing.end()) it->second->TryCancel();
    } else if (auto* persist = std::get_if<core::cmd::Persist>(&c)) {
      if (persist->jobs.empty() || !store) continue;
      std::vector<JobRecord> records;
      for (const auto& j : persist->jobs) records.push_back(RecordOf(j));
      std::vector<const JobRecord*> writes;
      for (const auto& r : records) writes.push_back(&r);
      try {
        store->SaveAll(writes);
      } catch (const Error& e) {
        spdlog::error("{}", e.what());
      }
    } else if (auto* forget = std::get_if<core::cmd::Forget>(&c)) {
      extras.erase(forget->job_id);
    } else if (auto* replan = std::get_if<core::cmd::Replan>(&c)) {
      StartThread([this, r = std::move(*replan)]() mutable { Replan(std::move(r)); });
    } else if (auto* m = std::get_if<core::cmd::Metric>(&c)) {
      using K = core::cmd::MetricKind;
      switch (m->kind) {
        case K::kCount: metrics.Count(m->label); break;
        case K::kQueueWait: metrics.wait_seconds.Add({}, DurationBuckets()).Observe(m->value); break;
        case K::kJobSeconds: metrics.job_seconds.Add({}, DurationBuckets()).Observe(m->value); break;
        case K::kStageSeconds:
          metrics.stage_seconds.Add({{"stage", m->label}, {"worker", m->label2}}, DurationBuckets()).Observe(m->value);
          break;
        case K::kDispatchSeconds: metrics.dispatch_seconds.Add({}, DispatchBuckets()).Observe(m->value); break;
        case K::kFrames: metrics.frames.Add({}).Increment(m->value); break;
      }
    } else if (auto* log = std::get_if<core::cmd::Log>(&c)) {
      const auto level = log->level == core::cmd::Level::kError  ? spdlog::level::err
                         : log->level == core::cmd::Level::kWarn ? spdlog::level::warn
                                                                 : spdlog::level::info;
      spdlog::log(level, "{}", log->text);
    } else if (std::holds_alternative<core::cmd::QueueDrained>(c)) {
      StartThread([] { malloc_trim(0); });  // the queue drained: its memory goes back to the system
    }
  }
}

// Runs `fn` on a pooled thread (mu held by the caller). Stage calls block for a stage's length, so the pool grows
// when every thread is busy; an idle thread picks the next task up in microseconds, where starting a thread would
// sit in every stage handoff.
void Coordinator::Impl::StartThread(std::function<void()> fn) {
  tasks.push_back(std::move(fn));
  if (idle > 0) {
    pool_cv.notify_one();
    return;
  }
  ++threads;
  std::thread([this] { PoolLoop(); }).detach();
}

void Coordinator::Impl::PoolLoop() {
  std::unique_lock lock(mu);
  for (;;) {
    if (tasks.empty() && !core->stopping()) {
      ++idle;
      pool_cv.wait_for(lock, std::chrono::seconds(30), [&] { return !tasks.empty() || core->stopping(); });
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

// Ticks the core: every half heartbeat, and when the settled re-plan is due.
void Coordinator::Impl::Monitor() {
  std::unique_lock lock(mu);
  while (!core->stopping()) {
    int64_t wait_us = std::max<int64_t>(50, o.heartbeat_ms / 2) * 1000;
    if (const core::Micros due = core->NextWake(); due > 0) wait_us = std::clamp<int64_t>(due - Now(), 0, wait_us);
    monitor_cv.wait_for(lock, std::chrono::microseconds(wait_us));
    if (core->stopping()) break;
    Step(core::ev::Tick{});
  }
}

void Coordinator::Impl::RunThread(core::cmd::RunStage run, v1::RunStageRequest req,
                                  std::shared_ptr<grpc::ClientContext> ctx) {
  auto stub = v1::Worker::NewStub(ChannelTo(run.address));
  auto reader = stub->RunStage(ctx.get(), req);
  v1::RunStageEvent ev;
  bool completed = false;
  std::string profile;
  while (reader->Read(&ev)) {
    if (ev.has_result()) {
      if (ev.result().sequence_link().ranks() > 1) StoreLink(req, run.address, ev.result().sequence_link());
      core::ev::StageResult result;
      result.attempt = run.attempt;
      for (const auto& out : ev.result().outputs()) result.outputs.emplace_back(out.name(), out.bytes());
      result.accepted = ev.result().accepted_unix_us();
      result.started = ev.result().started_unix_us();
      result.finished = ev.result().finished_unix_us();
      result.frames = ev.result().frames();
      for (const auto& l : ev.result().loaded())
        result.reloaded.push_back(fmt::format("{}/{} ({})", l.model(),
                                              StageKindName(KindOf(l.stage()).value_or(StageKind::kVaeDecoder)),
                                              StrategyString(l.strategy())));
      // Acted on at once: the next stage is dispatched before the worker's profile and the call's end arrive.
      std::lock_guard lock(mu);
      Step(result);
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
        Step(core::ev::ProfilesChanged{});
      }
      continue;
    }
    if (completed) continue;
    std::lock_guard lock(mu);
    Step(core::ev::StageProgress{run.attempt, ev.step_done(), ev.steps_total()});
  }
  grpc::Status st = reader->Finish();
  if (completed && !profile.empty()) StoreProfile(profile);
  std::lock_guard lock(mu);
  calls.erase(run.attempt);
  if (completed) {
    // The worker's measurements of the run, on the job's row too.
    const core::Job* j = core->FindJob(run.job_id);
    auto x = extras.find(run.job_id);
    if (profile.empty() || !j || x == extras.end() || j->stages[run.stage_index].attempt != run.attempt) return;
    auto& profiles_of = x->second.stage_profiles;
    if (profiles_of.size() < j->stages.size()) profiles_of.resize(j->stages.size());
    profiles_of[run.stage_index] = profile;
    if (core::Terminal(j->state)) {
      std::vector<core::Command> persist = {core::cmd::Persist{{*j}}};
      Execute(persist);
    }
    return;
  }
  if (st.ok()) st = grpc::Status(grpc::StatusCode::INTERNAL, "the worker ended the stage without a result");
  core::ev::StageFailed failed;
  failed.attempt = run.attempt;
  failed.failure = st.error_code() == grpc::StatusCode::UNAVAILABLE ? core::ev::Failure::kUnavailable
                                                                     : core::ev::Failure::kOther;
  failed.message = st.error_message();
  Step(failed);
}

// Brings a worker's stages to what the core wants: loads (or re-places) what it is to hold, unloads what it holds
// and is not to. The worker is "loading" in the core (nothing is dispatched to it) meanwhile.
void Coordinator::Impl::LoadWorker(core::cmd::LoadWorker load) {
  auto stub = v1::Worker::NewStub(ChannelTo(load.address));
  std::string error;
  std::optional<google::protobuf::RepeatedPtrField<v1::LoadedStage>> loaded;
  for (const auto& [model, assignment] : load.want) {
    grpc::ClientContext ctx;
    grpc::Status st;
    if (!assignment.empty()) {
      v1::LoadStagesRequest req;
      req.set_model(model);
      for (const auto& choice : assignment) {
        auto* item = req.add_stages();
        item->set_stage(StageOf(choice.kind));
        *item->mutable_strategy() = ProtoOf(choice.strategy);
      }
      v1::LoadStagesResponse resp;
      st = stub->LoadStages(&ctx, req, &resp);
      if (st.ok()) loaded = resp.loaded();
    }
    // Stages of this model it holds and is no longer to hold.
    v1::UnloadStagesRequest unload;
    unload.set_model(model);
    for (const auto& [m, k] : load.held) {
      if (m != model) continue;
      const bool kept = std::any_of(assignment.begin(), assignment.end(), [&](const auto& a) { return a.kind == k; });
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
      break;
    }
  }
  core::ev::Loaded done;
  done.worker_id = load.worker_id;
  done.applied = load.want;
  done.held = load.held;
  done.error = error;
  if (loaded) {
    done.reported = true;
    for (const auto& l : *loaded) {
      if (!models.count(l.model())) continue;
      const StageKind k = KindOf(l.stage()).value_or(StageKind::kVaeDecoder);
      done.holds.insert({l.model(), k});
      done.described.push_back(fmt::format("{}/{} ({})", l.model(), StageKindName(k), StrategyString(l.strategy())));
    }
  }
  std::lock_guard lock(mu);
  Step(done);
}

void Coordinator::Impl::StoreOutput(core::cmd::StoreOutput s, std::shared_ptr<grpc::ClientContext> ctx) {
  core::ev::OutputStored done;
  done.job_id = s.job_id;
  done.attempt = s.attempt;
  done.frames = s.frames;
  try {
    auto stub = v1::Worker::NewStub(ChannelTo(s.video.address));
    v1::FetchTensorRequest req;
    req.set_job_id(s.job_id);
    req.set_name(StoredTensorName(s.video.name, s.video.attempt));
    auto reader = stub->FetchTensor(ctx.get(), req);
    grpc::Status st;
    std::string error;
    auto blob = ReadTensor(*reader, *ctx, &st, &error);
    if (!blob)
      throw Unavailable(fmt::format("fetching {} of {} from worker {} ({}): {}", s.video.name, s.job_id,
                                    s.video.worker, s.video.address, st.ok() ? error : st.error_message()));
    const fs::path path = o.data / "outputs" / (s.job_id + ".mp4");
    AtomicFile file(path, "output");
    {
      std::ofstream f(file.temp_path(), std::ios::binary);
      f.write(blob->data.data(), static_cast<std::streamsize>(blob->data.size()));
      if (!f) throw IoError(fmt::format("output {}: write failed", path.string()));
    }
    file.Commit();
    done.path = path.string();
    done.bytes = blob->bytes();
  } catch (const std::exception& e) {
    done.error = fmt::format("storing the output: {}", e.what());
    // The worker could not hand the video over: the core runs the decoder again; any other error is ours.
    if (auto* r = dynamic_cast<const Error*>(&e); r && r->kind() == ErrorKind::kUnavailable)
      done.failure = core::ev::Failure::kUnavailable;
  }
  std::lock_guard lock(mu);
  if (auto it = storing.find(s.job_id); it != storing.end() && it->second == ctx) storing.erase(it);
  Step(done);
}

// ---- placement and the cost model ----

planner::PlanningOptions Coordinator::Impl::PlanOptions() const {
  planner::PlanningOptions po;
  po.package_dtype_only = o.plan_dtype != "any";
  return po;
}

std::vector<StageProfile> Coordinator::Impl::StoredProfiles() {
  std::vector<StageProfile> out;
  try {
    for (auto& row : profiles->All()) out.push_back(std::move(row.profile));
  } catch (const Error& e) {
    spdlog::warn("planning without the profile store: {}", e.what());
  }
  return out;
}

void Coordinator::Impl::StoreLink(const v1::RunStageRequest& req, const std::string& rank0,
                                  const v1::SequenceLink& measured) {
  auto host = [](const std::string& address) { return address.substr(0, address.rfind(':')); };
  bool one_host = true;
  for (const auto& peer : req.sequence_peers()) one_host = one_host && host(peer.address()) == host(rank0);
  LinkProfile p;
  p.link = planner::LinkName(one_host, measured.backend());
  p.ranks = measured.ranks();
  p.bytes_sent = measured.bytes_sent();
  p.exchange_seconds = measured.exchange_seconds();
  p.recorded_at = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  try {
    p.Validate("job " + req.job_id() + ": sequence-parallel link");
    if (profiles) profiles->InsertLink(p);
  } catch (const Error& e) {
    spdlog::warn("{}", e.what());
    return;
  }
  spdlog::info("job {}: sequence-parallel link {} over {} ranks: {:.1f} MB in {:.3f} s, {:.2f} GB/s", req.job_id(),
               p.link, p.ranks, p.bytes_sent / 1e6, p.exchange_seconds, p.bytes_per_second() / 1e9);
  std::lock_guard lock(mu);
  SequenceLink();  // loads the store's first, so this one is not counted twice
  links->insert(links->begin(), p);
  estimates.clear();  // priced with the link as it was
}

planner::Link Coordinator::Impl::SequenceLink() {
  if (!links) {
    links.emplace();
    try {
      if (profiles) *links = profiles->Links();
    } catch (const Error& e) {
      spdlog::warn("pricing sequence parallelism without the measured links: {}", e.what());
    }
  }
  std::vector<LinkProfile> newest;
  for (const LinkProfile& l : *links)
    if (l.link == links->front().link) newest.push_back(l);
  return planner::MeasuredLink(newest, planner::DefaultLink("loopback"));
}

void Coordinator::Impl::StoreProfile(const std::string& text) {
  if (!profiles || text.empty()) return;
  try {
    profiles->Insert(StageProfile::FromJson(json::parse(text), "worker profile"));
  } catch (const std::exception& e) {
    spdlog::warn("a worker's stage profile was not stored: {}", e.what());
  }
}

// Plans the workers the core named (on a pool thread, the lock free) and answers the core.
void Coordinator::Impl::Replan(core::cmd::Replan replan) {
  std::vector<WorkerSlot> slots;
  for (const auto& w : replan.workers)
    slots.push_back({w.name, w.host, w.device, w.capacity_bytes, w.host_memory_bytes});
  AutoPlacement placed;
  try {
    placed = PlanPlacement(models, slots, StoredProfiles(),
                           planner::ParseObjective(o.plan_objective, "--plan-objective"), o.plan_margin,
                           PlanOptions());
  } catch (const std::exception& e) {
    spdlog::error("planning failed: {}", e.what());
  }
  core::ev::Planned planned;
  planned.generation = replan.generation;
  planned.notes = placed.notes;
  for (const auto& [worker, by_model] : placed.workers)
    for (const auto& [model, stages] : by_model)
      for (const auto& [kind, strategy] : stages)
        planned.workers[worker][model].push_back({kind, StrategyOf(strategy)});
  std::lock_guard lock(mu);
  Step(planned);
}

// A guided denoiser's seconds on one worker and split across two, from the planner's cost model at the package's
// own strategy on the CPU device kind the tests run (the ratio is what the choice reads). The split halves the
// compute and adds each step's exchange of the unconditional branch's output over loopback; k workers in sequence
// add their all-to-alls over SequenceLink().
core::StageEstimate Coordinator::Impl::Estimate(const core::JobShape& shape, StageKind kind) {
  const std::string key = fmt::format("{}/{}/{}x{}x{}/{}/{}", shape.model, StageKindName(kind), shape.frames,
                                      shape.height, shape.width, shape.steps, shape.guidance);
  if (auto hit = estimates.find(key); hit != estimates.end()) return hit->second;
  core::StageEstimate& e = estimates[key];
  auto mit = models.find(shape.model);
  if (mit == models.end() || !mit->second.has_stage(kind)) return e;
  try {
    auto& model = cost_models[shape.model];
    if (!model) model = std::make_unique<planner::CostModel>(mit->second, std::vector<StageProfile>{});
    planner::Job job = planner::JobOf(mit->second, shape.frames, shape.height, shape.width, shape.steps);
    job.guidance = shape.guidance;
    planner::Device device;
    device.name = "estimate";
    device.kind = "cpu";
    const planner::Option option = model->Price(kind, device, job, "none", "f32");
    e.seconds = option.seconds;
    if (kind == StageKind::kDenoiser && shape.guided()) {
      const double exchange = 2.0 * job.steps * model->OutputBytes(kind, job) / 10e9;
      e.split_seconds = option.seconds / 2 + exchange;
    }
    if (kind == StageKind::kDenoiser) {
      // k workers sharing the tokens over the measured link (else the loopback Gloo estimate), in proportion to
      // this one-device price.
      const planner::Link link = SequenceLink();
      e.sequence_link = link.Describe();
      for (int k = 2; k <= kMaxSequenceDegree; ++k) {
        try {
          const planner::SequenceParallelPrice p =
              planner::PriceSequenceParallel(*model, device, job, "f32", k, false, link);
          e.sequence_seconds.push_back(p.single_seconds > 0 ? option.seconds * p.seconds() / p.single_seconds : 0);
          if (shape.guided() && 2 * k <= kMaxSequenceDegree) {
            const planner::SequenceParallelPrice ps =
                planner::PriceSequenceParallel(*model, device, job, "f32", k, true, link);
            e.sequence_split_seconds.push_back(ps.single_seconds > 0 ? option.seconds * ps.seconds() /
                                                                           ps.single_seconds
                                                                     : 0);
          }
        } catch (const Error&) {
          break;  // more workers than the denoiser has heads
        }
      }
    }
  } catch (const std::exception&) {
    e = {};  // no estimate: early dispatch, as before the cost model was asked
  }
  return e;
}

}  // namespace reel
