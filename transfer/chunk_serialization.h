// How a TensorChunk goes on the wire without copying its bytes again: the chunk's data string is handed to gRPC
// as a slice it owns (protobuf's own serializer would copy every chunk into a new buffer). The bytes on the wire
// are the ordinary protobuf encoding, so any reel.v1 client reads them. Force-included (-include) into every
// translation unit that links reel_proto, so the generated code and Reel's code see the same specialization.
#pragma once

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <string>
#include <utility>

#include "reel/v1/types.pb.h"

namespace grpc {

template <>
class SerializationTraits<reel::v1::TensorChunk, void> {
 public:
  static Status Serialize(const reel::v1::TensorChunk& msg, ByteBuffer* bb, bool* own_buffer) {
    constexpr size_t kZeroCopyBytes = 64 << 10;
    if (msg.data().size() < kZeroCopyBytes)
      return GenericSerialize<ProtoBufferWriter, reel::v1::TensorChunk>(msg, bb, own_buffer);
    // Fields 1 (header) and 2 (offset) as protobuf writes them, then field 3's tag and length, then the bytes.
    reel::v1::TensorChunk head;
    if (msg.has_header()) *head.mutable_header() = msg.header();
    head.set_offset(msg.offset());
    std::string prefix = head.SerializeAsString();
    prefix.push_back(static_cast<char>((3 << 3) | 2));
    for (uint64_t n = msg.data().size();; n >>= 7) {
      if (n < 0x80) {
        prefix.push_back(static_cast<char>(n));
        break;
      }
      prefix.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    // The writer builds a chunk per Write and drops it after: its bytes move into the slice, freed by gRPC.
    auto* owned = new std::string(std::move(*const_cast<reel::v1::TensorChunk&>(msg).mutable_data()));
    Slice slices[2] = {Slice(prefix.data(), prefix.size()),
                       Slice(owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); },
                             owned)};
    ByteBuffer tmp(slices, 2);
    bb->Swap(&tmp);
    *own_buffer = true;
    return Status::OK;
  }

  static Status Deserialize(ByteBuffer* buffer, reel::v1::TensorChunk* msg) {
    return GenericDeserialize<ProtoBufferReader, reel::v1::TensorChunk>(buffer, msg);
  }
};

}  // namespace grpc
