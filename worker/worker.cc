#include "worker/worker_service.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "common/error.h"
#include "media/video_io.h"
#include "models/presets.h"
#include "models/synth.h"
#include "profiler/host_memory.h"
#include "profiler/metrics.h"
#include "reel/v1/worker.grpc.pb.h"
#include "runtime/device_memory.h"
#include "runtime/pipeline.h"
#include "runtime/recovery.h"
#include "planner/planning.h"
#include "tuner/tune_proto.h"
#include "tuner/tuner.h"
#include "runtime/run_profile.h"
#include "security/path_policy.h"
#include "transfer/stored_name.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"
#include "worker/guidance_peer.h"
#include "worker/stage_io.h"
#include "worker/sequence_lead.h"

namespace reel {

namespace fs = std::filesystem;
namespace v1 = reel::v1;

namespace {


// The stages of one model this worker holds, and the runtime that runs them.
struct ModelHost {
  fs::path dir;
  std::map<StageKind, v1::StageStrategy> strategies;
  std::unique_ptr<StagePackage> package;
  std::unique_ptr<Runtime> runtime;
};

bool SameStrategy(const v1::StageStrategy& a, const v1::StageStrategy& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

class WorkerServiceImpl final : public WorkerService {
 public:
  WorkerServiceImpl(const WorkerOptions& o, Metrics* metrics)
      : options_(o), metrics_(metrics), roots_(o.model_roots, ModelCacheDir()) {}

  void set_name(const std::string& n) override { name_ = n; }
  void set_address(const std::string& a) override { address_ = a; }
  int tensors_held() const override { return store_.size(); }
  int busy() const override { return busy_.load(); }

  int DropTensors() override {
    std::set<std::string> jobs;
    {
      std::lock_guard lock(jobs_mu_);
      jobs.swap(jobs_);
    }
    int n = 0;
    for (const auto& job : jobs) n += store_.Release(job);
    return n;
  }

  grpc::Status LoadStages(grpc::ServerContext*, const v1::LoadStagesRequest* req,
                          v1::LoadStagesResponse* resp) override {
    std::lock_guard lock(run_mu_);
    try {
      ModelHost& host = models_[req->model()];
      // A name from the coordinator: a preset, or a package under a model root (no `..` or symlink leads out).
      const bool preset = FindPreset(req->model()).has_value();
      if (host.dir.empty()) host.dir = preset ? ResolveModel(req->model()) : roots_.Confine(req->model(), "model");
      auto wanted = host.strategies;
      const Manifest manifest = LoadManifest(host.dir);
      if (!preset) roots_.ConfinePackage(host.dir, manifest);
      for (const auto& item : req->stages()) {
        auto k = KindOf(item.stage());
        if (!k) return {grpc::StatusCode::INVALID_ARGUMENT, "stage: accepted text_encoder, vae_encoder, denoiser or vae_decoder"};
        if (!manifest.has_stage(*k))
          return {grpc::StatusCode::INVALID_ARGUMENT,
                  fmt::format("stage {}: model {} has no such stage", StageKindName(*k), req->model())};
        wanted[*k] = item.strategy();
      }
      bool same = host.runtime && wanted.size() == host.strategies.size();
      if (same)
        for (const auto& [k, s] : wanted) same = same && host.strategies.count(k) && SameStrategy(host.strategies[k], s);
      if (!same) Reload(req->model(), host, wanted);
      resp->set_manifest_json(ManifestToJson(manifest));
      Describe(resp->mutable_loaded());
      return grpc::Status::OK;
    } catch (const Error& e) {
      models_.erase(req->model());
      spdlog::error("{}", e.what());
      return StatusOf(e);
    }
  }

  grpc::Status UnloadStages(grpc::ServerContext*, const v1::UnloadStagesRequest* req,
                            v1::UnloadStagesResponse* resp) override {
    std::lock_guard lock(run_mu_);
    auto it = models_.find(req->model());
    if (it != models_.end()) {
      auto wanted = it->second.strategies;
      if (req->stages().empty()) wanted.clear();
      for (int s : req->stages())
        if (auto k = KindOf(static_cast<v1::Stage>(s))) wanted.erase(*k);
      try {
        if (wanted.empty()) {
          models_.erase(it);
        } else {
          Reload(req->model(), it->second, wanted);
        }
      } catch (const Error& e) {
        models_.erase(req->model());
        return StatusOf(e);
      }
    }
    Describe(resp->mutable_loaded());
    return grpc::Status::OK;
  }

  grpc::Status RunStage(grpc::ServerContext* ctx, const v1::RunStageRequest* req,
                        grpc::ServerWriter<v1::RunStageEvent>* writer) override {
    const int64_t accepted = NowUnixUs();
    const Busy busy(busy_);
    std::lock_guard lock(run_mu_);
    const auto kind = KindOf(req->stage());
    if (!kind) return {grpc::StatusCode::INVALID_ARGUMENT, "stage: unspecified"};
    try {
      CheckNameComponent(req->job_id(), "job_id");  // it becomes part of a temporary file's name
    } catch (const Error& e) {
      return StatusOf(e);
    }
    auto it = models_.find(req->spec().model());
    if (it == models_.end() || !it->second.strategies.count(*kind))
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("worker {} does not hold stage {} of model {}", name_, StageKindName(*kind),
                          req->spec().model())};
    ModelHost& host = it->second;
    ApplyThreads();
    const GenerateRequest r = RequestOf(req->spec());
    const std::string& job = req->job_id();
    v1::RunStageResult result;
    try {
      // Inputs come straight from the workers that produced them.
      const auto f0 = std::chrono::steady_clock::now();
      std::map<std::string, std::shared_ptr<const TensorBlob>> inputs;
      for (const auto& ref : req->inputs()) inputs[ref.name()] = Fetch(ref, ctx);
      result.set_input_seconds(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - f0).count());

      const int64_t started = NowUnixUs();
      torch::NoGradGuard no_grad;
      std::map<std::string, torch::Tensor> outputs;
      // A stage that runs out of device memory runs again with the next cheaper choice (fewer resident blocks,
      // another stage's weights off the device, VAE tiling and slicing) until one fits or none is left; each
      // failed attempt goes to the coordinator as an "oom" profile so the planner does not choose it again.
      for (;;) {
        try {
          Compute(ctx, writer, *host.runtime, *kind, r, *req, inputs, result, outputs);
          break;
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kDeviceOutOfMemory || options_.no_oom_retry) throw;
          RetryCheaper(e, host, *kind, r, *req, writer);  // rethrows when nothing cheaper is left
          outputs.clear();
          Describe(result.mutable_loaded());
        }
      }
      // A run the coordinator gave up on (it declared this worker lost, or the job moved on) keeps nothing.
      if (ctx->IsCancelled()) throw Cancelled(fmt::format("job {} stage {}: cancelled", job, StageKindName(*kind)));
      // Finished: the outputs are in bytes, before they are stored (and sent to any fetch waiting for them).
      std::vector<std::pair<std::string, std::shared_ptr<const TensorBlob>>> blobs;
      for (const auto& [name, t] : outputs) blobs.emplace_back(name, ToBlob(t));
      const int64_t finished = NowUnixUs();
      bool awaited = false;
      Holding(job);
      for (auto& [name, blob] : blobs)
        awaited = store_.Put(job, StoredTensorName(name, req->attempt()), std::move(blob)) || awaited;
      // A consumer dispatched early is waiting for these: let its fetch go out before the bookkeeping below.
      if (awaited) std::this_thread::yield();
      for (const auto& [name, t] : outputs) Describe(job, name, req->attempt(), result.add_outputs());
      if (*kind == StageKind::kVaeDecoder) Describe(job, "video.mp4", req->attempt(), result.add_outputs());
      result.set_attempt(req->attempt());
      result.set_accepted_unix_us(accepted);
      result.set_started_unix_us(started);
      result.set_finished_unix_us(finished);
      // The result goes first: the next stage can be dispatched while this worker measures.
      v1::RunStageEvent ev;
      *ev.mutable_result() = result;
      writer->Write(ev);
      const StageProfile p = Profile(host, *kind, r);
      v1::RunStageEvent pe;
      pe.mutable_profile()->set_json(p.ToJson().dump());
      writer->Write(pe);
      if (metrics_) {
        metrics_->RecordStage(p);
        Gauges();
      }
    } catch (const Error& e) {
      if (metrics_) {
        // A run that ran out of device memory counts (reel_device_oom_total, outcome "oom"): the OOM alert reads it.
        if (e.kind() == ErrorKind::kDeviceOutOfMemory && host.runtime && host.runtime->strategies().count(*kind)) {
          try {
            StageProfile p = Profile(host, *kind, r);
            p.outcome = "oom";
            p.error = e.what();
            metrics_->RecordStage(p);
          } catch (const std::exception&) {
          }
        }
        Gauges();
      }
      if (e.kind() != ErrorKind::kCancelled) spdlog::error("job {} stage {}: {}", job, StageKindName(*kind), e.what());
      return StatusOf(e);
    } catch (const std::exception& e) {
      spdlog::error("job {} stage {}: {}", job, StageKindName(*kind), e.what());
      return {grpc::StatusCode::INTERNAL, e.what()};
    }
    return grpc::Status::OK;
  }

  grpc::Status GuidanceBranch(grpc::ServerContext* ctx,
                              grpc::ServerReaderWriter<v1::BranchResponse, v1::BranchRequest>* stream) override {
    const Busy busy(busy_);
    std::lock_guard lock(run_mu_);
    v1::BranchRequest setup;
    if (!stream->Read(&setup)) return {grpc::StatusCode::CANCELLED, "guidance branch: no set-up message"};
    auto it = models_.find(setup.spec().model());
    if (it == models_.end() || !it->second.strategies.count(StageKind::kDenoiser))
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("worker {} does not hold the denoiser of model {}", name_, setup.spec().model())};
    Runtime& rt = *it->second.runtime;
    ApplyThreads();
    const GenerateRequest r = RequestOf(setup.spec());
    JobShape shape = rt.ShapeOf(r);
    shape.batch = 1;
    try {
      torch::NoGradGuard no_grad;
      const torch::Tensor text = [&] {
        DeviceScope device;
        return FromBlob(*Fetch(setup.text(), ctx)).narrow(0, setup.text_row(), 1).contiguous();
      }();
      // A rank of the unconditional halves' own sequence-parallel group (the guided batch split besides sequence
      // parallelism): rank 0 serves the group's store and names it in its answer before the others join.
      std::optional<SequenceGroup> group;
      v1::BranchResponse ack;
      if (setup.sequence_size() > 1) {
        if (setup.sequence_rank() < 0 || setup.sequence_rank() >= setup.sequence_size() ||
            (setup.sequence_rank() > 0 && setup.sequence_store().empty()))
          return {grpc::StatusCode::INVALID_ARGUMENT,
                  fmt::format("guidance branch rank {} of {} (store '{}'): accepted a rank from 0 to the size less "
                              "one, with the store of rank 0's group from rank 1 on",
                              setup.sequence_rank(), setup.sequence_size(), setup.sequence_store())};
        SequenceGroupSpec spec;
        spec.rank = setup.sequence_rank();
        spec.size = setup.sequence_size();
        spec.store = spec.rank == 0 ? address_.substr(0, address_.rfind(':')) + ":0" : setup.sequence_store();
        spec.timeout = kSequenceTimeout;
        spec.device = WorkerDevice().device();
        group.emplace(spec, [&](const std::string& store) {
          ack.set_sequence_store(store);
          stream->Write(ack);
        });
        rt.SetSequenceGroup(&*group);
      }
      struct Leave {
        Runtime& rt;
        ~Leave() { rt.SetSequenceGroup(nullptr); }
      } leave{rt};
      DeviceScope device;
      rt.executor(StageKind::kDenoiser).stats() = StageStats{};
      rt.BeginStage(StageKind::kDenoiser);
      struct End {
        Runtime& rt;
        ~End() {
          try {
            rt.EndStage(StageKind::kDenoiser);
          } catch (...) {
          }
        }
      } end{rt};
      if (!group || group->rank() > 0) stream->Write(ack);  // rank 0 answered as soon as its store listened
      v1::BranchRequest step;
      int served = 0;
      while (stream->Read(&step)) {
        if (ctx->IsCancelled()) return {grpc::StatusCode::CANCELLED, "guidance branch cancelled"};
        std::string error;
        auto blob = FromChunk(step.latents(), &error);
        if (!blob) return {grpc::StatusCode::DATA_LOSS, error};
        const torch::Tensor input = FromBlob(*blob);
        const bool last = r.steps > 0 && ++served == r.steps;  // block:K then copies nothing in behind it
        const torch::Tensor v =
            rt.Denoise(input, text, torch::full({1}, step.timestep(), torch::kInt64), shape, last);
        v1::BranchResponse resp;
        ToChunk(*ToBlob(v), resp.mutable_prediction());
        if (!stream->Write(resp)) break;
      }
    } catch (const Error& e) {
      spdlog::error("job {} guidance branch: {}", setup.job_id(), e.what());
      return StatusOf(e);
    }
    return grpc::Status::OK;
  }

  // One rank of a sequence-parallel denoise that another worker (rank 0) leads: the same stage call, this rank's
  // share of the tokens. Its result stays with rank 0; this call answers when the denoise ends.
  grpc::Status SequenceShare(grpc::ServerContext* ctx, const v1::SequenceShareRequest* req,
                             v1::SequenceShareResponse* resp) override {
    const Busy busy(busy_);
    std::lock_guard lock(run_mu_);
    const v1::RunStageRequest& stage = req->stage();
    const std::string what = fmt::format("job {} sequence-parallel rank {} of {}", stage.job_id(), req->rank(),
                                         req->size());
    auto it = models_.find(stage.spec().model());
    if (it == models_.end() || !it->second.runtime || !it->second.strategies.count(StageKind::kDenoiser))
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("{}: worker {} does not hold the denoiser of model {}", what, name_, stage.spec().model())};
    if (req->rank() < 1 || req->rank() >= req->size())
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("{}: accepted a rank from 1 to the group's size less one", what)};
    Runtime& rt = *it->second.runtime;
    ApplyThreads();
    try {
      torch::NoGradGuard no_grad;
      const GenerateRequest r = RequestOf(stage.spec());
      torch::Tensor text, moments;
      std::map<std::string, std::shared_ptr<const TensorBlob>> inputs;
      for (const auto& ref : stage.inputs()) inputs[ref.name()] = Fetch(ref, ctx);
      {
        DeviceScope device;
        text = FromBlob(*Need(inputs, "text"));
        if (rt.package().manifest().image_conditioned) moments = FromBlob(*Need(inputs, "image_moments"));
      }
      SequenceGroupSpec spec;
      spec.store = req->store();
      spec.rank = req->rank();
      spec.size = req->size();
      spec.timeout = kSequenceTimeout;
      spec.device = WorkerDevice().device();
      SequenceGroup group(spec);
      GenerateHooks hooks;
      hooks.cancelled = [ctx] { return ctx->IsCancelled(); };
      // The guided batch split besides: this rank's unconditional half on its own peer, rank `rank` of their group.
      std::optional<GuidancePeer> uncond;
      if (!stage.guidance_peer_address().empty() && r.guidance > 1.0)
        uncond.emplace(*ctx, stage, req->rank(), req->size(), req->guidance_store());
      DenoiseShare(rt, group, r, text, moments, hooks, uncond ? uncond->Branch() : nullptr);
      if (uncond) uncond->Finish();
      resp->set_bytes_sent(group.bytes_sent());
      resp->set_exchange_seconds(group.exchange_seconds());
      resp->set_backend(group.backend());
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kCancelled) spdlog::error("{}: {}", what, e.what());
      return StatusOf(e);
    } catch (const std::exception& e) {
      spdlog::error("{}: {}", what, e.what());
      return {grpc::StatusCode::INTERNAL, e.what()};
    }
    return grpc::Status::OK;
  }

  grpc::Status FetchTensor(grpc::ServerContext* ctx, const v1::FetchTensorRequest* req,
                           grpc::ServerWriter<v1::TensorChunk>* writer) override {
    // A chunk is one message: it must fit under the message limit with its header.
    const int64_t max_chunk = options_.max_message_bytes - (64 << 10);
    if (req->chunk_bytes() < 0 || req->chunk_bytes() > max_chunk)
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("chunk_bytes {}: accepted 0 (the default, {}) to {} (this worker's --max-message-bytes {} "
                          "less 64 KiB)",
                          req->chunk_bytes(), kDefaultChunkBytes, max_chunk, options_.max_message_bytes)};
    auto blob = req->wait_ms() > 0 ? store_.WaitGet(req->job_id(), req->name(),
                                                    std::chrono::milliseconds(req->wait_ms()),
                                                    [ctx] { return ctx->IsCancelled(); })
                                   : store_.Get(req->job_id(), req->name());
    if (!blob)
      return {grpc::StatusCode::NOT_FOUND,
              fmt::format("worker {} holds no tensor {} of job {}", name_, req->name(), req->job_id())};
    if (!WriteTensor(writer, blob, req->chunk_bytes())) return {grpc::StatusCode::CANCELLED, "reader went away"};
    return grpc::Status::OK;
  }

  grpc::Status Tune(grpc::ServerContext* ctx, const v1::TuneRequest* req,
                    grpc::ServerWriter<v1::TuneMeasurement>* writer) override {
    std::lock_guard lock(run_mu_);
    try {
      const bool preset = FindPreset(req->model()).has_value();
      const fs::path dir = preset ? ResolveModel(req->model()) : roots_.Confine(req->model(), "model");
      const Manifest manifest = LoadManifest(dir);
      if (!preset) roots_.ConfinePackage(dir, manifest);
      planner::Job job = planner::JobOf(manifest, req->frames(), req->height(), req->width(), req->steps());
      if (req->has_guidance()) job.guidance = req->guidance();
      planner::ValidateJob(manifest, job);
      TuneOptions o;
      o.max_candidates = req->max_candidates() > 0 ? req->max_candidates() : 6;
      o.any_dtype = req->any_dtype();
      o.allow_int8 = req->allow_int8();
      o.margin = req->has_margin() ? req->margin() : 0.10;
      for (int s : req->stages())
        if (auto k = KindOf(static_cast<v1::Stage>(s)); k && manifest.has_stage(*k)) o.stages.push_back(*k);
      ApplyThreads();
      // The stages it holds leave the device, as they would have to for a GPU of this size, and come back after.
      std::map<std::string, std::map<StageKind, v1::StageStrategy>> held;
      for (auto& [model, host] : models_) {
        held[model] = host.strategies;
        host.runtime.reset();
        host.package.reset();
      }
      struct Restore {
        WorkerServiceImpl* self;
        std::map<std::string, std::map<StageKind, v1::StageStrategy>>& held;
        ~Restore() {
          for (auto& [model, strategies] : held) {
            try {
              self->Reload(model, self->models_[model], strategies);
            } catch (const std::exception& e) {
              spdlog::error("worker {}: placing {} again after tuning failed: {}", self->name_, model, e.what());
              self->models_.erase(model);
            }
          }
        }
      } restore{this, held};
      RunTuning(dir, manifest, WorkerDevice(), options_.device_memory, job, req->tune_steps() > 0 ? req->tune_steps() : 2,
                o, {}, [&](const TuneMeasurement& m) {
                  if (ctx->IsCancelled()) throw Cancelled("the tuning was cancelled");
                  writer->Write(ToProto(m));
                });
    } catch (const Error& e) {
      return StatusOf(e);
    }
    return grpc::Status::OK;
  }

  grpc::Status ReleaseJob(grpc::ServerContext*, const v1::ReleaseJobRequest* req,
                          v1::ReleaseJobResponse* resp) override {
    {
      std::lock_guard lock(jobs_mu_);
      jobs_.erase(req->job_id());
    }
    resp->set_released(store_.Release(req->job_id()));
    return grpc::Status::OK;
  }

 private:
  void ApplyThreads() {
    // Intra-op thread counts are per thread under OpenMP; each handler thread sets its own.
    at::set_num_threads(options_.threads > 0 ? options_.threads : static_cast<int>(std::thread::hardware_concurrency()));
  }

  // One run of a stage on the runtime as it is placed now: its outputs (and, for the decoder, the MP4 in the store).
  void Compute(grpc::ServerContext* ctx, grpc::ServerWriter<v1::RunStageEvent>* writer, Runtime& rt, StageKind kind,
               const GenerateRequest& r, const v1::RunStageRequest& req,
               const std::map<std::string, std::shared_ptr<const TensorBlob>>& inputs, v1::RunStageResult& result,
               std::map<std::string, torch::Tensor>& outputs) {
    rt.executor(kind).stats() = StageStats{};
    switch (kind) {
      case StageKind::kTextEncoder:
        outputs["text"] = rt.EncodePrompt(r);
        break;
      case StageKind::kVaeEncoder: {
        const Image image = DecodeImageBytes(req.spec().image(), "image " + req.spec().image_name(), r.height,
                                             r.width);
        outputs["image_moments"] = rt.EncodeImageMoments(r, image.rgb);
        break;
      }
      case StageKind::kDenoiser:
        outputs["latents"] = Denoise(ctx, writer, rt, r, req, inputs, result);
        break;
      case StageKind::kVaeDecoder: {
        torch::Tensor z;
        {
          DeviceScope device;  // the latents arrive on this device, as a GPU receives them
          z = FromBlob(*Need(inputs, "latents"));
        }
        const Video video = rt.DecodeVideo(r, z);
        result.set_frames(video.frames);
        Holding(req.job_id());
        store_.Put(req.job_id(), StoredTensorName("video.mp4", req.attempt()), EncodeMp4(req.job_id(), video, r.fps));
        break;
      }
    }
  }

  // After `oom`: reports the failed attempt as an "oom" profile (the coordinator stores it, so the planner does
  // not choose that again for this device and shape) and re-places the model one step cheaper (CheaperAfterOom:
  // another stage's weights off the device, fewer resident blocks, VAE tiling and slicing), stepping further while
  // even placing it does not fit. Rethrows `oom` when nothing cheaper is left.
  void RetryCheaper(const Error& oom, ModelHost& host, StageKind kind, const GenerateRequest& r,
                    const v1::RunStageRequest& req, grpc::ServerWriter<v1::RunStageEvent>* writer) {
    const Manifest manifest = host.package->manifest();
    const auto held = host.strategies;
    std::string why;
    auto cheaper = CheaperAfterOom(OptionsOf(held), manifest, kind, &why, std::max(r.height, r.width));
    if (!cheaper) throw oom;  // the caller reports the failure as it would without retries
    StageProfile failed = Profile(host, kind, r);
    failed.outcome = "oom";
    failed.error = oom.what();
    if (metrics_) metrics_->RecordStage(failed);
    v1::RunStageEvent pe;
    pe.mutable_profile()->set_json(failed.ToJson().dump());
    writer->Write(pe);
    for (;;) {
      spdlog::warn("job {} stage {}: {}; retrying with {}", req.job_id(), StageKindName(kind), oom.what(), why);
      try {
        Reload(req.spec().model(), host, StrategiesOf(*cheaper, held));
        return;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kDeviceOutOfMemory) throw;
      }
      // Even placing it did not fit. A failed placement leaves the model unplaced (no runtime, no stages): the
      // coordinator's next LoadStages places it again.
      cheaper = CheaperAfterOom(*cheaper, manifest, kind, &why, std::max(r.height, r.width));
      if (!cheaper) throw oom;
    }
  }

  void Reload(const std::string& model, ModelHost& host, const std::map<StageKind, v1::StageStrategy>& wanted) {
    // The old placement leaves the device first, as it would have to on a GPU of this size.
    host.runtime.reset();
    host.package.reset();
    host.strategies.clear();
    std::set<StageKind> kinds;
    for (const auto& [k, s] : wanted) kinds.insert(k);
    const RunOptions options = OptionsOf(wanted);
    auto package = std::make_unique<StagePackage>(StagePackage::Load(host.dir, kinds));
    auto runtime = std::make_unique<Runtime>(*package, options);
    host.package = std::move(package);
    host.runtime = std::move(runtime);
    host.strategies = wanted;
    std::string what;
    for (const auto& [k, s] : wanted) what += fmt::format(" {}({})", StageKindName(k), StrategyString(s));
    spdlog::info("worker {}: holds {}:{}; device {} in use", name_, model, what,
                 FormatBytes(WorkerDevice().Memory().allocated));
  }

  void Describe(google::protobuf::RepeatedPtrField<v1::LoadedStage>* out) {
    for (const auto& [model, host] : models_) {
      if (!host.runtime) continue;
      for (const auto& [k, s] : host.strategies) {
        auto* l = out->Add();
        l->set_model(model);
        l->set_stage(StageOf(k));
        *l->mutable_strategy() = s;
        l->set_weight_bytes(host.runtime->executor(k).weight_bytes());
      }
    }
  }

  void Describe(const std::string& job, const std::string& name, uint64_t attempt, v1::StageOutput* o) {
    auto b = store_.Get(job, StoredTensorName(name, attempt));
    o->set_name(name);
    o->set_bytes(b->bytes());
    o->set_dtype(b->dtype);
    for (int64_t d : b->shape) o->add_shape(d);
  }

  // An input, from this worker's store or the producer's. A stage may be dispatched while its producer still
  // runs: the fetch waits for the tensor and ends with the stage call if that is cancelled.
  std::shared_ptr<const TensorBlob> Fetch(const v1::TensorRef& ref, grpc::ServerContext* ctx) {
    const std::string stored = StoredTensorName(ref.name(), ref.attempt());  // that run's, never an older one's
    if (ref.address() == address_) {
      auto b = store_.Get(ref.job_id(), stored);
      if (!b) throw NotFound(fmt::format("worker {} holds no tensor {} of job {}", name_, stored, ref.job_id()));
      return b;
    }
    constexpr int kInputWaitMs = 24 * 3600 * 1000;
    return reel::FetchTensor(ref.address(), ref.job_id(), stored, kDefaultChunkBytes, kInputWaitMs, ctx);
  }

  torch::Tensor Denoise(grpc::ServerContext* ctx, grpc::ServerWriter<v1::RunStageEvent>* writer, Runtime& rt,
                        const GenerateRequest& r, const v1::RunStageRequest& req,
                        const std::map<std::string, std::shared_ptr<const TensorBlob>>& inputs,
                        v1::RunStageResult& result) {
    torch::Tensor text, moments;
    {
      DeviceScope device;
      text = FromBlob(*Need(inputs, "text"));
      if (rt.package().manifest().image_conditioned) moments = FromBlob(*Need(inputs, "image_moments"));
    }
    GenerateHooks hooks;
    hooks.cancelled = [ctx] { return ctx->IsCancelled(); };
    hooks.on_step = [writer](int done, int total) {
      v1::RunStageEvent ev;
      ev.set_step_done(done);
      ev.set_steps_total(total);
      writer->Write(ev);
    };
    if (req.sequence_peers_size() > 0) {  // rank 0 of a sequence-parallel denoise
      const std::string host = address_.substr(0, address_.rfind(':'));
      const int size = req.sequence_peers_size() + 1;
      // With the guided batch split besides, rank 0's guidance peer is rank 0 of the unconditional halves' group:
      // its answer names that group's store, which every other rank's peer is sent to.
      std::optional<GuidancePeer> uncond;
      if (!req.guidance_peer_address().empty() && r.guidance > 1.0) uncond.emplace(*ctx, req, 0, size);
      torch::Tensor z = LeadSequence(
          *ctx, req, host, WorkerDevice().device(), kSequenceTimeout,
          [&](SequenceGroup& group) {
            return DenoiseShare(rt, group, r, text, moments, hooks, uncond ? uncond->Branch() : nullptr);
          },
          result.mutable_sequence_link(), uncond ? uncond->store() : "");
      if (uncond) uncond->Finish();
      return z;
    }
    if (req.guidance_peer_address().empty() || r.guidance <= 1.0) return rt.DenoiseLatents(r, text, moments, hooks);

    return DenoiseWithGuidancePeer(*ctx, req, rt, r, text, moments, hooks);
  }

  // How long joining a sequence-parallel group, and then any one collective, may wait for a peer.
  static constexpr std::chrono::milliseconds kSequenceTimeout{60'000};

  StageProfile Profile(ModelHost& host, StageKind k, const GenerateRequest& r) {
    ProfileContext c;
    c.manifest = &host.package->manifest();
    c.request = r;
    c.device_capacity = options_.device_memory;
    c.peak_host_rss = HostPeakRssBytes();
    c.strategy = host.runtime->strategies().at(k);
    c.weight_format = host.runtime->weight_formats().at(k);
    return ProfileOf(k, host.runtime->executor(k).stats(), c);
  }

  void Gauges() {
    const auto mem = WorkerDevice().Memory();
    metrics_->SetDeviceMemory(options_.device, mem.allocated, mem.peak, options_.device_memory);
    metrics_->SetHost(HostRssBytes(), 0, 0);
  }

  WorkerOptions options_;
  Metrics* metrics_;
  ModelRoots roots_;  // --model-root
  std::string name_, address_;
  std::mutex run_mu_;  // one stage or guidance branch at a time on the device; guards models_
  std::map<std::string, ModelHost> models_;
  TensorStore store_;
  std::atomic<int> busy_{0};
  std::mutex jobs_mu_;
  std::set<std::string> jobs_;  // jobs with tensors in store_, for DropTensors

  struct Busy {
    std::atomic<int>& n;
    explicit Busy(std::atomic<int>& c) : n(c) { ++n; }
    ~Busy() { --n; }
  };

  void Holding(const std::string& job) {
    std::lock_guard lock(jobs_mu_);
    jobs_.insert(job);
  }
};

}  // namespace

std::unique_ptr<WorkerService> MakeWorkerService(const WorkerOptions& o, Metrics* metrics) {
  return std::make_unique<WorkerServiceImpl>(o, metrics);
}

}  // namespace reel
