// The core's plain structs and their proto and stored forms, both ways: the only place the two meet.
#include <fmt/format.h>

#include "coordinator/coordinator_service.h"
#include "transfer/wire.h"

namespace reel {

namespace v1 = reel::v1;

namespace {

v1::JobState ProtoState(core::JobState s) {
  switch (s) {
    case core::JobState::kQueued: return v1::QUEUED;
    case core::JobState::kRunning: return v1::RUNNING;
    case core::JobState::kSucceeded: return v1::SUCCEEDED;
    case core::JobState::kFailed: return v1::FAILED;
    case core::JobState::kCancelled: return v1::CANCELLED;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

core::JobState CoreState(v1::JobState s) {
  switch (s) {
    case v1::RUNNING: return core::JobState::kRunning;
    case v1::SUCCEEDED: return core::JobState::kSucceeded;
    case v1::FAILED: return core::JobState::kFailed;
    case v1::CANCELLED: return core::JobState::kCancelled;
    default: return core::JobState::kQueued;
  }
}

core::StageState CoreStageState(const std::string& s) {
  for (auto st : {core::StageState::kPending, core::StageState::kRunning, core::StageState::kDone,
                  core::StageState::kFailed, core::StageState::kCancelled, core::StageState::kSkipped})
    if (s == core::StageStateName(st)) return st;
  return core::StageState::kPending;
}

}  // namespace

v1::StageStrategy ProtoOf(const core::Strategy& s) {
  v1::StageStrategy p;
  p.set_offload(s.offload);
  p.set_dtype(s.dtype);
  p.set_int8_weights(s.int8_weights);
  p.set_vae_slicing(s.vae_slicing);
  p.set_vae_tile(s.vae_tile);
  return p;
}

core::Strategy StrategyOf(const v1::StageStrategy& p) {
  return core::Strategy{p.offload(), p.dtype(), p.int8_weights(), p.vae_slicing(), p.vae_tile()};
}

core::Job CoreJobOf(const JobRecord& r) {
  const v1::Job& p = r.job;
  core::Job j;
  j.id = p.id();
  j.request_id = p.request_id();
  j.seq = r.seq;
  j.priority = p.priority();
  j.shape = {p.spec().model(), p.spec().frames(), p.spec().height(), p.spec().width(), p.spec().steps(),
             p.spec().guidance(), p.spec().objective() == "latency"};
  j.state = CoreState(p.state());
  j.submitted = p.submitted_unix_us();
  j.started = p.started_unix_us();
  j.finished = p.finished_unix_us();
  j.error = p.error();
  j.output_bytes = p.output_bytes();
  j.output_path = r.output_path;
  j.attempts = p.attempts();
  j.denoiser_dispatch = p.denoiser_dispatch();
  for (const auto& s : p.stages()) {
    core::StageRun c;
    c.kind = KindOf(s.stage()).value_or(StageKind::kVaeDecoder);
    c.state = CoreStageState(s.state());
    c.worker = s.worker();
    c.guidance_peer = s.guidance_peer();
    c.sequence_peers.assign(s.sequence_peers().begin(), s.sequence_peers().end());
    c.sequence_guidance_peers.assign(s.sequence_guidance_peers().begin(), s.sequence_guidance_peers().end());
    c.attempt = s.attempt();
    c.started = s.started_unix_us();
    c.finished = s.finished_unix_us();
    c.accepted = s.accepted_unix_us();
    c.step = s.step();
    c.steps = s.steps();
    c.error = s.error();
    j.stages.push_back(std::move(c));
  }
  return j;
}

v1::Job Coordinator::Impl::Public(const core::Job& j) const {
  v1::Job p;
  p.set_id(j.id);
  p.set_state(ProtoState(j.state));
  p.set_priority(j.priority);
  if (auto it = extras.find(j.id); it != extras.end()) {
    *p.mutable_spec() = it->second.spec;
    p.mutable_spec()->clear_image();
  }
  for (const auto& s : j.stages) {
    auto* r = p.add_stages();
    r->set_stage(StageOf(s.kind));
    r->set_state(core::StageStateName(s.state));
    r->set_worker(s.worker);
    r->set_guidance_peer(s.guidance_peer);
    for (const auto& n : s.sequence_peers) r->add_sequence_peers(n);
    for (const auto& n : s.sequence_guidance_peers) r->add_sequence_guidance_peers(n);
    r->set_started_unix_us(s.started);
    r->set_finished_unix_us(s.finished);
    r->set_accepted_unix_us(s.accepted);
    r->set_step(s.step);
    r->set_steps(s.steps);
    r->set_error(s.error);
    r->set_attempt(s.attempt);
  }
  p.set_submitted_unix_us(j.submitted);
  p.set_started_unix_us(j.started);
  p.set_finished_unix_us(j.finished);
  p.set_error(j.error);
  p.set_output_bytes(j.output_bytes);
  p.set_attempts(j.attempts);
  p.set_denoiser_dispatch(j.denoiser_dispatch);
  p.set_request_id(j.request_id);
  return p;
}

JobRecord Coordinator::Impl::RecordOf(const core::Job& j) const {
  JobRecord r;
  r.job = Public(j);
  r.seq = j.seq;
  r.output_path = j.output_path;
  if (auto it = extras.find(j.id); it != extras.end()) {
    r.job.mutable_spec()->set_image(it->second.spec.image());
    r.stage_profiles = it->second.stage_profiles;
  }
  return r;
}

grpc::Status StatusOf(const core::Reply& r) {
  static const grpc::StatusCode codes[] = {grpc::StatusCode::OK,
                                           grpc::StatusCode::INVALID_ARGUMENT,
                                           grpc::StatusCode::NOT_FOUND,
                                           grpc::StatusCode::ALREADY_EXISTS,
                                           grpc::StatusCode::FAILED_PRECONDITION,
                                           grpc::StatusCode::UNAVAILABLE,
                                           grpc::StatusCode::RESOURCE_EXHAUSTED};
  if (r.code == core::Code::kOk) return grpc::Status::OK;
  return {codes[static_cast<int>(r.code)],
          r.message.empty() ? "refused without a reason (a bug in the coordinator)" : r.message};
}

}  // namespace reel
