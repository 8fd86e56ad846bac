// Places one stage's weights on the device according to its offload strategy and runs its parts there:
// resident (none), whole stage while it runs (model), a window of blocks with the next one prefetched while the
// current one computes (block:K: a copy thread on the simulated device, a side stream on CUDA), or one block at a
// time with no overlap (sequential).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "runtime/compute_device.h"
#include "runtime/offload.h"
#include "runtime/stage_package.h"

namespace reel {

using Clock = std::chrono::steady_clock;

// What a run reports as it goes: stage, step, block and copy intervals on named tracks ("compute", "copy").
struct RunEvent {
  std::string name;
  std::string category;  // "stage", "step", "block", "copy", "load"
  std::string track;
  Clock::time_point start, end;
};
class RunObserver {
 public:
  virtual ~RunObserver() = default;
  virtual void OnEvent(const RunEvent& e) = 0;
};

struct StageStats {
  double load_seconds = 0;     // placing weights at activation (and converting dtype at start-up)
  double copy_seconds = 0;     // block copies (on the copy thread or side stream for block:K)
  double wait_seconds = 0;     // compute thread waiting for a copy (0 on CUDA: the device waits, not the host)
  double compute_seconds = 0;
  double wall_seconds = 0;
  int64_t copied_bytes = 0;
  int64_t peak_device_bytes = 0;  // device peak while this stage was active
  int64_t base_device_bytes = 0;  // device bytes not this stage's when it last began (others' weights, job tensors)
  std::vector<double> step_seconds;
  std::vector<double> block_seconds;  // summed per block index
  std::vector<int> block_runs;
};

// One TorchScript part with its host weights; it can be placed on the device and taken off again.
class PlacedPart {
 public:
  PlacedPart(torch::jit::Module module, std::string file);
  // Copies every weight into device memory (on the calling thread's stream); returns the device tensors.
  std::vector<torch::Tensor> ToDevice(ComputeDevice& device);
  void ToHost();  // points the module back at the host weights; the device copies are freed
  // Keeps the host weights in the form the device copies from fastest (pinned on CUDA).
  void PrepareHost(ComputeDevice& device);
  bool on_device() const { return on_device_; }
  int64_t device_bytes() const { return device_bytes_; }  // bytes of its device copies (0 when on the host)
  int64_t bytes() const { return bytes_; }
  int64_t placed_bytes() const;  // what its device copies will take (int8 weights expanded to their compute dtype)
  torch::jit::Module& module() { return module_; }
  const std::string& file() const { return file_; }
  void ConvertHost(torch::Dtype dtype);
  // Stores every weight matrix and convolution kernel as int8 with one float32 scale per output channel;
  // ToDevice dequantizes on the device into the compute dtype. Vectors (biases, norms) stay as they are.
  void QuantizeHost();
  // Drops the host weights of a stage that will not run again in this process (host budget).
  void ReleaseHost();

 private:
  struct Weight {
    std::string name;
    torch::Tensor value;  // the weight, or its int8 codes
    torch::Tensor scale;  // per-output-channel scale when quantized
    torch::Dtype compute = torch::kFloat32;
  };
  torch::jit::Module module_;
  std::string file_;
  std::vector<Weight> host_;
  int64_t bytes_ = 0;
  int64_t device_bytes_ = 0;
  bool on_device_ = false;
};

class StageExecutor {
 public:
  StageExecutor(StageKind kind, const LoadedStage& stage, Offload offload, ComputeDevice& device,
                RunObserver* observer);
  ~StageExecutor();

  StageKind kind() const { return kind_; }
  const Offload& offload() const { return offload_; }
  // Places what the strategy keeps resident for the whole run (none: everything).
  void PlaceResident();
  // Before and after each use of the stage (one job's text encoding, its denoising loop, its decode).
  void Begin();
  void End();
  // Runs `body` for the embed/module part (index 0), each block, and the head, placing blocks per strategy.
  torch::jit::Module& Part(size_t i);
  // `another_call`: the stage runs its blocks again before End() (the denoiser's next step), so block:K copies
  // block 0 in behind the last block; false for the last call, whose copy would only be thrown away.
  void RunBlocks(const std::function<void(torch::jit::Module&)>& body, bool another_call);
  size_t num_parts() const { return parts_.size(); }
  size_t num_blocks() const { return blocks_.size(); }
  StageStats& stats() { return stats_; }
  void ConvertHost(torch::Dtype dtype);
  void QuantizeHost();
  void ReleaseHost();
  int64_t weight_bytes() const;  // host bytes of the weights as stored

 private:
  void Emit(const std::string& name, const std::string& cat, const std::string& track, Clock::time_point s);
  void Load(size_t block);  // synchronous copy to the device, on this thread
  void Prefetch(size_t block);  // starts copying a block on the copy stream
  void AwaitPrefetch();

  StageKind kind_;
  Offload offload_;
  ComputeDevice& device_;
  RunObserver* observer_;
  std::vector<PlacedPart> parts_;
  std::vector<size_t> blocks_;  // indices into parts_ of the blocks, in order
  std::vector<size_t> edges_;   // embed/head or the single module
  StageStats stats_;
  Clock::time_point began_;
  std::unique_ptr<CopyStream> copier_;
  bool inflight_ = false;
  size_t inflight_block_ = 0;
};

}  // namespace reel
