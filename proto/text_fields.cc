// The request (de)serializers declared in text_fields.h: scan the wire bytes for text that is not UTF-8, then parse.
#include "proto/text_fields.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "common/utf8.h"
#include "reel/v1/coordinator.pb.h"
#include "reel/v1/types.pb.h"
#include "reel/v1/worker.pb.h"

namespace reel::wire {

namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;

// Walks one message's fields; true once `problem` is set. Stops quietly at anything malformed: the parser that
// runs next refuses it with its own status.
bool Scan(CodedInputStream& in, const Descriptor& d, const std::string& root, const std::string& prefix, int depth,
          std::string* problem) {
  if (depth > 100) return false;  // protobuf's own recursion limit
  for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
    const FieldDescriptor* f = d.FindFieldByNumber(static_cast<int>(tag >> 3));
    const bool delimited = WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (!f || !delimited || (f->type() != FieldDescriptor::TYPE_STRING && f->type() != FieldDescriptor::TYPE_MESSAGE)) {
      if (!WireFormatLite::SkipField(&in, tag)) return false;
      continue;
    }
    uint32_t len = 0;
    if (!in.ReadVarint32(&len)) return false;
    if (f->type() == FieldDescriptor::TYPE_STRING) {
      std::string text;
      if (!in.ReadString(&text, static_cast<int>(len))) return false;
      *problem = Utf8Problem(root + " field " + prefix + f->name(), text);
      if (!problem->empty()) return true;
      continue;
    }
    const auto limit = in.PushLimit(static_cast<int>(len));
    if (Scan(in, *f->message_type(), root, prefix + f->name() + ".", depth + 1, problem)) return true;
    if (!in.ConsumedEntireMessage() && in.BytesUntilLimit() != 0) return false;
    in.PopLimit(limit);
  }
  return false;
}

std::string ScanStream(const google::protobuf::Message& prototype, CodedInputStream& in, int size) {
  in.SetTotalBytesLimit(size);  // a length field cannot make ReadString reserve more than the message holds
  std::string problem;
  Scan(in, *prototype.GetDescriptor(), prototype.GetDescriptor()->full_name(), "", 0, &problem);
  return problem;
}

}  // namespace

std::string FindInvalidText(const google::protobuf::Message& prototype, const std::string& bytes) {
  google::protobuf::io::ArrayInputStream stream(bytes.data(), static_cast<int>(bytes.size()));
  CodedInputStream in(&stream);
  return ScanStream(prototype, in, static_cast<int>(bytes.size()));
}

std::vector<std::string> TextCheckedRequests() {
#define REEL_NAME(T) reel::v1::T::descriptor()->full_name(),
  return {REEL_TEXT_CHECKED_REQUESTS(REEL_NAME)};
#undef REEL_NAME
}

grpc::Status DeserializeChecked(grpc::ByteBuffer* buffer, google::protobuf::Message* msg) {
  if (buffer == nullptr) return {grpc::StatusCode::INTERNAL, msg->GetDescriptor()->full_name() + ": no payload"};
  const size_t size = buffer->Length();
  std::string problem;
  {
    grpc::ProtoBufferReader reader(buffer);
    if (!reader.status().ok()) return reader.status();
    CodedInputStream in(&reader);
    problem = ScanStream(*msg, in, static_cast<int>(size));
  }
  if (!problem.empty()) {
    buffer->Clear();
    return {grpc::StatusCode::INVALID_ARGUMENT, problem};
  }
  grpc::Status st = grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(buffer, msg);
  if (!st.ok() && st.error_message().empty())
    st = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      msg->GetDescriptor()->full_name() + ": " + std::to_string(size) +
                          " bytes that do not parse as this message (a malformed or foreign request)");
  return st;
}

}  // namespace reel::wire

namespace grpc {

#define REEL_DEFINE(T)                                                                                 \
  Status SerializationTraits<reel::v1::T, void>::Serialize(const reel::v1::T& msg, ByteBuffer* bb,     \
                                                           bool* own_buffer) {                         \
    return GenericSerialize<ProtoBufferWriter, reel::v1::T>(msg, bb, own_buffer);                      \
  }                                                                                                    \
  Status SerializationTraits<reel::v1::T, void>::Deserialize(ByteBuffer* buffer, reel::v1::T* msg) {   \
    return reel::wire::DeserializeChecked(buffer, msg);                                                \
  }
REEL_TEXT_CHECKED_REQUESTS(REEL_DEFINE)
#undef REEL_DEFINE

Status SerializationTraits<google::protobuf::MessageLite, void>::Serialize(const google::protobuf::MessageLite& msg,
                                                                            ByteBuffer* bb, bool* own_buffer) {
  return GenericSerialize<ProtoBufferWriter, google::protobuf::MessageLite>(msg, bb, own_buffer);
}

Status SerializationTraits<google::protobuf::MessageLite, void>::Deserialize(ByteBuffer* buffer,
                                                                              google::protobuf::MessageLite* msg) {
  if (auto* full = dynamic_cast<google::protobuf::Message*>(msg)) return reel::wire::DeserializeChecked(buffer, full);
  return GenericDeserialize<ProtoBufferReader, google::protobuf::MessageLite>(buffer, msg);
}

}  // namespace grpc
