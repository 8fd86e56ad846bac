// Requests whose text is not UTF-8 are refused with INVALID_ARGUMENT naming the field and the byte offset, before
// protobuf parses them. Protobuf refuses such a proto3 string itself, but then gRPC answers INTERNAL with an empty
// message and protobuf logs an error per request; here the bytes are scanned first (the message's descriptor says
// which fields are text), and only a message that passes is parsed. gRPC's generated code deserializes unary calls
// (requests and responses) through SerializationTraits<MessageLite> and streaming calls through the message's own
// type, so both are specialized: MessageLite for every unary call, and each request message of a streaming method
// (REEL_TEXT_CHECKED_REQUESTS, every request of both services; text_fields_test checks the list is complete).
// Force-included (-include) into every translation unit that links reel_proto, as chunk_serialization.h is, so the
// generated service code and Reel's code see the same specializations.
#pragma once

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>

#include <string>
#include <vector>

namespace google::protobuf {
class Message;
class MessageLite;
}

#define REEL_TEXT_CHECKED_REQUESTS(X)                                                                            \
  X(RegisterRequest) X(HeartbeatRequest) X(LeaveRequest) X(SubmitJobRequest) X(GetJobRequest) X(ListJobsRequest) \
  X(ListWorkersRequest) X(PlanJobRequest) X(TuneClusterRequest) X(LoadStagesRequest) X(UnloadStagesRequest)      \
  X(RunStageRequest) X(BranchRequest) X(SequenceShareRequest) X(FetchTensorRequest) X(TuneRequest)             \
  X(ReleaseJobRequest)

namespace reel::v1 {
#define REEL_DECLARE_MESSAGE(T) class T;
REEL_TEXT_CHECKED_REQUESTS(REEL_DECLARE_MESSAGE)
#undef REEL_DECLARE_MESSAGE
}  // namespace reel::v1

namespace reel::wire {

// "reel.v1.SubmitJobRequest field spec.prompt: not valid UTF-8 (byte 0xff at offset 3 of 9); accepted UTF-8 text"
// for the first text field (nested messages included) that is not UTF-8 in `bytes` (the message's wire form);
// "" when there is none or the bytes do not parse far enough to tell (protobuf then refuses them).
std::string FindInvalidText(const google::protobuf::Message& prototype, const std::string& bytes);

// The full names of the messages the specializations below cover.
std::vector<std::string> TextCheckedRequests();

grpc::Status DeserializeChecked(grpc::ByteBuffer* buffer, google::protobuf::Message* msg);

}  // namespace reel::wire

namespace grpc {

#define REEL_SPECIALIZE(T)                                                                   \
  template <>                                                                                \
  class SerializationTraits<reel::v1::T, void> {                                             \
   public:                                                                                   \
    static Status Serialize(const reel::v1::T& msg, ByteBuffer* bb, bool* own_buffer);       \
    static Status Deserialize(ByteBuffer* buffer, reel::v1::T* msg);                         \
  };
REEL_TEXT_CHECKED_REQUESTS(REEL_SPECIALIZE)
#undef REEL_SPECIALIZE

// Unary calls: what the generated stubs and handlers name as the base type of every request and response. A full
// message (with a descriptor) is checked as above; anything else is parsed as gRPC would.
template <>
class SerializationTraits<google::protobuf::MessageLite, void> {
 public:
  static Status Serialize(const google::protobuf::MessageLite& msg, ByteBuffer* bb, bool* own_buffer);
  static Status Deserialize(ByteBuffer* buffer, google::protobuf::MessageLite* msg);
};

}  // namespace grpc
