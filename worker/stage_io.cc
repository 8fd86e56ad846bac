#include "worker/stage_io.h"

#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/printable.h"
#include "media/video_io.h"
#include "runtime/device_memory.h"
#include "runtime/recovery.h"

namespace reel {

namespace fs = std::filesystem;

grpc::Status StatusOf(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::kInvalidArgument: return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
    case ErrorKind::kNotFound: return {grpc::StatusCode::NOT_FOUND, e.what()};
    case ErrorKind::kDeviceOutOfMemory: return {grpc::StatusCode::RESOURCE_EXHAUSTED, e.what()};
    case ErrorKind::kCancelled: return {grpc::StatusCode::CANCELLED, e.what()};
    case ErrorKind::kUnavailable: return {grpc::StatusCode::UNAVAILABLE, e.what()};
    case ErrorKind::kBadPackage: return {grpc::StatusCode::FAILED_PRECONDITION, e.what()};
    default: return {grpc::StatusCode::INTERNAL, e.what()};
  }
}

namespace {

std::string DTypeString(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "f32";
    case torch::kBFloat16: return "bf16";
    case torch::kFloat16: return "f16";
    case torch::kInt64: return "i64";
    case torch::kUInt8: return "u8";
    default: throw Internal(fmt::format("no wire dtype for {}", c10::toString(t)));
  }
}

torch::ScalarType ScalarOf(const std::string& d) {
  if (d == "f32") return torch::kFloat32;
  if (d == "bf16") return torch::kBFloat16;
  if (d == "f16") return torch::kFloat16;
  if (d == "i64") return torch::kInt64;
  if (d == "u8") return torch::kUInt8;
  throw InvalidArgument(fmt::format("tensor dtype '{}': accepted f32, bf16, f16, i64 or u8", d));
}

ComputeDevice* worker_device = &SimulatedDevice();

}  // namespace

ComputeDevice& WorkerDevice() { return *worker_device; }
void SetWorkerDevice(ComputeDevice& device) { worker_device = &device; }

std::shared_ptr<const TensorBlob> ToBlob(const torch::Tensor& t) {
  HostScope host;
  const torch::Tensor c = t.is_cpu() ? t.contiguous() : worker_device->Download(t).contiguous();
  TensorBlob b;
  b.dtype = DTypeString(c.scalar_type());
  b.shape = c.sizes().vec();
  b.data.assign(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return SealBlob(std::move(b));
}

torch::Tensor FromBlob(const TensorBlob& b) {
  torch::Tensor t = torch::empty(b.shape, torch::TensorOptions().dtype(ScalarOf(b.dtype)));
  if (static_cast<int64_t>(t.numel() * t.element_size()) != b.bytes())
    throw Internal(fmt::format("tensor of shape {} and dtype {} cannot hold {} bytes", FormatShape(b.shape), b.dtype,
                               b.bytes()));
  std::memcpy(t.data_ptr(), b.data.data(), b.data.size());
  return worker_device->simulated() ? t : worker_device->Upload(t);
}

RunOptions OptionsOf(const std::map<StageKind, v1::StageStrategy>& stages) {
  RunOptions o;
  o.device = worker_device;
  for (const auto& [k, s] : stages) {
    const std::string what = fmt::format("strategy for {}", StageKindName(k));
    o.offload[k] = ParseOffload(s.offload().empty() ? "none" : s.offload(), what + " offload");
    if (!s.dtype().empty()) {
      auto d = ParseDType(s.dtype());
      if (!d || *d == DType::kI64)
        throw InvalidArgument(fmt::format("{} dtype '{}': accepted f32, bf16 or f16", what, s.dtype()));
      o.dtype[k] = *d;
    }
    o.int8[k] = s.int8_weights();
    if (k == StageKind::kVaeDecoder) {
      o.vae.slicing = s.vae_slicing();
      o.vae.tile = s.vae_tile();
      ValidateVaeDecodeOptions(o.vae);
    }
  }
  return o;
}

std::map<StageKind, v1::StageStrategy> StrategiesOf(const RunOptions& o,
                                                    const std::map<StageKind, v1::StageStrategy>& held) {
  std::map<StageKind, v1::StageStrategy> out = held;
  for (auto& [k, s] : out) {
    if (auto it = o.offload.find(k); it != o.offload.end()) s.set_offload(it->second.ToString());
    if (auto it = o.dtype.find(k); it != o.dtype.end()) s.set_dtype(DTypeName(it->second));
    if (auto it = o.int8.find(k); it != o.int8.end()) s.set_int8_weights(it->second);
    if (k == StageKind::kVaeDecoder) {
      s.set_vae_slicing(o.vae.slicing);
      s.set_vae_tile(o.vae.tile);
    }
  }
  return out;
}

std::shared_ptr<const TensorBlob> Need(const std::map<std::string, std::shared_ptr<const TensorBlob>>& in,
                                      const std::string& name) {
  auto it = in.find(name);
  if (it == in.end()) throw InvalidArgument(fmt::format("inputs: the stage needs a tensor named {}", name));
  return it->second;
}

std::shared_ptr<const TensorBlob> EncodeMp4(const std::string& job, const Video& video, int fps) {
  const fs::path tmp = fs::temp_directory_path() / fmt::format("reel-worker-{}-{}.mp4", ::getpid(), job);
  WriteMp4(tmp, video.rgb.data(), video.frames, video.height, video.width, fps);
  TensorBlob b;
  {
    std::ifstream in(tmp, std::ios::binary);
    b.data.assign(std::istreambuf_iterator<char>(in), {});
  }
  fs::remove(tmp);
  b.dtype = "u8";
  b.shape = {b.bytes()};
  return SealBlob(std::move(b));
}

}  // namespace reel
