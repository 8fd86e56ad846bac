#include "worker/guidance_peer.h"

#include <memory>
#include <string>

#include <fmt/format.h>

#include "common/error.h"
#include "reel/v1/worker.grpc.pb.h"
#include "transfer/tensor_stream.h"
#include "transfer/wire.h"
#include "worker/stage_io.h"

namespace reel {

torch::Tensor DenoiseWithGuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, Runtime& rt,
                                      const GenerateRequest& r, const torch::Tensor& text,
                                      const torch::Tensor& moments, const GenerateHooks& hooks) {
  auto stub = v1::Worker::NewStub(ChannelTo(req.guidance_peer_address()));
  // A child of the stage call: when the coordinator gives the stage up (this worker's peer was lost), the branch
  // call ends too instead of waiting on a peer that does not answer.
  const std::unique_ptr<grpc::ClientContext> peer_call = grpc::ClientContext::FromServerContext(ctx);
  grpc::ClientContext& peer_ctx = *peer_call;
  auto stream = stub->GuidanceBranch(&peer_ctx);
  const std::string peer = req.guidance_peer();
  auto fail = [&](const std::string& what) -> Error {
    peer_ctx.TryCancel();
    const grpc::Status st = stream->Finish();
    return Unavailable(fmt::format("guidance peer {} ({}): {}{}", peer, req.guidance_peer_address(), what,
                                   st.ok() ? "" : ": " + st.error_message()));
  };
  v1::BranchRequest setup;
  setup.set_job_id(req.job_id());
  *setup.mutable_spec() = req.spec();
  setup.mutable_spec()->clear_image();
  for (const auto& ref : req.inputs())
    if (ref.name() == "text") *setup.mutable_text() = ref;
  setup.set_text_row(0);  // [negative, positive]: the peer takes the unconditional row
  v1::BranchResponse ack;
  if (!stream->Write(setup) || !stream->Read(&ack)) throw fail("set-up failed");
  reel::GuidanceBranch branch = [&](const torch::Tensor& input, int64_t timestep) -> std::function<torch::Tensor()> {
    v1::BranchRequest step;
    ToChunk(*ToBlob(input), step.mutable_latents());
    step.set_timestep(timestep);
    if (!stream->Write(step)) throw fail("sending a step failed");
    return [&]() -> torch::Tensor {
      v1::BranchResponse resp;
      if (!stream->Read(&resp)) throw fail("no prediction came back");
      std::string error;
      auto blob = FromChunk(resp.prediction(), &error);
      if (!blob) throw fail(error);
      return FromBlob(*blob);
    };
  };
  torch::Tensor z;
  try {
    z = rt.DenoiseLatents(r, text, moments, hooks, branch);
  } catch (...) {
    peer_ctx.TryCancel();
    stream->Finish();
    throw;
  }
  stream->WritesDone();
  const grpc::Status st = stream->Finish();
  if (!st.ok()) throw Unavailable(fmt::format("guidance peer {}: {}", peer, st.error_message()));
  return z;
}


}  // namespace reel
