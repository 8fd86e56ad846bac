// Tensors as they travel between workers: bytes with dtype, shape and an XXH3-64 checksum, streamed over gRPC in
// chunks (header first) and verified on arrival. Torch-free: the coordinator downloads outputs with the same code.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>

#include "reel/v1/types.pb.h"

namespace reel {

struct TensorBlob {
  std::string dtype;  // f32 | bf16 | f16 | i64 | u8
  std::vector<int64_t> shape;
  std::string data;
  uint64_t xxh3 = 0;

  int64_t bytes() const { return static_cast<int64_t>(data.size()); }
};

// Bytes per element of a wire dtype; 0 for a dtype Reel does not send.
int64_t WireDTypeBytes(const std::string& dtype);
// What a receiver accepts in a header: at most 1 TiB in at most 8 dimensions (Reel's tensors have 5).
inline constexpr int64_t kMaxTensorBytes = int64_t{1} << 40;
inline constexpr int kMaxTensorRank = 8;

uint64_t Checksum(const std::string& data);
// Fills in the checksum.
std::shared_ptr<const TensorBlob> SealBlob(TensorBlob blob);

// 4 MiB: a 64 MiB tensor in 16 messages; on loopback as fast as 1 MiB chunks (docs/BENCHMARKS.md).
inline constexpr int kDefaultChunkBytes = 4 << 20;
// Limits on every channel and server that carries tensors.
inline constexpr int kMaxMessageBytes = 256 << 20;

// Writes the blob as chunks of `chunk_bytes` to a server or client stream. False when the peer went away.
bool WriteTensor(grpc::internal::WriterInterface<reel::v1::TensorChunk>* w, const TensorBlob& blob,
                 int chunk_bytes = kDefaultChunkBytes);
// The same to a gRPC server stream without copying the bytes: each chunk is sent as a slice of the blob, which the
// slices keep alive until they are sent (transfer/chunk_serialization.h).
bool WriteTensor(grpc::ServerWriter<reel::v1::TensorChunk>* w, std::shared_ptr<const TensorBlob> blob,
                 int chunk_bytes = kDefaultChunkBytes);

// Assembles chunks as they arrive; Finish checks the byte count and checksum. The header is checked before any
// byte is kept: a known dtype and a shape that holds exactly total_bytes, so a finished blob always rebuilds into a
// tensor of its shape. Memory follows the bytes that arrived, not what the header claims.
// Read through a gRPC stream (ReadTensor), each chunk's bytes go from gRPC's buffers straight onto the blob.
class TensorAssembler final : public wire::ChunkSink {
 public:
  TensorAssembler();
  ~TensorAssembler();
  TensorAssembler(const TensorAssembler&) = delete;
  TensorAssembler& operator=(const TensorAssembler&) = delete;
  // False with `error` set when the chunk is out of order or the header is malformed.
  bool Add(const reel::v1::TensorChunk& chunk, std::string* error);
  // The verified blob; DATA_LOSS status text in `error` when bytes or checksum disagree.
  std::shared_ptr<const TensorBlob> Finish(std::string* error);

  // wire::ChunkSink: a chunk's bytes during its deserialization, when its header and offset are in order.
  bool Take(const reel::v1::TensorChunk& head, uint64_t size) override;
  void Append(const char* data, size_t size) override;

 private:
  // Checks a chunk (its header, if first) before `size` bytes of it are kept.
  bool Accept(const reel::v1::TensorChunk& chunk, uint64_t size, std::string* error);
  bool taken_ = false;  // the chunk being read had its bytes appended during deserialization
  bool have_header_ = false;
  TensorBlob blob_;
  int64_t total_ = 0;
  void* hash_ = nullptr;  // XXH3 state, fed as chunks arrive (while they are still in cache)
};

// The single-message form used for small per-step tensors.
void ToChunk(const TensorBlob& blob, reel::v1::TensorChunk* chunk);
std::shared_ptr<const TensorBlob> FromChunk(const reel::v1::TensorChunk& chunk, std::string* error);

// Reads a tensor stream to its end. Null when it failed: `status` is the call's status, and `error` says what
// was wrong with the bytes when the call itself succeeded.
std::shared_ptr<const TensorBlob> ReadTensor(grpc::ClientReaderInterface<reel::v1::TensorChunk>& reader,
                                             grpc::ClientContext& ctx, grpc::Status* status, std::string* error);

// Fetches (job, name) from the worker at `address`; throws Error (Unavailable / NotFound / Internal) naming the
// worker. With `wait_ms`, a tensor its producer has not stored yet is waited for that long. With `parent`, the
// fetch is cancelled when that server call is (a stage call cancelled while it waits for its inputs).
std::shared_ptr<const TensorBlob> FetchTensor(const std::string& address, const std::string& job_id,
                                              const std::string& name, int chunk_bytes = kDefaultChunkBytes,
                                              int wait_ms = 0, const grpc::ServerContext* parent = nullptr);

// Channels with Reel's message limits, one per address, shared by the process.
std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);
// The same limits and HTTP/2 settings for a server that sends or receives tensors, and a message on every status
// it sends (server_status.h).
void ConfigureServer(grpc::ServerBuilder& builder);

// A worker's tensors, keyed by (job, name).
class TensorStore {
 public:
  // True when a fetch was waiting for it (the caller may step aside so that fetch runs first).
  bool Put(const std::string& job, const std::string& name, std::shared_ptr<const TensorBlob> blob);
  std::shared_ptr<const TensorBlob> Get(const std::string& job, const std::string& name) const;
  // Waits up to `wait` for the tensor to be put; null when it was not (or `cancelled` said stop).
  std::shared_ptr<const TensorBlob> WaitGet(const std::string& job, const std::string& name,
                                            std::chrono::milliseconds wait, const std::function<bool()>& cancelled);
  int Release(const std::string& job);
  int size() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable put_;
  int waiting_ = 0;  // fetches blocked in WaitGet
  std::map<std::pair<std::string, std::string>, std::shared_ptr<const TensorBlob>> blobs_;
};

}  // namespace reel
