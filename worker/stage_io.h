// What the worker's handlers share to turn wire messages into runtime calls and back: gRPC statuses of Reel's
// errors, tensors as the bytes the transfer layer carries (on this worker's device), and the strategies the
// coordinator sends as the runtime's options.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <torch/types.h>

#include "common/error.h"
#include "reel/v1/worker.pb.h"
#include "runtime/pipeline.h"
#include "transfer/tensor_stream.h"

namespace reel {

grpc::Status StatusOf(const Error& e);

// The device this worker process computes on (one process per device), set once at start.
ComputeDevice& WorkerDevice();
void SetWorkerDevice(ComputeDevice& device);

// A tensor's bytes (downloaded from a real device first).
std::shared_ptr<const TensorBlob> ToBlob(const torch::Tensor& t);
// A tensor with the blob's bytes on this worker's device (on the simulated device: allocated in the caller's
// scope, so inside a DeviceScope it counts as device bytes).
torch::Tensor FromBlob(const TensorBlob& b);
// The input named `name` of a stage call; throws InvalidArgument when the call did not send it.
std::shared_ptr<const TensorBlob> Need(const std::map<std::string, std::shared_ptr<const TensorBlob>>& in,
                                      const std::string& name);

// The coordinator's strategies as runtime options on WorkerDevice(); throws InvalidArgument naming a bad one.
RunOptions OptionsOf(const std::map<StageKind, v1::StageStrategy>& stages);
// The inverse for the stages in `held`: what CheaperAfterOom chose, as the strategies a worker reports.
std::map<StageKind, v1::StageStrategy> StrategiesOf(const RunOptions& o,
                                                    const std::map<StageKind, v1::StageStrategy>& held);

// The decoded video as an MP4 file's bytes (written under the temporary directory, read back, removed).
std::shared_ptr<const TensorBlob> EncodeMp4(const std::string& job, const Video& video, int fps);

}  // namespace reel
