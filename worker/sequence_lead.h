// Rank 0 of a sequence-parallel denoise on workers (docs/SEQUENCE_PARALLEL.md): the coordinator chose the ranks
// and sent the stage call to this worker with the others as its peers; this worker serves the group's rendezvous,
// asks each peer to run its share, runs its own and waits for theirs.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <grpcpp/grpcpp.h>
#include <torch/types.h>

#include "reel/v1/worker.pb.h"
#include "runtime/pipeline.h"
#include "runtime/sequence_parallel.h"

namespace reel {

// `host`: the address the peers reach this worker at (its registered address's host); `device`: where its tensors
// live (the group exchanges over NCCL on CUDA devices where built, Gloo otherwise). Each peer's SequenceShare
// call is a child of `parent`, so cancelling the stage ends them too. Runs `share` with the joined group and
// returns its result once every peer's call has ended; a peer that fails (or is lost mid-step) fails the run with
// kUnavailable naming its rank and worker. `link`, when given, gets the exchanges of the rank that spent least time
// in them (SequenceLink). With `req.sequence_guidance_peers` (the guided batch split besides), rank r's call names
// its own guidance peer and `guidance_store`, where the unconditional halves' group meets.
torch::Tensor LeadSequence(grpc::ServerContext& parent, const v1::RunStageRequest& req, const std::string& host,
                           torch::Device device, std::chrono::milliseconds timeout,
                           const std::function<torch::Tensor(SequenceGroup&)>& share,
                           v1::SequenceLink* link = nullptr, const std::string& guidance_store = "");

// Any rank's share of the denoise: the runtime's denoise with `group` set for its duration (and the unconditional
// half on `branch`, when given).
torch::Tensor DenoiseShare(Runtime& rt, SequenceGroup& group, const GenerateRequest& r, const torch::Tensor& text,
                           const torch::Tensor& moments, const GenerateHooks& hooks,
                           const GuidanceBranch& branch = nullptr);

}  // namespace reel
