// Guidance parallelism between two workers (docs/COORDINATOR.md): the worker that runs a denoise stage sends each
// step's latents to its guidance peer, which runs the unconditional branch (its GuidanceBranch handler) while this
// worker runs the conditional one. With sequence parallelism besides (docs/SEQUENCE_PARALLEL.md), every rank has
// its own peer, and the peers form a sequence-parallel group of their own.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <torch/types.h>

#include "reel/v1/worker.grpc.pb.h"
#include "runtime/pipeline.h"

namespace reel {

// One open GuidanceBranch call to `req`'s guidance peer, a child of `ctx` (when the coordinator gives the stage up,
// the branch ends too). Construction sends the set-up and waits for the peer's answer; a peer that fails or goes
// away fails any call with kUnavailable naming the peer.
class GuidancePeer {
 public:
  // `rank` of `size` > 1: the peer is that rank of the unconditional halves' group; rank 0's peer serves the group's
  // store (`store` empty) and names it (store()), the others' meet at `store`.
  GuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, int rank = 0, int size = 1,
               const std::string& store = "");
  ~GuidancePeer();  // cancels a call that did not Finish
  GuidancePeer(const GuidancePeer&) = delete;
  GuidancePeer& operator=(const GuidancePeer&) = delete;

  const std::string& store() const { return store_; }
  // The runtime's branch: each step's latents go out, the peer's prediction comes back.
  GuidanceBranch Branch();
  // Ends the call after the last step; throws kUnavailable when the peer ended it with an error.
  void Finish();

 private:
  Error Fail(const std::string& what);

  std::string peer_, address_, store_;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<v1::Worker::Stub> stub_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::BranchRequest, v1::BranchResponse>> stream_;
  bool finished_ = false;
};

// The denoise of `req` (which names the peer) with the unconditional half on the peer.
torch::Tensor DenoiseWithGuidancePeer(grpc::ServerContext& ctx, const v1::RunStageRequest& req, Runtime& rt,
                                      const GenerateRequest& r, const torch::Tensor& text,
                                      const torch::Tensor& moments, const GenerateHooks& hooks);

}  // namespace reel
