#include "runtime/stage_executor.h"

#include <algorithm>

#include "models/script_builder.h"

#include "runtime/device_memory.h"

namespace reel {

namespace {
double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }
}  // namespace

PlacedPart::PlacedPart(torch::jit::Module module, std::string file) : module_(std::move(module)), file_(std::move(file)) {
  for (const auto& p : module_.named_parameters(/*recurse=*/false)) {
    host_.push_back(Weight{p.name, p.value, {}, p.value.scalar_type()});
    bytes_ += p.value.numel() * static_cast<int64_t>(p.value.element_size());
  }
}

std::vector<torch::Tensor> PlacedPart::ToDevice(ComputeDevice& device) {
  if (on_device_) return {};
  DeviceScope scope;
  // Copies go into a list first so that an out-of-memory midway leaves the module on the host, whole.
  std::vector<torch::Tensor> copies;
  copies.reserve(host_.size());
  for (const auto& w : host_) {
    if (!w.scale.defined()) {
      copies.push_back(device.Upload(w.value));
      continue;
    }
    // The int8 codes cross to the device (a quarter of the f32 bytes) and are expanded there.
    const torch::Tensor codes = device.Upload(w.value);
    std::vector<int64_t> shape(codes.dim(), 1);
    shape[0] = codes.size(0);
    copies.push_back(codes.to(w.compute).mul_(device.Upload(w.scale).view(shape).to(w.compute)));
  }
  device_bytes_ = 0;
  for (size_t i = 0; i < host_.size(); ++i) {
    module_.setattr(host_[i].name, copies[i]);
    device_bytes_ += copies[i].numel() * static_cast<int64_t>(copies[i].element_size());
  }
  on_device_ = true;
  return copies;
}

void PlacedPart::PrepareHost(ComputeDevice& device) {
  HostScope host;
  for (auto& w : host_) {
    w.value = device.HostCopy(w.value);
    if (w.scale.defined()) w.scale = device.HostCopy(w.scale);
    if (!on_device_ && !w.scale.defined()) module_.setattr(w.name, w.value);
  }
}

void PlacedPart::ToHost() {
  if (!on_device_) return;
  // A quantized weight has no host copy in its compute dtype: an empty tensor stands in until the next ToDevice.
  for (const auto& w : host_) module_.setattr(w.name, w.scale.defined() ? torch::empty({0}, w.compute) : w.value);
  on_device_ = false;
  device_bytes_ = 0;
}

void PlacedPart::ConvertHost(torch::Dtype dtype) {
  HostScope host;
  bytes_ = 0;
  // To float16, the weights the part keeps in float32 stay float32 (transformers' _keep_in_fp32_modules).
  const auto keep = dtype == torch::kFloat16 ? KeptInF32(module_) : std::vector<std::string>{};
  for (auto& w : host_) {
    if (w.value.is_floating_point()) {
      const bool kept = std::find(keep.begin(), keep.end(), w.name) != keep.end();
      w.value = w.value.to(kept ? torch::kFloat32 : dtype);
      w.compute = w.value.scalar_type();
    }
    if (!on_device_) module_.setattr(w.name, w.value);
    bytes_ += w.value.numel() * static_cast<int64_t>(w.value.element_size());
  }
}

void PlacedPart::QuantizeHost() {
  HostScope host;
  torch::NoGradGuard no_grad;
  bytes_ = 0;
  for (auto& w : host_) {
    if (w.value.dim() >= 2 && w.value.is_floating_point() && !w.scale.defined()) {
      const torch::Tensor f = w.value.to(torch::kFloat32).reshape({w.value.size(0), -1});
      const torch::Tensor scale = f.abs().amax(1).clamp_min(1e-12) / 127.0;
      w.value = (f / scale.unsqueeze(1)).round_().clamp_(-127, 127).to(torch::kInt8).view(w.value.sizes());
      w.scale = scale;
      if (!on_device_) module_.setattr(w.name, torch::empty({0}, w.compute));
    }
    bytes_ += w.value.numel() * static_cast<int64_t>(w.value.element_size());
    if (w.scale.defined()) bytes_ += w.scale.numel() * 4;
  }
}

void PlacedPart::ReleaseHost() {
  HostScope host;
  for (auto& w : host_) {
    w.value = torch::empty({0}, w.value.scalar_type());
    w.scale = torch::Tensor();
    if (!on_device_) module_.setattr(w.name, w.value);
  }
  bytes_ = 0;
}

StageExecutor::StageExecutor(StageKind kind, const LoadedStage& stage, Offload offload, ComputeDevice& device,
                             RunObserver* observer)
    : kind_(kind), offload_(offload), device_(device), observer_(observer) {
  for (size_t i = 0; i < stage.parts.size(); ++i) {
    parts_.emplace_back(stage.parts[i], stage.manifest->parts[i].file);
    (stage.manifest->parts[i].role == "block" ? blocks_ : edges_).push_back(i);
  }
  // A stage without blocks can only be offloaded as a whole.
  if (blocks_.empty() && (offload_.mode == OffloadMode::kBlock || offload_.mode == OffloadMode::kSequential))
    offload_.mode = OffloadMode::kModel;
  // K resident blocks covering the whole stack is model offload.
  if (offload_.mode == OffloadMode::kBlock && static_cast<size_t>(offload_.blocks) >= blocks_.size())
    offload_.mode = OffloadMode::kModel;
  if (offload_.mode == OffloadMode::kBlock) copier_ = device_.NewCopyStream();
}

StageExecutor::~StageExecutor() {
  try {
    AwaitPrefetch();
  } catch (...) {
  }
  for (auto& p : parts_) p.ToHost();  // the package outlives the run: leave no device bytes behind
}

int64_t PlacedPart::placed_bytes() const {
  int64_t n = 0;
  for (const auto& w : host_)
    n += w.value.numel() * static_cast<int64_t>(w.scale.defined() ? c10::elementSize(w.compute) : w.value.element_size());
  return n;
}

int64_t StageExecutor::weight_bytes() const {
  int64_t n = 0;
  for (const auto& p : parts_) n += p.bytes();
  return n;
}

void StageExecutor::ConvertHost(torch::Dtype dtype) {
  const auto t0 = Clock::now();
  for (auto& p : parts_) p.ConvertHost(dtype);
  stats_.load_seconds += Seconds(t0, Clock::now());
}

void StageExecutor::QuantizeHost() {
  const auto t0 = Clock::now();
  for (auto& p : parts_) p.QuantizeHost();
  stats_.load_seconds += Seconds(t0, Clock::now());
}

void StageExecutor::ReleaseHost() {
  for (auto& p : parts_) p.ReleaseHost();
}

void StageExecutor::Emit(const std::string& name, const std::string& cat, const std::string& track,
                         Clock::time_point s) {
  if (observer_) observer_->OnEvent(RunEvent{name, cat, track, s, Clock::now()});
}

void StageExecutor::PlaceResident() {
  if (offload_.mode != OffloadMode::kNone) {
    // Offloaded weights are copied again and again: keep them where copies are fastest.
    for (auto& p : parts_) p.PrepareHost(device_);
    return;
  }
  const auto t0 = Clock::now();
  for (auto& p : parts_) p.ToDevice(device_);
  stats_.load_seconds += Seconds(t0, Clock::now());
  Emit(std::string(StageKindName(kind_)) + " load", "load", "copy", t0);
}

void StageExecutor::Begin() {
  began_ = Clock::now();
  device_.ResetPeak();
  int64_t own = 0;
  for (const auto& p : parts_) own += p.device_bytes();
  stats_.base_device_bytes = std::max<int64_t>(0, device_.Memory().allocated - own);
  if (offload_.mode == OffloadMode::kModel) {
    for (auto& p : parts_) p.ToDevice(device_);
  } else if (offload_.mode != OffloadMode::kNone) {
    for (size_t i : edges_) parts_[i].ToDevice(device_);
  }
  stats_.load_seconds += Seconds(began_, Clock::now());
  if (offload_.mode != OffloadMode::kNone) Emit(std::string(StageKindName(kind_)) + " place", "load", "copy", began_);
}

void StageExecutor::End() {
  AwaitPrefetch();
  device_.Synchronize();  // the stage's time and peak include the device work queued for it
  if (copier_) stats_.copy_seconds += copier_->Drain();
  if (offload_.mode != OffloadMode::kNone)
    for (auto& p : parts_) p.ToHost();
  stats_.wall_seconds += Seconds(began_, Clock::now());
  stats_.peak_device_bytes = std::max(stats_.peak_device_bytes, device_.Memory().peak);
  Emit(StageKindName(kind_), "stage", "compute", began_);
}

torch::jit::Module& StageExecutor::Part(size_t i) { return parts_.at(i).module(); }

void StageExecutor::Load(size_t block) {
  PlacedPart& p = parts_[blocks_[block]];
  if (p.on_device()) return;
  const auto t0 = Clock::now();
  p.ToDevice(device_);
  stats_.copy_seconds += Seconds(t0, Clock::now());
  stats_.copied_bytes += p.bytes();
  Emit("copy block " + std::to_string(block), "copy", "copy", t0);
}

void StageExecutor::Prefetch(size_t block) {
  PlacedPart& p = parts_[blocks_[block]];
  copier_->Start(p.placed_bytes(), [this, &p, block] {
    const auto start = Clock::now();
    auto made = p.ToDevice(device_);
    // On the simulated device this runs on the copy thread and spans the copy; on CUDA it only queues the copy,
    // whose device time the copy stream's events give.
    if (observer_ && device_.simulated())
      observer_->OnEvent(RunEvent{"copy block " + std::to_string(block), "copy", "copy", start, Clock::now()});
    return made;
  });
  inflight_ = true;
  inflight_block_ = block;
}

void StageExecutor::AwaitPrefetch() {
  if (!inflight_) return;
  inflight_ = false;
  const auto w0 = Clock::now();
  const double copy = copier_->Wait();  // rethrows an out-of-memory from the copy here
  stats_.copy_seconds += copy;
  stats_.wait_seconds += Seconds(w0, Clock::now());
  stats_.copied_bytes += parts_[blocks_[inflight_block_]].bytes();
}

void StageExecutor::RunBlocks(const std::function<void(torch::jit::Module&)>& body, bool another_call) {
  const size_t n = blocks_.size();
  if (stats_.block_seconds.size() < n) {
    stats_.block_seconds.resize(n, 0.0);
    stats_.block_runs.resize(n, 0);
  }
  const bool streaming = offload_.mode == OffloadMode::kBlock || offload_.mode == OffloadMode::kSequential;
  const size_t window = offload_.mode == OffloadMode::kBlock ? static_cast<size_t>(offload_.blocks) : 1;
  for (size_t b = 0; b < n; ++b) {
    PlacedPart& p = parts_[blocks_[b]];
    if (streaming) {
      // The prefetch started during the previous block (or the previous step's head) must land first.
      AwaitPrefetch();
      for (size_t j = b; j < n && j < b + window; ++j) Load(j);
      if (offload_.mode == OffloadMode::kBlock) {
        // block:K keeps K blocks resident and copies one more in while this one computes; after the last
        // block, block 0 of the next call (the next step) is copied in while the head and the next embed run.
        const size_t next = b + window < n ? b + window : (b + 1 == n && window < n && another_call ? 0 : n);
        if (next < n && !parts_[blocks_[next]].on_device()) Prefetch(next);
      }
    }
    const auto t0 = Clock::now();
    body(p.module());
    const auto t1 = Clock::now();
    stats_.compute_seconds += Seconds(t0, t1);
    stats_.block_seconds[b] += Seconds(t0, t1);
    stats_.block_runs[b] += 1;
    Emit("block " + std::to_string(b), "block", "compute", t0);
    if (streaming) p.ToHost();
  }
}

}  // namespace reel
