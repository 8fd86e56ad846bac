// Issue 19's abuse cases against a live coordinator and the `reel` CLI: text that is not UTF-8 in every field
// through the API and the CLI, 10 KB ids and control characters in what is echoed and shown, statuses that always
// carry a message, and a token that is never sent in clear off loopback (a fake server on 127.0.0.2, which the
// client is told to treat as remote, records what arrives).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "reel/v1/coordinator.grpc.pb.h"
#include "tests/cluster_harness.h"
#include "tests/fake_server.h"
#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
namespace v1 = reel::v1;
using testing::CommandResult;
using testing::Quote;
using testing::RunCommand;

const char* const kRemote = "REEL_TEST_NOT_LOOPBACK=127.0.0.2 ";

template <typename Ctx>
void Deadline(Ctx& ctx, int seconds = 10) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// Lines of `text` that are not empty.
std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

class AbuseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new testing::ScratchDir("abuse");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
    for (const char* v : {"REEL_TLS_CERT", "REEL_TLS_KEY", "REEL_TLS_CA", "REEL_TOKEN_FILE", "GRPC_VERBOSITY"})
      ::unsetenv(v);
    std::ofstream(*scratch_ / "token") << "0123456789abcdef0123456789abcdef\n";
    fs::permissions(*scratch_ / "token", fs::perms::owner_read | fs::perms::owner_write);
    cluster_ = new testing::Cluster(REEL_BINARY, *scratch_ / "cluster");
    ASSERT_TRUE(cluster_->StartCoordinator()) << cluster_->Logs();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete scratch_;
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
  }

  static CommandResult Reel(const std::string& args, const std::string& env = "") {
    return RunCommand(env + std::string(REEL_BINARY) + " " + args);
  }
  static std::string Token() { return (*scratch_ / "token").string(); }

  // One unary call with these request bytes, as any client could send them.
  static grpc::Status Raw(const std::string& method, const std::string& bytes) {
    grpc::GenericStub stub(ChannelTo(cluster_->address()));
    grpc::ClientContext ctx;
    Deadline(ctx);
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status st) { done.set_value(st); });
    return done.get_future().get();
  }

  // GetJob, CancelJob, WatchJob and DownloadOutput with `id`: each call's status.
  static std::vector<std::pair<std::string, grpc::Status>> EveryIdCall(const std::string& id) {
    auto& stub = cluster_->stub();
    v1::GetJobRequest req;
    req.set_job_id(id);
    std::vector<std::pair<std::string, grpc::Status>> out;
    using Unary = grpc::Status (v1::Coordinator::Stub::*)(grpc::ClientContext*, const v1::GetJobRequest&, v1::Job*);
    for (const auto& [name, call] : {std::pair<const char*, Unary>{"GetJob", &v1::Coordinator::Stub::GetJob},
                                     {"CancelJob", &v1::Coordinator::Stub::CancelJob}}) {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::Job j;
      out.emplace_back(name, (stub.*call)(&ctx, req, &j));
    }
    auto streamed = [&](const char* name, auto open, auto item) {
      grpc::ClientContext ctx;
      Deadline(ctx);
      auto reader = (stub.*open)(&ctx, req);
      while (reader->Read(&item)) {
      }
      out.emplace_back(name, reader->Finish());
    };
    streamed("WatchJob", &v1::Coordinator::Stub::WatchJob, v1::Job{});
    streamed("DownloadOutput", &v1::Coordinator::Stub::DownloadOutput, v1::TensorChunk{});
    return out;
  }

  static testing::ScratchDir* scratch_;
  static testing::Cluster* cluster_;
};
testing::ScratchDir* AbuseTest::scratch_ = nullptr;
testing::Cluster* AbuseTest::cluster_ = nullptr;

TEST_F(AbuseTest, TextThatIsNotUtf8IsInvalidArgumentNamingTheFieldAndOffsetInEveryField) {
  for (const char* field : {"model", "prompt", "negative_prompt"}) {
    SCOPED_TRACE(field);
    v1::SubmitJobRequest req;
    auto* s = req.mutable_spec();
    s->set_model("tiny");
    s->set_prompt("a red fox");
    const std::string bad = "ok \xff";
    if (std::string(field) == "model") s->set_model(bad);
    if (std::string(field) == "prompt") s->set_prompt(bad);
    if (std::string(field) == "negative_prompt") s->set_negative_prompt(bad);
    std::string bytes;
    req.AppendPartialToString(&bytes);
    const grpc::Status st = Raw("/reel.v1.Coordinator/SubmitJob", bytes);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_EQ(st.error_message(), "reel.v1.SubmitJobRequest field spec." + std::string(field) +
                                      ": not valid UTF-8 (byte 0xff at offset 3 of 4); accepted UTF-8 text");
  }
  for (const auto& [method, st] : EveryIdCall("job-1\xc3")) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(st.error_message(),
              "reel.v1.GetJobRequest field job_id: not valid UTF-8 (byte 0xc3 at offset 5 of 6); accepted UTF-8 text")
        << method;
  }
  // Nothing was queued, and protobuf logged nothing on the coordinator's side.
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::ListJobsResponse jobs;
  ASSERT_TRUE(cluster_->stub().ListJobs(&ctx, v1::ListJobsRequest{}, &jobs).ok());
  for (const auto& j : jobs.jobs()) EXPECT_NE(j.spec().prompt(), "ok \xff");
  EXPECT_EQ(cluster_->coordinator().Log().find("String field"), std::string::npos) << cluster_->coordinator().Log();
}

TEST_F(AbuseTest, NoStatusLeavesWithAnEmptyMessage) {
  const grpc::Status unknown = Raw("/reel.v1.Coordinator/NoSuchMethod", "");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(unknown.error_message(),
            "/reel.v1.Coordinator/NoSuchMethod: UNIMPLEMENTED (this server has no such method)");
  const grpc::Status malformed = Raw("/reel.v1.Coordinator/GetJob", std::string("\x0a\x09\x01", 3));
  EXPECT_EQ(malformed.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(malformed.error_message().find("reel.v1.GetJobRequest: 3 bytes that do not parse"), std::string::npos);
}

TEST_F(AbuseTest, UnknownIdsOf10KBAndControlCharactersAreEchoedEscapedAndCut) {
  const std::string id = "job-\n\x1b[2J" + std::string(10 << 10, 'x');
  for (const auto& [method, st] : EveryIdCall(id)) {
    SCOPED_TRACE(method);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message().substr(0, 200);
    EXPECT_LT(st.error_message().size(), 300u);
    EXPECT_EQ(st.error_message().find_first_of("\n\x1b"), std::string::npos);
    EXPECT_EQ(st.error_message().rfind("job 'job-\\x0a\\x1b[2Jxxx", 0), 0u) << st.error_message();
    EXPECT_NE(st.error_message().find("… (10249 bytes)"), std::string::npos) << st.error_message();
  }
}

TEST_F(AbuseTest, TheCliRefusesTextThatIsNotUtf8AsGenerateDoesWithExitCode2) {
  const std::string at = " --coordinator " + cluster_->address();
  const std::string out = Quote((*scratch_ / "fox.mp4").string());
  const std::string shape = " --frames 9 --height 64 --width 64 --steps 2";
  struct Case {
    std::string args, want;
  };
  const std::vector<Case> cases = {
      {"--model tiny --prompt $'a red \\xff fox'", "--prompt: not valid UTF-8 (byte 0xff at offset 6 of 11)"},
      {"--model tiny --prompt fox --negative-prompt $'\\xc3'",
       "--negative-prompt: not valid UTF-8 (byte 0xc3 at offset 0"},
      {"--model $'tiny\\xfe' --prompt fox", "--model: not valid UTF-8 (byte 0xfe at offset 4 of 5)"},
  };
  for (const auto& c : cases) {
    for (const std::string& command : {"submit" + at, "generate --out " + out}) {
      SCOPED_TRACE(command + " " + c.args);
      // bash for $'...'; popen's sh may not have it
      const CommandResult r =
          RunCommand("bash -c " + Quote(std::string(REEL_BINARY) + " " + command + " " + c.args + shape));
      EXPECT_EQ(r.exit_code, 2) << r.output;
      ASSERT_EQ(Lines(r.output).size(), 1u) << r.output;
      EXPECT_NE(r.output.find("reel: error: " + c.want), std::string::npos) << r.output;
    }
  }
  for (const char* command : {"job", "cancel"}) {
    const CommandResult r =
        RunCommand("bash -c " + Quote(std::string(REEL_BINARY) + " " + command + at + " $'j\\xff'"));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(Lines(r.output).size(), 1u) << r.output;
    EXPECT_NE(r.output.find("job id: not valid UTF-8 (byte 0xff at offset 1 of 2)"), std::string::npos) << r.output;
  }
  EXPECT_FALSE(fs::exists(*scratch_ / "fox.mp4"));
}

TEST_F(AbuseTest, StoredTextIsShownWithItsControlCharactersEscaped) {
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  s->set_model("tiny");
  s->set_prompt("a fox\x1b]0;owned\x07\x1b[2J\xc2\x9b" "31m");
  s->set_frames(9);
  s->set_height(64);
  s->set_width(64);
  s->set_steps(2);
  grpc::ClientContext ctx;
  Deadline(ctx);
  v1::SubmitJobResponse resp;
  ASSERT_TRUE(cluster_->stub().SubmitJob(&ctx, req, &resp).ok());
  const CommandResult r = Reel("job " + resp.job_id() + " --coordinator " + cluster_->address());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"a fox\\x1b]0;owned\\x07\\x1b[2J\\xc2\\x9b31m\""), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos);
  EXPECT_EQ(r.output.find("\xc2\x9b"), std::string::npos);
  const CommandResult list = Reel("jobs --coordinator " + cluster_->address());
  EXPECT_EQ(list.output.find('\x1b'), std::string::npos) << list.output;
}

// "Off loopback" is 127.0.0.2 told to be remote ($REEL_TEST_NOT_LOOPBACK): nothing leaves the machine.
TEST_F(AbuseTest, ClientsAndWorkersRefuseToSendTheTokenInClearOffLoopbackBeforeDialling) {
  testing::RecordingServer fake;
  ASSERT_NE(fake.port(), 0) << "cannot listen on 127.0.0.2";
  const CommandResult jobs = Reel("jobs --coordinator " + fake.address() + " --token-file " + Token(), kRemote);
  EXPECT_EQ(jobs.exit_code, 2) << jobs.output;
  EXPECT_EQ(Lines(jobs.output).size(), 1u) << jobs.output;
  EXPECT_NE(jobs.output.find("reel: error: " + fake.address() + ": not a loopback address, and a bearer token goes "
                             "there only over TLS"),
            std::string::npos)
      << jobs.output;
  const CommandResult env_token =
      Reel("submit --model tiny --prompt fox --coordinator " + fake.address(),
           kRemote + ("REEL_TOKEN_FILE=" + Token() + " "));
  EXPECT_EQ(env_token.exit_code, 2) << env_token.output;

  const CommandResult worker = Reel("worker --coordinator " + fake.address() +
                                        " --listen 127.0.0.1:0 --threads 1 --token-file " + Token(),
                                    kRemote);
  EXPECT_EQ(worker.exit_code, 2) << worker.output;
  EXPECT_NE(worker.output.find("reel: error: --coordinator " + fake.address() + ": not a loopback address"),
            std::string::npos)
      << worker.output;
  EXPECT_EQ(fake.connections(), 0);
  EXPECT_EQ(fake.received(), "");
}

}  // namespace
}  // namespace reel
