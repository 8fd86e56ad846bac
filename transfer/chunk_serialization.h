// How a TensorChunk goes on and off the wire without copying its bytes more than once. The bytes on the wire are
// the ordinary protobuf encoding, so any reel.v1 client or server interoperates; only the copies differ.
//   Sending: the chunk's data is handed to gRPC as a slice it owns (protobuf's own serializer would copy every
//   chunk into a new buffer), or, when WriteTensor points the thread's next serialization at a range of a blob
//   (ExternalData), as a slice of the blob itself, kept alive until gRPC has sent it.
//   Receiving: when TensorAssembler waits on the thread's next deserialization (ChunkSink), the chunk's bytes go
//   from gRPC's slices straight onto the tensor being assembled instead of into the message and then onto it.
// Both hand-offs are per thread and per call: gRPC's synchronous Write and Read (de)serialize on the calling
// thread; where one does not, the ordinary path runs and nothing changes but a copy.
// Force-included (-include) into every translation unit that links reel_proto, so the generated code and Reel's
// code see the same specialization.
#pragma once

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "reel/v1/types.pb.h"

namespace reel::wire {

// Chunks smaller than this are serialized by protobuf's ordinary path (a copy costs less than two slices).
inline constexpr size_t kZeroCopyBytes = 64 << 10;

// The bytes the next TensorChunk serialized on this thread carries instead of its (empty) data field.
struct ExternalData {
  const char* data = nullptr;
  size_t size = 0;
  std::shared_ptr<const void> owner;  // keeps the bytes alive until gRPC is done with them
};
inline thread_local const ExternalData* t_external = nullptr;

// Takes the data of the next TensorChunk deserialized on this thread, once fields 1 and 2 (header, offset), which
// a Reel sender writes first, have been parsed. Take says whether it wants `size` bytes for the chunk as parsed so
// far; if not, they go into the message as usual.
class ChunkSink {
 public:
  virtual bool Take(const reel::v1::TensorChunk& head, uint64_t size) = 0;
  virtual void Append(const char* data, size_t size) = 0;

 protected:
  ~ChunkSink() = default;
};
inline thread_local ChunkSink* t_sink = nullptr;

// Reads protobuf wire format across a ByteBuffer's slices without joining them.
class SliceCursor {
 public:
  explicit SliceCursor(const std::vector<grpc::Slice>& slices) : slices_(slices) { Skip(); }
  bool done() const { return i_ == slices_.size(); }
  size_t remaining() const {
    size_t n = 0;
    for (size_t k = i_; k < slices_.size(); ++k) n += slices_[k].size() - (k == i_ ? at_ : 0);
    return n;
  }
  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (done()) return false;
      const uint8_t b = slices_[i_].begin()[at_];
      Advance(1);
      *v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // Hands the next `n` bytes to fn(data, size), piece by piece; false when fewer remain.
  template <typename Fn>
  bool Each(uint64_t n, Fn&& fn) {
    while (n > 0) {
      if (done()) return false;
      const size_t k = static_cast<size_t>(std::min<uint64_t>(n, slices_[i_].size() - at_));
      fn(reinterpret_cast<const char*>(slices_[i_].begin()) + at_, k);
      Advance(k);
      n -= k;
    }
    return true;
  }

 private:
  void Advance(size_t n) {
    at_ += n;
    Skip();
  }
  void Skip() {
    while (i_ < slices_.size() && at_ == slices_[i_].size()) ++i_, at_ = 0;
  }
  const std::vector<grpc::Slice>& slices_;
  size_t i_ = 0, at_ = 0;
};

}  // namespace reel::wire

namespace grpc {

template <>
class SerializationTraits<reel::v1::TensorChunk, void> {
  // Skips an unknown field whose tag was read (a group up to its end tag, nested at most 100 deep, as protobuf).
  static bool SkipField(reel::wire::SliceCursor& in, uint64_t field, uint64_t type, int depth) {
    uint64_t v = 0;
    switch (type) {
      case 0:
        return in.Varint(&v);
      case 1:
      case 5:
        return in.Each(type == 1 ? 8 : 4, [](const char*, size_t) {});
      case 2:
        return in.Varint(&v) && v <= in.remaining() && in.Each(v, [](const char*, size_t) {});
      case 3:
        if (depth >= 100) return false;
        for (;;) {
          uint64_t tag = 0;
          if (!in.Varint(&tag)) return false;
          if ((tag & 7) == 4) return (tag >> 3) == field;
          if (!SkipField(in, tag >> 3, tag & 7, depth + 1)) return false;
        }
      default:
        return false;
    }
  }

 public:
  static Status Serialize(const reel::v1::TensorChunk& msg, ByteBuffer* bb, bool* own_buffer) {
    const reel::wire::ExternalData* ext = reel::wire::t_external;
    const bool external = ext != nullptr && msg.data().empty() && ext->size > 0;
    const size_t n = external ? ext->size : msg.data().size();
    if (n < reel::wire::kZeroCopyBytes && !external)
      return GenericSerialize<ProtoBufferWriter, reel::v1::TensorChunk>(msg, bb, own_buffer);
    // Fields 1 (header) and 2 (offset) as protobuf writes them, then field 3's tag and length, then the bytes.
    reel::v1::TensorChunk head;
    if (msg.has_header()) *head.mutable_header() = msg.header();
    head.set_offset(msg.offset());
    std::string prefix = head.SerializeAsString();
    prefix.push_back(static_cast<char>((3 << 3) | 2));
    for (uint64_t k = n;; k >>= 7) {
      if (k < 0x80) {
        prefix.push_back(static_cast<char>(k));
        break;
      }
      prefix.push_back(static_cast<char>((k & 0x7f) | 0x80));
    }
    Slice data;
    if (external) {
      // A slice of the blob; its owner reference goes when gRPC frees the slice.
      auto* owner = new std::shared_ptr<const void>(ext->owner);
      data = Slice(const_cast<char*>(ext->data), n, [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); },
                   owner);
    } else {
      // The writer builds a chunk per Write and drops it after: its bytes move into the slice, freed by gRPC.
      auto* owned = new std::string(std::move(*const_cast<reel::v1::TensorChunk&>(msg).mutable_data()));
      data = Slice(owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
    }
    Slice slices[2] = {Slice(prefix.data(), prefix.size()), std::move(data)};
    ByteBuffer tmp(slices, 2);
    bb->Swap(&tmp);
    *own_buffer = true;
    return Status::OK;
  }

  static Status Deserialize(ByteBuffer* buffer, reel::v1::TensorChunk* msg) {
    reel::wire::ChunkSink* sink = reel::wire::t_sink;
    std::vector<Slice> slices;
    if (sink == nullptr || !buffer->Dump(&slices).ok())
      return GenericDeserialize<ProtoBufferReader, reel::v1::TensorChunk>(buffer, msg);
    msg->Clear();
    reel::wire::SliceCursor in(slices);
    const Status bad(StatusCode::INTERNAL, "TensorChunk: malformed protobuf");
    auto fail = [&] {
      buffer->Clear();
      return bad;
    };
    while (!in.done()) {
      uint64_t tag = 0, v = 0;
      if (!in.Varint(&tag)) return fail();
      const uint64_t field = tag >> 3, type = tag & 7;
      if (field == 0) return fail();
      if (type == 0) {  // varint
        if (!in.Varint(&v)) return fail();
        if (field == 2) msg->set_offset(static_cast<int64_t>(v));
        continue;
      }
      if (type != 2) {  // fixed64, fixed32 or a group: no such field in TensorChunk, kept by protobuf as unknown
        if (!SkipField(in, field, type, 0)) return fail();
        continue;
      }
      if (!in.Varint(&v) || v > in.remaining()) return fail();
      if (field == 1) {
        std::string bytes;
        in.Each(v, [&](const char* p, size_t k) { bytes.append(p, k); });
        if (!msg->mutable_header()->MergeFromString(bytes)) return fail();
      } else if (field == 3 && sink->Take(*msg, v)) {
        in.Each(v, [&](const char* p, size_t k) { sink->Append(p, k); });
      } else if (field == 3) {
        std::string* data = msg->mutable_data();
        data->clear();
        data->reserve(static_cast<size_t>(v));
        in.Each(v, [&](const char* p, size_t k) { data->append(p, k); });
      } else {
        in.Each(v, [](const char*, size_t) {});  // an unknown length-delimited field
      }
    }
    buffer->Clear();
    return Status::OK;
  }
};

}  // namespace grpc
