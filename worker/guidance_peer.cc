#include "worker/guidance_peer.h"

#include <fmt/format.h>

#include "common/error.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"
#include "worker/stage_io.h"

namespace reel {

GuidancePeer::GuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, int rank, int size,
                           const std::string& store)
    : peer_(req.guidance_peer()),
      address_(req.guidance_peer_address()),
      // A child of the stage call: when the coordinator gives the stage up (this worker's peer was lost), the
      // branch call ends too instead of waiting on a peer that does not answer.
      ctx_(grpc::ClientContext::FromServerContext(ctx)),
      stub_(v1::Worker::NewStub(ChannelTo(address_))) {
  stream_ = stub_->GuidanceBranch(ctx_.get());
  v1::BranchRequest setup;
  setup.set_job_id(req.job_id());
  *setup.mutable_spec() = req.spec();
  setup.mutable_spec()->clear_image();
  for (const auto& ref : req.inputs())
    if (ref.name() == "text") *setup.mutable_text() = ref;
  setup.set_text_row(0);  // [negative, positive]: the peer takes the unconditional row
  if (size > 1) {
    setup.set_sequence_rank(rank);
    setup.set_sequence_size(size);
    setup.set_sequence_store(store);
  }
  v1::BranchResponse ack;
  if (!stream_->Write(setup) || !stream_->Read(&ack)) throw Fail("set-up failed");
  store_ = ack.sequence_store();
}

GuidancePeer::~GuidancePeer() {
  if (finished_) return;
  ctx_->TryCancel();
  stream_->Finish();
}

Error GuidancePeer::Fail(const std::string& what) {
  ctx_->TryCancel();
  const grpc::Status st = stream_->Finish();
  finished_ = true;
  return Unavailable(fmt::format("guidance peer {} ({}): {}{}", peer_, address_, what,
                                 st.ok() ? "" : ": " + st.error_message()));
}

GuidanceBranch GuidancePeer::Branch() {
  return [this](const torch::Tensor& input, int64_t timestep) -> std::function<torch::Tensor()> {
    v1::BranchRequest step;
    ToChunk(*ToBlob(input), step.mutable_latents());
    step.set_timestep(timestep);
    if (!stream_->Write(step)) throw Fail("sending a step failed");
    return [this]() -> torch::Tensor {
      v1::BranchResponse resp;
      if (!stream_->Read(&resp)) throw Fail("no prediction came back");
      std::string error;
      auto blob = FromChunk(resp.prediction(), &error);
      if (!blob) throw Fail(error);
      return FromBlob(*blob);
    };
  };
}

void GuidancePeer::Finish() {
  stream_->WritesDone();
  const grpc::Status st = stream_->Finish();
  finished_ = true;
  if (!st.ok()) throw Unavailable(fmt::format("guidance peer {}: {}", peer_, st.error_message()));
}

torch::Tensor DenoiseWithGuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, Runtime& rt,
                                      const GenerateRequest& r, const torch::Tensor& text,
                                      const torch::Tensor& moments, const GenerateHooks& hooks) {
  GuidancePeer peer(ctx, req);
  torch::Tensor z = rt.DenoiseLatents(r, text, moments, hooks, peer.Branch());
  peer.Finish();
  return z;
}

}  // namespace reel
