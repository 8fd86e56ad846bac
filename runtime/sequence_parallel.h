// Ulysses-style sequence parallelism for the denoiser (docs/SEQUENCE_PARALLEL.md): k processes denoise one job
// together, each holding a contiguous share of the video tokens; around attention an all-to-all turns the token split
// into a head split and back. The collectives go through c10d: Gloo on the CPU, NCCL on CUDA devices where the build
// has LibTorch's CUDA half (its ProcessGroupNCCL), Gloo through host copies on CUDA otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace reel {

// How n items (tokens, heads) are shared among k ranks: contiguous, the first n % k ranks one more.
struct Shares {
  std::vector<int64_t> counts, offsets;
  int64_t count(int rank) const { return counts.at(static_cast<size_t>(rank)); }
  int64_t offset(int rank) const { return offsets.at(static_cast<size_t>(rank)); }
};
Shares ShareEvenly(int64_t n, int ranks);

// Whether this build has sequence parallelism (it was configured with Gloo's headers).
bool SequenceParallelBuilt();
// Whether its groups on CUDA devices exchange over NCCL (a CUDA build with c10d's NCCL backend).
bool SequenceParallelNcclBuilt();

// Where a rank finds its group: rank 0 listens on `store` (HOST:PORT) for the others' rendezvous.
struct SequenceGroupSpec {
  std::string store;  // HOST:PORT of rank 0's rendezvous store; rank 0 may give port 0 (any free port)
  int rank = 0;
  int size = 1;
  // How long joining, and then any one collective, may wait for a peer before failing (kUnavailable).
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  // Where the tensors it exchanges live: the CPU (Gloo) or a CUDA device (NCCL, or Gloo through host copies).
  torch::Device device{torch::kCPU};
};
// Parses "RANK/SIZE@HOST:PORT" (reel generate --sequence-parallel); throws InvalidArgument naming `flag`.
SequenceGroupSpec ParseSequenceGroup(const std::string& text, const std::string& flag);

// One rank's membership of a group, joined at construction (every rank must construct it within the timeout).
class SequenceGroup {
 public:
  // Rank 0 calls `listening` with its store's HOST:PORT once it listens (the port it chose for port 0), before it
  // waits for the other ranks: the moment to tell them where to meet.
  explicit SequenceGroup(const SequenceGroupSpec& spec,
                         const std::function<void(const std::string& store)>& listening = {});
  ~SequenceGroup();
  SequenceGroup(const SequenceGroup&) = delete;
  SequenceGroup& operator=(const SequenceGroup&) = delete;

  int rank() const { return spec_.rank; }
  int size() const { return spec_.size; }
  // The c10d backend it exchanges over: "gloo", "nccl", or "gloo (host copies)" for CUDA tensors without NCCL.
  const std::string& backend() const { return backend_; }

  // [B, H, tokens(rank), d] on each rank -> [B, heads(rank), Σ tokens, d]: this rank's heads for every token.
  torch::Tensor TokensToHeads(const torch::Tensor& x, const Shares& tokens, const Shares& heads);
  // The inverse: [B, heads(rank), Σ tokens, d] -> [B, H, tokens(rank), d].
  torch::Tensor HeadsToTokens(const torch::Tensor& x, const Shares& tokens, const Shares& heads);
  // Concatenates every rank's x along `dim` in rank order (x's size along dim may differ between ranks as `shares`
  // says; every other dimension is equal).
  torch::Tensor Gather(const torch::Tensor& x, int64_t dim, const Shares& shares);

  // Bytes this rank sent in collectives so far.
  int64_t bytes_sent() const { return bytes_sent_; }
  // Seconds this rank spent in collectives so far (from the call until the exchanged tensors are ready: transfer
  // and waiting for the slowest rank alike).
  double exchange_seconds() const { return exchange_seconds_; }

 private:
  // Sends piece j of `pieces` to rank j; returns what rank i sent this rank, for each i, shaped as `shapes[i]`.
  std::vector<torch::Tensor> Exchange(const std::vector<torch::Tensor>& pieces,
                                      const std::vector<std::vector<int64_t>>& shapes);

  struct Impl;
  SequenceGroupSpec spec_;
  std::unique_ptr<Impl> impl_;
  std::string backend_;
  int64_t bytes_sent_ = 0;
  double exchange_seconds_ = 0;
};

}  // namespace reel
