// NCCL communicators run non-blocking: every call returns at once and the communicator's state is polled, which
// is what lets a timeout abort a rank whose peer never joined instead of blocking its thread forever.
#include "gpu/nccl_link.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "gpu/cuda_host.h"

namespace reel {
namespace {

struct DtypeInfo {
  const char* name;
  ncclDataType_t type;
  int64_t bytes;
};
constexpr DtypeInfo kDtypes[] = {{"f32", ncclFloat32, 4},
                                 {"bf16", ncclBfloat16, 2},
                                 {"f16", ncclFloat16, 2},
                                 {"i64", ncclInt64, 8},
                                 {"u8", ncclUint8, 1}};

const DtypeInfo& FindDtype(const std::string& dtype) {
  for (const DtypeInfo& d : kDtypes)
    if (dtype == d.name) return d;
  throw InvalidArgument(fmt::format("dtype '{}': accepted f32, bf16, f16, i64, u8", dtype));
}

ErrorKind NcclErrorKind(ncclResult_t r) {
  switch (r) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return ErrorKind::kInvalidArgument;
    case ncclSystemError:  // sockets, the network
    case ncclRemoteError:  // a peer failed or went away
      return ErrorKind::kUnavailable;
    default:
      return ErrorKind::kInternal;
  }
}

}  // namespace

NcclTensorHeader NcclTensorHeader::Dense(const std::string& dtype, std::vector<int64_t> shape) {
  NcclTensorHeader h{dtype, std::move(shape), 0};
  h.bytes = h.elements() * NcclDtypeBytes(dtype);
  h.Check();
  return h;
}

int64_t NcclTensorHeader::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void NcclTensorHeader::Check() const {
  const int64_t size = NcclDtypeBytes(dtype);
  for (int64_t d : shape)
    if (d < 0)
      throw InvalidArgument(fmt::format("tensor shape [{}]: accepted dimensions of 0 or more", fmt::join(shape, ", ")));
  if (bytes != elements() * size)
    throw InvalidArgument(fmt::format("tensor {} [{}] of {} bytes: accepted {} bytes (elements x {} bytes)", dtype,
                                      fmt::join(shape, ", "), bytes, elements() * size, size));
}

ncclDataType_t NcclDataType(const std::string& dtype) { return FindDtype(dtype).type; }
int64_t NcclDtypeBytes(const std::string& dtype) { return FindDtype(dtype).bytes; }

ncclUniqueId NewNcclUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
    throw Unavailable(fmt::format("ncclGetUniqueId: {} ({})", ncclGetErrorString(r), ncclGetLastError(nullptr)));
  return id;
}

std::string EncodeNcclUniqueId(const ncclUniqueId& id) { return std::string(id.internal, sizeof id.internal); }

ncclUniqueId DecodeNcclUniqueId(const std::string& bytes) {
  ncclUniqueId id;
  if (bytes.size() != sizeof id.internal)
    throw InvalidArgument(
        fmt::format("NCCL unique id of {} bytes: accepted exactly {} bytes, as EncodeNcclUniqueId "
                    "writes them",
                    bytes.size(), sizeof id.internal));
  std::memcpy(id.internal, bytes.data(), sizeof id.internal);
  return id;
}

NcclComm::NcclComm(const ncclUniqueId& id, int rank, int nranks, int device, std::chrono::milliseconds timeout)
    : rank_(rank), nranks_(nranks), device_(device), timeout_(timeout) {
  if (nranks < 1 || rank < 0 || rank >= nranks)
    throw InvalidArgument(
        fmt::format("NCCL rank {} of {}: accepted 1 rank or more and a rank from 0 to {}", rank, nranks, nranks - 1));
  CudaDeviceScope scope(device);  // NCCL binds the communicator to the current device
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  Check(ncclCommInitRankConfig(&comm_, nranks, id, rank, &config), "ncclCommInitRankConfig");
}

NcclComm::~NcclComm() {
  if (!comm_) return;
  try {
    Check(ncclCommFinalize(comm_), "ncclCommFinalize");  // bounded: a vanished peer gets the communicator aborted
    ncclCommDestroy(comm_);
  } catch (const Error&) {
  }
}

std::string NcclComm::Where() const {
  return fmt::format("NCCL rank {} of {} on CUDA device {}", rank_, nranks_, device_);
}

void NcclComm::Abort() {
  if (!comm_) return;
  ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclComm::Fail(ncclResult_t r, const char* call) {
  std::string message = fmt::format("{}: {}: {}", Where(), call, ncclGetErrorString(r));
  if (const char* detail = ncclGetLastError(comm_); detail && *detail) message += fmt::format(" ({})", detail);
  Abort();
  throw Error(NcclErrorKind(r), message);
}

void NcclComm::Check(ncclResult_t r, const char* call) {
  if (r == ncclInProgress) return Await(call, [](ncclResult_t state) { return state == ncclSuccess; });
  if (r != ncclSuccess) Fail(r, call);
}

void NcclComm::Await(const char* call, const std::function<bool(ncclResult_t)>& done) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (auto pause = std::chrono::microseconds(20);; pause = std::min(pause * 2, std::chrono::microseconds(5000))) {
    ncclResult_t state = ncclInProgress;
    if (ncclResult_t r = ncclCommGetAsyncError(comm_, &state); r != ncclSuccess) Fail(r, "ncclCommGetAsyncError");
    if (state != ncclSuccess && state != ncclInProgress) Fail(state, call);
    if (done(state)) return;
    if (std::chrono::steady_clock::now() >= deadline) {
      Abort();
      throw Unavailable(
          fmt::format("{}: {}: not done after {} ms (a peer did not join or did not post the matching "
                      "call); communicator aborted",
                      Where(), call, timeout_.count()));
    }
    std::this_thread::sleep_for(pause);
  }
}

void NcclComm::CheckUsable(const char* call, int peer) const {
  if (!comm_) throw Unavailable(fmt::format("{}: {}: the communicator was aborted", Where(), call));
  if (peer < 0 || peer >= nranks_)
    throw InvalidArgument(fmt::format("{}: {} peer {}: accepted 0 to {}", Where(), call, peer, nranks_ - 1));
}

void NcclComm::Send(const void* data, size_t count, ncclDataType_t type, int peer, cudaStream_t stream) {
  CheckUsable("ncclSend", peer);
  Check(ncclSend(data, count, type, peer, comm_, stream), "ncclSend");
}

void NcclComm::Recv(void* data, size_t count, ncclDataType_t type, int peer, cudaStream_t stream) {
  CheckUsable("ncclRecv", peer);
  Check(ncclRecv(data, count, type, peer, comm_, stream), "ncclRecv");
}

void NcclComm::Send(const void* data, const NcclTensorHeader& header, int peer, cudaStream_t stream) {
  header.Check();
  Send(data, static_cast<size_t>(header.elements()), NcclDataType(header.dtype), peer, stream);
}

void NcclComm::Recv(void* data, const NcclTensorHeader& header, int peer, cudaStream_t stream) {
  header.Check();
  Recv(data, static_cast<size_t>(header.elements()), NcclDataType(header.dtype), peer, stream);
}

void NcclComm::Group(const std::function<void()>& ops) {
  CheckUsable("ncclGroupStart", rank_);
  if (ncclResult_t r = ncclGroupStart(); r != ncclSuccess) Fail(r, "ncclGroupStart");
  try {
    ops();
  } catch (...) {
    // A group cannot be dropped half-queued: end it and abort, so the peers time out rather than half-match.
    ncclGroupEnd();
    Abort();
    throw;
  }
  Check(ncclGroupEnd(), "ncclGroupEnd");
}

void NcclComm::Synchronize(CudaStreamEvent& work) {
  CheckUsable("synchronize", rank_);
  work.Record();
  Await("synchronize", [&](ncclResult_t) { return work.Done(); });
}

}  // namespace reel
