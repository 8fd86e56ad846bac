// The decisions behind issue 19, in one process: the UTF-8 rule for text (the wire check and its field names,
// Printable and TerminalText), statuses that always carry a message, and the client-side token policy.
#include <gtest/gtest.h>

#include <google/protobuf/descriptor.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <cstdlib>
#include <set>

#include "common/printable.h"
#include "common/utf8.h"
#include "reel/v1/coordinator.pb.h"
#include "reel/v1/worker.pb.h"
#include "security/transport_security.h"
#include "transfer/server_status.h"

namespace reel {
namespace {

namespace v1 = reel::v1;

TEST(Utf8, OffsetsOfTheFirstBadByte) {
  EXPECT_FALSE(InvalidUtf8Offset("a red fox"));
  EXPECT_FALSE(InvalidUtf8Offset("ein Fuchs \xc3\xa4 \xe7\x8b\x90 \xf0\x9f\xa6\x8a"));
  EXPECT_FALSE(InvalidUtf8Offset(std::string("nul\0ok", 6)));
  EXPECT_EQ(InvalidUtf8Offset("abc\xff"), 3u);
  EXPECT_EQ(InvalidUtf8Offset("\xc0\xaf"), 0u);          // overlong
  EXPECT_EQ(InvalidUtf8Offset("ab\xed\xa0\x80"), 2u);    // a surrogate
  EXPECT_EQ(InvalidUtf8Offset("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(InvalidUtf8Offset("ok\xe2\x82"), 2u);        // cut short
  EXPECT_EQ(Utf8Problem("--prompt", "a red \xff fox"),
            "--prompt: not valid UTF-8 (byte 0xff at offset 6 of 11); accepted UTF-8 text");
  EXPECT_EQ(Utf8Problem("--prompt", "fine"), "");
}

TEST(Printable, EscapesC0C1AndDelAndKeepsText) {
  EXPECT_EQ(Printable("a\x1b[2Jb\n"), "a\\x1b[2Jb\\x0a");
  EXPECT_EQ(Printable("csi \xc2\x9b" "31m"), "csi \\xc2\\x9b31m");  // C1 CSI
  EXPECT_EQ(Printable("caf\xc3\xa9 \x7f"), "caf\xc3\xa9 \\x7f");
  const std::string id(10 << 10, 'x');
  EXPECT_EQ(Printable(id), std::string(96, 'x') + "… (10240 bytes)");
  const std::string prompt = std::string(500, 'p') + "\x1b]0;owned\x07";
  EXPECT_EQ(TerminalText(prompt), std::string(500, 'p') + "\\x1b]0;owned\\x07");  // escaped, never cut
}

// A message's wire bytes as a foreign client would send them (protobuf writes invalid UTF-8 as it is).
template <typename M>
std::string Wire(M msg) {
  std::string bytes;
  msg.AppendPartialToString(&bytes);
  return bytes;
}

TEST(TextFields, InvalidUtf8IsNamedByFieldPathAndOffset) {
  v1::SubmitJobRequest submit;
  submit.mutable_spec()->set_model("tiny");
  submit.mutable_spec()->set_prompt("a red \xff fox");
  EXPECT_EQ(wire::FindInvalidText(submit, Wire(submit)),
            "reel.v1.SubmitJobRequest field spec.prompt: not valid UTF-8 (byte 0xff at offset 6 of 11); accepted "
            "UTF-8 text");
  submit.mutable_spec()->set_prompt("fine");
  submit.mutable_spec()->set_negative_prompt("\xc3");
  EXPECT_NE(wire::FindInvalidText(submit, Wire(submit)).find("field spec.negative_prompt: "), std::string::npos);
  submit.mutable_spec()->set_negative_prompt("");
  submit.mutable_spec()->set_model("tiny\xfe");
  EXPECT_NE(wire::FindInvalidText(submit, Wire(submit)).find("field spec.model: "), std::string::npos);
  submit.mutable_spec()->set_model("tiny");
  submit.mutable_spec()->set_image(std::string("\xff\xd8\xff", 3));  // bytes, not text: never checked
  EXPECT_EQ(wire::FindInvalidText(submit, Wire(submit)), "");

  v1::GetJobRequest get;
  get.set_job_id(std::string(10 << 10, 'x') + "\x80");
  EXPECT_NE(wire::FindInvalidText(get, Wire(get)).find("field job_id: not valid UTF-8 (byte 0x80 at offset 10240"),
            std::string::npos);
  // Malformed bytes are left to protobuf's parser, which refuses them.
  EXPECT_EQ(wire::FindInvalidText(get, std::string("\x0a\xff\xff\xff\xff\x0f", 6)), "");
}

TEST(TextFields, TheDeserializerRefusesWithInvalidArgumentAndAMessage) {
  v1::SubmitJobRequest bad;
  bad.mutable_spec()->set_prompt("\xff");
  grpc::ByteBuffer buffer;
  bool own = false;
  // Serialized as a foreign client would: protobuf's generic path, which sends the bytes as they are.
  ASSERT_TRUE((grpc::GenericSerialize<grpc::ProtoBufferWriter, v1::SubmitJobRequest>(bad, &buffer, &own).ok()));
  const grpc::ByteBuffer copy(buffer);
  const std::string want =
      "reel.v1.SubmitJobRequest field spec.prompt: not valid UTF-8 (byte 0xff at offset 0 of 1); accepted UTF-8 text";
  v1::SubmitJobRequest parsed;
  // As a streaming handler deserializes (the message's own type)...
  const grpc::Status st = grpc::SerializationTraits<v1::SubmitJobRequest>::Deserialize(&buffer, &parsed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), want);
  // ...and as unary handlers and stubs do (the generated code names MessageLite).
  grpc::ByteBuffer again(copy);
  google::protobuf::MessageLite* lite = &parsed;
  const grpc::Status unary = grpc::SerializationTraits<google::protobuf::MessageLite>::Deserialize(&again, lite);
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(unary.error_message(), want);

  grpc::Slice junk(std::string("\x0a\x05\x01", 3));
  grpc::ByteBuffer malformed(&junk, 1);
  v1::GetJobRequest get;
  const grpc::Status st2 = grpc::SerializationTraits<v1::GetJobRequest>::Deserialize(&malformed, &get);
  EXPECT_EQ(st2.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st2.error_message().find("reel.v1.GetJobRequest: 3 bytes that do not parse"), std::string::npos);
}

// Every request a Reel server receives goes through the check: a new RPC must join REEL_TEXT_CHECKED_REQUESTS.
TEST(TextFields, EveryRequestOfBothServicesIsChecked) {
  const auto list = wire::TextCheckedRequests();
  const std::set<std::string> checked(list.begin(), list.end());
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* service : {"reel.v1.Coordinator", "reel.v1.Worker"}) {
    const auto* s = pool->FindServiceByName(service);
    ASSERT_NE(s, nullptr) << service;
    for (int i = 0; i < s->method_count(); ++i)
      EXPECT_TRUE(checked.count(s->method(i)->input_type()->full_name()))
          << s->method(i)->full_name() << " takes " << s->method(i)->input_type()->full_name();
  }
}

TEST(ServerStatus, AnEmptyMessageIsFilledInWithTheMethodAndCode) {
  EXPECT_TRUE(WithMessage(grpc::Status::OK, "/m").ok());
  const grpc::Status kept(grpc::StatusCode::NOT_FOUND, "job 'x': no such job");
  EXPECT_EQ(WithMessage(kept, "/m").error_message(), kept.error_message());
  EXPECT_EQ(WithMessage({grpc::StatusCode::INTERNAL, ""}, "/reel.v1.Coordinator/GetJob").error_message(),
            "/reel.v1.Coordinator/GetJob: INTERNAL (no detail given)");
  EXPECT_EQ(WithMessage({grpc::StatusCode::UNIMPLEMENTED, ""}, "/reel.v1.Coordinator/Nope").error_message(),
            "/reel.v1.Coordinator/Nope: UNIMPLEMENTED (this server has no such method)");
}

TEST(TokenPolicy, ATokenTravelsOverTlsOrToLoopbackOnly) {
  EXPECT_EQ(TargetHost("10.77.0.2:7070"), "10.77.0.2");
  EXPECT_EQ(TargetHost("dns:///coord-host:7070"), "coord-host");
  EXPECT_EQ(TargetHost("ipv4:127.0.0.1:7070"), "127.0.0.1");
  EXPECT_EQ(TargetHost("[::1]:7070"), "[::1]");
  EXPECT_EQ(TargetHost("dns://8.8.8.8/localhost:7070"), "");
  for (const char* remote : {"10.77.0.2:7070", "coord-host:7070", "dns:///coord-host:7070", "[fe80::1]:7070",
                             "0.0.0.0:7070", "dns://8.8.8.8/localhost:7070"}) {
    SCOPED_TRACE(remote);
    EXPECT_NE(TokenInClearRefusal(remote, /*tls=*/false, /*token=*/true), "");
    EXPECT_EQ(TokenInClearRefusal(remote, /*tls=*/true, /*token=*/true), "");
    EXPECT_EQ(TokenInClearRefusal(remote, /*tls=*/false, /*token=*/false), "");
  }
  for (const char* local : {"127.0.0.1:7070", "127.1.2.3:7070", "localhost:7070", "[::1]:7070", "ipv4:127.0.0.1:1"})
    EXPECT_EQ(TokenInClearRefusal(local, false, true), "") << local;
  EXPECT_EQ(TokenInClearRefusal("10.77.0.2:7070\n", false, true),
            "10.77.0.2:7070\\x0a: not a loopback address, and a bearer token goes there only over TLS (it would cross "
            "the network in clear); give --tls-cert, --tls-key and --tls-ca (or $REEL_TLS_*) as well, or use a "
            "loopback address (127.0.0.1, localhost, [::1])");
  // The tests' stand-in for a remote host: a loopback address the policy is told to treat as remote.
  ::setenv("REEL_TEST_NOT_LOOPBACK", "127.0.0.2", 1);
  EXPECT_NE(TokenInClearRefusal("127.0.0.2:7070", false, true), "");
  EXPECT_EQ(TokenInClearRefusal("127.0.0.1:7070", false, true), "");
  ::unsetenv("REEL_TEST_NOT_LOOPBACK");
  EXPECT_EQ(TokenInClearRefusal("127.0.0.2:7070", false, true), "");
}

TEST(TokenPolicy, AClientChannelThatWouldCarryTheTokenInClearIsRefusedBeforeDialling) {
  TransportSecurity s;
  s.token = "0123456789abcdef0123456789abcdef";
  SetClientSecurity(s);
  grpc::ChannelArguments args;
  try {
    CreateClientChannel("192.0.2.1:7070", args);  // TEST-NET-1: refused before any packet
    ADD_FAILURE() << "a channel was made";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("192.0.2.1:7070: not a loopback address"), std::string::npos);
  }
  EXPECT_NE(ClientChannelRefusal("192.0.2.1:7070"), "");
  EXPECT_EQ(ClientChannelRefusal("127.0.0.1:7070"), "");
  EXPECT_NE(CreateClientChannel("127.0.0.1:7070", args), nullptr);  // the loopback exception
  SetClientSecurity(TransportSecurity{});
}

}  // namespace
}  // namespace reel
