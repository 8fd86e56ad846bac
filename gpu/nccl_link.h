// NCCL links between workers: the unique id as bytes (it travels in a protobuf bytes field), a communicator whose
// set-up and waits are bounded by a timeout so a missing peer cannot hang a worker, and Send/Recv of device
// buffers on a stream. Built only where NCCL is found (REEL_HAVE_NCCL).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace reel {

class CudaStreamEvent;

// What the receiver needs before a tensor arrives over NCCL (sent ahead on the gRPC control path): it allocates
// `bytes` on its device and posts the matching Recv.
struct NcclTensorHeader {
  std::string dtype;  // f32 | bf16 | f16 | i64 | u8, as in TensorBlob
  std::vector<int64_t> shape;
  int64_t bytes = 0;

  // The header of a dense tensor. Throws InvalidArgument for an unknown dtype or a negative dimension.
  static NcclTensorHeader Dense(const std::string& dtype, std::vector<int64_t> shape);
  int64_t elements() const;
  // Throws InvalidArgument unless dtype is known, no dimension is negative and bytes = elements x dtype size.
  void Check() const;
};

// f32 -> ncclFloat32 ... u8 -> ncclUint8; throws InvalidArgument("dtype <d>: accepted f32, bf16, f16, i64, u8").
ncclDataType_t NcclDataType(const std::string& dtype);
int64_t NcclDtypeBytes(const std::string& dtype);  // 4, 2, 2, 8, 1; throws likewise

// A fresh id; works without a GPU (it names this host's bootstrap address). Throws Unavailable with NCCL's text.
ncclUniqueId NewNcclUniqueId();
std::string EncodeNcclUniqueId(const ncclUniqueId& id);  // exactly NCCL_UNIQUE_ID_BYTES raw bytes
// Throws InvalidArgument("NCCL unique id of <n> bytes: accepted exactly 128 bytes ...") for any other length.
ncclUniqueId DecodeNcclUniqueId(const std::string& bytes);

// One rank of an NCCL communicator on one CUDA device. Every call that waits for peers is bounded by `timeout`:
// past it, or on an error NCCL reports, the communicator is aborted and the call throws Error (Unavailable for
// a peer that did not answer or went away, InvalidArgument for misuse, Internal otherwise), naming the rank, the
// call and NCCL's error text.
class NcclComm {
 public:
  // Joins communicator `id` as `rank` of `nranks` on CUDA `device` (non-blocking init, polled). Throws
  // InvalidArgument for a rank outside 0..nranks-1, Unavailable without that device or when some rank does not
  // join within `timeout`.
  NcclComm(const ncclUniqueId& id, int rank, int nranks, int device, std::chrono::milliseconds timeout);
  ~NcclComm();  // finalizes (bounded by the timeout) and destroys, or aborts
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }
  bool aborted() const { return comm_ == nullptr; }

  // Queue a transfer of `count` elements of `type` (bytes: ncclUint8) on `stream`, to or from rank `peer`. The
  // call returns once queued; Synchronize waits for it. Sends and receives between the same two ranks must be
  // queued in the same order on both sides, or run together inside Group.
  void Send(const void* data, size_t count, ncclDataType_t type, int peer, cudaStream_t stream);
  void Recv(void* data, size_t count, ncclDataType_t type, int peer, cudaStream_t stream);
  void Send(const void* data, const NcclTensorHeader& header, int peer, cudaStream_t stream);
  void Recv(void* data, const NcclTensorHeader& header, int peer, cudaStream_t stream);
  // Runs the Send and Recv calls `ops` makes as one NCCL group: both directions at once, or to this rank itself.
  void Group(const std::function<void()>& ops);
  // Records `work`'s event and waits until everything queued on its stream has run, watching for NCCL's
  // asynchronous errors; bounded by the timeout too, so size it for the largest transfer.
  void Synchronize(CudaStreamEvent& work);
  void Abort();  // frees the communicator at once; every later call throws Unavailable

 private:
  void Check(ncclResult_t r, const char* call);
  // Polls the communicator's state until `done(state)`; aborts and throws on an NCCL error or at the timeout.
  void Await(const char* call, const std::function<bool(ncclResult_t)>& done);
  [[noreturn]] void Fail(ncclResult_t r, const char* call);
  void CheckUsable(const char* call, int peer) const;
  std::string Where() const;

  ncclComm_t comm_ = nullptr;
  int rank_, nranks_, device_;
  std::chrono::milliseconds timeout_;
};

}  // namespace reel
