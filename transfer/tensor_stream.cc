#include "transfer/tensor_stream.h"

#include <xxhash.h>

#include <algorithm>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "common/huge_pages.h"
#include "common/printable.h"
#include "reel/v1/worker.grpc.pb.h"
#include "security/transport_security.h"
#include "transfer/server_status.h"

namespace reel {

int64_t WireDTypeBytes(const std::string& dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "i64") return 8;
  if (dtype == "u8") return 1;
  return 0;
}

uint64_t Checksum(const std::string& data) { return XXH3_64bits(data.data(), data.size()); }

std::shared_ptr<const TensorBlob> SealBlob(TensorBlob blob) {
  blob.xxh3 = Checksum(blob.data);
  return std::make_shared<const TensorBlob>(std::move(blob));
}

namespace {

void SetHeader(const TensorBlob& blob, reel::v1::TensorHeader* h) {
  h->set_dtype(blob.dtype);
  for (int64_t d : blob.shape) h->add_shape(d);
  h->set_total_bytes(blob.bytes());
  h->set_xxh3(blob.xxh3);
}

// Chunks of the blob, in order; the last travels with the call's status, so the reader is done on one arrival,
// not two. With an `owner`, chunks of kZeroCopyBytes or more are slices of the blob (kept alive by it), not copies.
bool WriteChunks(grpc::internal::WriterInterface<reel::v1::TensorChunk>* w, const TensorBlob& blob, int chunk_bytes,
                 const std::shared_ptr<const TensorBlob>& owner) {
  if (chunk_bytes <= 0) chunk_bytes = kDefaultChunkBytes;
  const int64_t total = blob.bytes();
  int64_t off = 0;
  do {
    reel::v1::TensorChunk chunk;
    if (off == 0) SetHeader(blob, chunk.mutable_header());
    const int64_t n = std::min<int64_t>(chunk_bytes, total - off);
    chunk.set_offset(off);
    wire::ExternalData external;
    if (owner && n >= static_cast<int64_t>(wire::kZeroCopyBytes)) {
      external = {blob.data.data() + off, static_cast<size_t>(n), owner};
    } else {
      chunk.set_data(blob.data.data() + off, static_cast<size_t>(n));
    }
    off += n;
    // gRPC's synchronous Write serializes on this thread, during the call.
    wire::t_external = external.size > 0 ? &external : nullptr;
    const bool last = off >= total;
    bool ok = true;
    if (last) {
      w->WriteLast(chunk, grpc::WriteOptions());
    } else {
      ok = w->Write(chunk);
    }
    wire::t_external = nullptr;
    if (!ok) return false;
  } while (off < total);
  return true;
}

}  // namespace

bool WriteTensor(grpc::internal::WriterInterface<reel::v1::TensorChunk>* w, const TensorBlob& blob,
                 int chunk_bytes) {
  return WriteChunks(w, blob, chunk_bytes, nullptr);
}

bool WriteTensor(grpc::ServerWriter<reel::v1::TensorChunk>* w, std::shared_ptr<const TensorBlob> blob,
                 int chunk_bytes) {
  return WriteChunks(w, *blob, chunk_bytes, blob);
}

TensorAssembler::TensorAssembler() : hash_(XXH3_createState()) { XXH3_64bits_reset(static_cast<XXH3_state_t*>(hash_)); }

TensorAssembler::~TensorAssembler() { XXH3_freeState(static_cast<XXH3_state_t*>(hash_)); }

bool TensorAssembler::Add(const reel::v1::TensorChunk& chunk, std::string* error) {
  if (std::exchange(taken_, false)) {
    if (chunk.data().empty()) return true;  // its bytes are on the blob already
    *error = "tensor stream: a chunk carries its data field twice";
    return false;
  }
  if (!Accept(chunk, chunk.data().size(), error)) return false;
  Append(chunk.data().data(), chunk.data().size());
  return true;
}

bool TensorAssembler::Take(const reel::v1::TensorChunk& head, uint64_t size) {
  std::string error;  // refused here, the chunk is read as usual and Add reports what is wrong with it
  if (taken_ || !Accept(head, size, &error)) return false;
  taken_ = true;
  return true;
}

void TensorAssembler::Append(const char* data, size_t size) {
  blob_.data.append(data, size);
  XXH3_64bits_update(static_cast<XXH3_state_t*>(hash_), data, size);
}

bool TensorAssembler::Accept(const reel::v1::TensorChunk& chunk, uint64_t size, std::string* error) {
  if (!have_header_) {
    if (!chunk.has_header()) {
      *error = "tensor stream: the first chunk has no header";
      return false;
    }
    const auto& h = chunk.header();
    if (h.total_bytes() < 0 || h.total_bytes() > kMaxTensorBytes) {
      *error = fmt::format("tensor stream: header total_bytes {} is out of range, accepted 0 to {} (1 TiB)",
                           h.total_bytes(), kMaxTensorBytes);
      return false;
    }
    // The receiver turns the bytes into a tensor of this dtype and shape (worker FromBlob): they must agree.
    const int64_t element = WireDTypeBytes(h.dtype());
    if (element == 0) {
      *error = fmt::format("tensor stream: header dtype '{}' is not one of f32, bf16, f16, i64, u8",
                           Printable(h.dtype(), 32));
      return false;
    }
    if (h.shape_size() > kMaxTensorRank) {
      *error = fmt::format("tensor stream: header shape has {} dimensions, accepted at most {}", h.shape_size(),
                           kMaxTensorRank);
      return false;
    }
    const std::string shape = fmt::format("[{}]", fmt::join(h.shape(), ", "));
    if (std::any_of(h.shape().begin(), h.shape().end(), [](int64_t d) { return d < 0; })) {
      *error = fmt::format("tensor stream: header shape {} has a negative dimension", shape);
      return false;
    }
    // The other dimensions of an empty tensor are bounded too: a receiver still computes with them (strides).
    int64_t bytes = element;
    for (int64_t d : h.shape()) {
      if (d != 0 && (__builtin_mul_overflow(bytes, d, &bytes) || bytes > kMaxTensorBytes)) {
        *error = fmt::format("tensor stream: header shape {} of {} holds more than {} bytes (1 TiB)", shape,
                             h.dtype(), kMaxTensorBytes);
        return false;
      }
    }
    if (std::count(h.shape().begin(), h.shape().end(), 0) != 0) bytes = 0;
    if (bytes != h.total_bytes()) {
      *error = fmt::format("tensor stream: header shape {} of {} holds {} bytes, but total_bytes is {}", shape,
                           h.dtype(), bytes, h.total_bytes());
      return false;
    }
    blob_.dtype = h.dtype();
    blob_.shape.assign(h.shape().begin(), h.shape().end());
    blob_.xxh3 = h.xxh3();
    total_ = h.total_bytes();
    // Reserved up front only as far as a header can be trusted; beyond that the string grows with the bytes that
    // actually arrive (a peer announcing 1 TiB and sending 1 byte must not cost 1 TiB).
    constexpr int64_t kReserveBytes = 64 << 20;
    blob_.data.reserve(static_cast<size_t>(std::min(total_, kReserveBytes)));
    // Written once, front to back, as the bytes arrive: in 2 MiB pages the kernel faults it in 512 times less
    // often (about a fifth of a 64 MiB fetch's time went to 4 KiB page faults).
    AdviseHugePages(blob_.data.data(), blob_.data.capacity(), size_t{4} << 20);
    have_header_ = true;
  }
  if (chunk.offset() != blob_.bytes()) {
    *error = fmt::format("tensor stream: chunk at offset {} arrived after {} bytes", chunk.offset(), blob_.bytes());
    return false;
  }
  if (size > static_cast<uint64_t>(total_ - blob_.bytes())) {
    *error = fmt::format("tensor stream: more than the {} bytes the header announced", total_);
    return false;
  }
  return true;
}

std::shared_ptr<const TensorBlob> TensorAssembler::Finish(std::string* error) {
  if (!have_header_) {
    *error = "tensor stream: ended before its header";
    return nullptr;
  }
  if (blob_.bytes() != total_) {
    *error = fmt::format("tensor stream: ended after {} of {} bytes", blob_.bytes(), total_);
    return nullptr;
  }
  const uint64_t sum = XXH3_64bits_digest(static_cast<XXH3_state_t*>(hash_));
  if (sum != blob_.xxh3) {
    *error = fmt::format("tensor stream: checksum {:016x} does not match the sender's {:016x}", sum, blob_.xxh3);
    return nullptr;
  }
  return std::make_shared<const TensorBlob>(std::move(blob_));
}

void ToChunk(const TensorBlob& blob, reel::v1::TensorChunk* chunk) {
  SetHeader(blob, chunk->mutable_header());
  chunk->set_offset(0);
  chunk->set_data(blob.data);
}

std::shared_ptr<const TensorBlob> FromChunk(const reel::v1::TensorChunk& chunk, std::string* error) {
  TensorAssembler a;
  if (!a.Add(chunk, error)) return nullptr;
  return a.Finish(error);
}

std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
  std::lock_guard lock(mu);
  // Keyed by the process's client security too: channels made before it changed are not reused.
  auto& c = channels[address + "#" + std::to_string(ClientSecurityGeneration())];
  if (!c) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    // Reconnect quickly after a peer restarts (the default backoff grows to two minutes).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // Large frames and a deep receive window: tensors arrive in few frames without waiting for window updates.
    args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
    c = CreateClientChannel(address, args);  // TLS and the token when configured (security/)
  }
  return c;
}

void ConfigureServer(grpc::ServerBuilder& builder) {
  builder.experimental().SetInterceptorCreators(StatusMessageInterceptors());  // no status without a message
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
}

std::shared_ptr<const TensorBlob> FetchTensor(const std::string& address, const std::string& job_id,
                                              const std::string& name, int chunk_bytes, int wait_ms,
                                              const grpc::ServerContext* parent) {
  auto stub = reel::v1::Worker::NewStub(ChannelTo(address));
  std::unique_ptr<grpc::ClientContext> ctx =
      parent ? grpc::ClientContext::FromServerContext(*parent) : std::make_unique<grpc::ClientContext>();
  reel::v1::FetchTensorRequest req;
  req.set_job_id(job_id);
  req.set_name(name);
  req.set_chunk_bytes(chunk_bytes);
  req.set_wait_ms(wait_ms);
  auto reader = stub->FetchTensor(ctx.get(), req);
  grpc::Status st;
  std::string error;
  auto blob = ReadTensor(*reader, *ctx, &st, &error);
  if (blob) return blob;
  const std::string what = fmt::format("fetching {}/{} from {}: {}", job_id, name, address,
                                       st.ok() ? error : st.error_message());
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE) throw Unavailable(what);
  if (st.error_code() == grpc::StatusCode::NOT_FOUND) throw NotFound(what);
  if (st.error_code() == grpc::StatusCode::CANCELLED) throw Cancelled(what);
  throw Internal(what);
}

std::shared_ptr<const TensorBlob> ReadTensor(grpc::ClientReaderInterface<reel::v1::TensorChunk>& reader,
                                             grpc::ClientContext& ctx, grpc::Status* status, std::string* error) {
  TensorAssembler a;
  reel::v1::TensorChunk chunk;
  bool ok = true;
  for (;;) {
    // gRPC's synchronous Read deserializes on this thread: the chunk's bytes go straight onto the blob.
    wire::t_sink = ok ? &a : nullptr;
    const bool got = reader.Read(&chunk);
    wire::t_sink = nullptr;
    if (!got) break;
    if (ok && !a.Add(chunk, error)) {
      ok = false;
      ctx.TryCancel();
    }
  }
  *status = reader.Finish();
  if (!ok) {
    *status = grpc::Status::OK;
    return nullptr;
  }
  if (!status->ok()) return nullptr;
  return a.Finish(error);
}

bool TensorStore::Put(const std::string& job, const std::string& name, std::shared_ptr<const TensorBlob> blob) {
  bool waiters = false;
  {
    std::lock_guard lock(mu_);
    blobs_[{job, name}] = std::move(blob);
    waiters = waiting_ > 0;
  }
  put_.notify_all();
  return waiters;
}

std::shared_ptr<const TensorBlob> TensorStore::WaitGet(const std::string& job, const std::string& name,
                                                       std::chrono::milliseconds wait,
                                                       const std::function<bool()>& cancelled) {
  const auto end = std::chrono::steady_clock::now() + wait;
  std::unique_lock lock(mu_);
  for (;;) {
    if (auto it = blobs_.find({job, name}); it != blobs_.end()) return it->second;
    const auto now = std::chrono::steady_clock::now();
    if (now >= end || (cancelled && cancelled())) return nullptr;
    // Cancellation is polled: a waiting fetch notices its caller went away within 50 ms.
    ++waiting_;
    put_.wait_for(lock, std::min<std::chrono::steady_clock::duration>(end - now, std::chrono::milliseconds(50)));
    --waiting_;
  }
}

std::shared_ptr<const TensorBlob> TensorStore::Get(const std::string& job, const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = blobs_.find({job, name});
  return it == blobs_.end() ? nullptr : it->second;
}

int TensorStore::Release(const std::string& job) {
  std::lock_guard lock(mu_);
  int n = 0;
  for (auto it = blobs_.lower_bound({job, ""}); it != blobs_.end() && it->first.first == job;) {
    it = blobs_.erase(it);
    ++n;
  }
  return n;
}

int TensorStore::size() const {
  std::lock_guard lock(mu_);
  return static_cast<int>(blobs_.size());
}

}  // namespace reel
