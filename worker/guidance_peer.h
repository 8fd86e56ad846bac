// Guidance parallelism between two workers (docs/COORDINATOR.md): the worker that runs a denoise stage sends each
// step's latents to its guidance peer, which runs the unconditional branch (its GuidanceBranch handler) while this
// worker runs the conditional one.
#pragma once

#include <grpcpp/grpcpp.h>
#include <torch/types.h>

#include "reel/v1/worker.pb.h"
#include "runtime/pipeline.h"

namespace reel {

// The denoise of `req` (which names the peer) with the peer's branch call a child of `ctx`: when the coordinator
// gives the stage up, the branch ends too. A peer that fails or goes away fails it with kUnavailable naming the peer.
torch::Tensor DenoiseWithGuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, Runtime& rt,
                                      const GenerateRequest& r, const torch::Tensor& text,
                                      const torch::Tensor& moments, const GenerateHooks& hooks);

}  // namespace reel
