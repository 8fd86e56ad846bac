// Limits and security as an operator deploys them: real coordinator and worker processes on loopback, real mutual
// TLS with certificates openssl makes at test time (a CA, node and client certificates, and a client certificate
// from an untrusted CA), real bearer tokens. Every refusal is checked for its status and for leaving the state as it
// was; a full job runs across a coordinator and two workers over mTLS with a token.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include <fmt/format.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "reel/v1/coordinator.grpc.pb.h"
#include "reel/v1/worker.grpc.pb.h"
#include "security/token.h"
#include "security/transport_security.h"
#include "tests/cluster_harness.h"
#include "tests/fake_server.h"
#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
namespace v1 = reel::v1;
using testing::Cluster;
using testing::CommandResult;
using testing::Process;
using testing::Quote;
using testing::RunCommand;
using testing::ScratchDir;
using testing::WaitFor;

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// How a test client connects: PEM text (no checks, so an untrusted certificate can be presented) and a token.
struct Creds {
  std::string cert, key, ca, token;
  bool tls = true;
};

std::shared_ptr<grpc::Channel> Channel(const std::string& address, const Creds& c) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (c.tls) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = c.ca;
    o.pem_private_key = c.key;
    o.pem_cert_chain = c.cert;
    creds = grpc::SslCredentials(o);
    if (!c.token.empty()) creds = grpc::CompositeChannelCredentials(creds, TokenCredentials(c.token));
  } else if (!c.token.empty()) {
    // As CreateClientChannel makes it: local credentials (loopback peers only) carry the token without TLS.
    creds = grpc::CompositeChannelCredentials(grpc::experimental::LocalCredentials(LOCAL_TCP),
                                              TokenCredentials(c.token, GRPC_SECURITY_NONE));
  }
  grpc::ChannelArguments args;
  static std::atomic<int> next{0};
  args.SetInt("reel-test-channel", ++next);  // its own connection, never one made with other credentials
  return grpc::CreateCustomChannel(address, creds, args);
}

template <typename Ctx>
void Deadline(Ctx& ctx, int seconds = 5) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// grpc.health.v1.Health/Check over `channel`: the call's status.
grpc::Status Health(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  Deadline(ctx);
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status st) { done.set_value(st); });
  return done.get_future().get();
}

v1::SubmitJobRequest SmallJob(const std::string& prompt = "a red fox") {
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  s->set_model("tiny");
  s->set_prompt(prompt);
  s->set_frames(9);
  s->set_height(64);
  s->set_width(64);
  s->set_steps(2);
  s->set_guidance(6);
  return req;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("security");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
    for (const char* v : {"REEL_TLS_CERT", "REEL_TLS_KEY", "REEL_TLS_CA", "REEL_TOKEN_FILE"}) ::unsetenv(v);
    // A CA with node (server and client) and CLI client certificates, and an untrusted CA with its own client.
    const fs::path pki = *scratch_ / "pki";
    fs::create_directories(pki);
    const std::string script = R"(set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=reel-test-ca
openssl req -x509 $ec -keyout evil-ca.key -out evil-ca.pem -days 2 -subj /CN=untrusted-ca
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > ext.cnf
for n in node:ca client:ca evil:evil-ca; do
  name=${n%%:*}; ca=${n##*:}
  openssl req $ec -keyout $name.key -out $name.csr -subj /CN=reel-$name
  openssl x509 -req -in $name.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -out $name.pem -days 2 -extfile ext.cnf
done
openssl rand -hex 32 > token
openssl rand -hex 32 > wrong-token
chmod 600 token wrong-token *.key
)";
    const CommandResult r = RunCommand("cd " + Quote(pki.string()) + " && /bin/sh -c " + Quote(script));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const char* f : {"ca.pem", "node.pem", "node.key", "client.pem", "client.key", "evil.pem", "evil.key"})
      pem_[f] = Read(pki / f);
    token_ = Read(pki / "token");
    wrong_token_ = Read(pki / "wrong-token");
    while (!token_.empty() && token_.back() == '\n') token_.pop_back();
    while (!wrong_token_.empty() && wrong_token_.back() == '\n') wrong_token_.pop_back();
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = scratch_->path() / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    SetClientSecurity(TransportSecurity{});
    cluster_ = std::make_unique<Cluster>(REEL_BINARY, dir_);
  }
  void TearDown() override {
    if (HasFailure()) {
      std::cerr << cluster_->Logs();
      for (const auto& p : extra_logs_) std::cerr << "--- " << p.string() << "\n" << Read(p);
    }
    cluster_.reset();
    SetClientSecurity(TransportSecurity{});
  }

  static fs::path Pki(const std::string& f) { return *scratch_ / "pki" / f; }
  static Creds Good() { return {pem_["client.pem"], pem_["client.key"], pem_["ca.pem"], token_}; }

  // What this process (the harness's stub) presents: the client certificate and the token.
  static void UseGoodClientSecurity() {
    SecurityFlags f;
    f.tls = {Pki("client.pem").string(), Pki("client.key").string(), Pki("ca.pem").string()};
    f.token_file = Pki("token").string();
    SetClientSecurity(LoadSecurity(f));
  }
  static std::vector<std::string> ServerFlags() {
    return {"--tls-cert", Pki("node.pem").string(), "--tls-key",    Pki("node.key").string(),
            "--tls-ca",   Pki("ca.pem").string(),   "--token-file", Pki("token").string()};
  }
  static std::string ClientFlags(const std::string& token_file = "token") {
    return fmt::format(" --tls-cert {} --tls-key {} --tls-ca {} --token-file {}", Quote(Pki("client.pem").string()),
                       Quote(Pki("client.key").string()), Quote(Pki("ca.pem").string()),
                       Quote(Pki(token_file).string()));
  }
  static CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

  // A worker with no coordinator to register with: its own server is what is tested.
  std::unique_ptr<Process> LoneWorker(const std::string& name, const std::vector<std::string>& extra,
                                      std::string* address) {
    std::vector<std::string> args = {REEL_BINARY, "worker",      "--coordinator", "127.0.0.1:1", "--name", name,
                                     "--threads", "1",           "--listen",      "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    const fs::path log = dir_ / (name + ".log");
    extra_logs_.push_back(log);
    auto p = std::make_unique<Process>(args, log);
    const std::regex serving("serving on (127\\.0\\.0\\.1:[0-9]+)");
    std::smatch m;
    EXPECT_TRUE(WaitFor(
        [&] {
          const std::string text = Read(log);
          if (!std::regex_search(text, m, serving)) return false;
          *address = m[1];
          return true;
        },
        30))
        << Read(log);
    return p;
  }

  // Jobs the coordinator knows, asked with good credentials.
  int JobCount(const Creds& c) {
    auto stub = v1::Coordinator::NewStub(Channel(cluster_->address(), c));
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::ListJobsResponse resp;
    EXPECT_TRUE(stub->ListJobs(&ctx, v1::ListJobsRequest{}, &resp).ok());
    return resp.jobs_size();
  }

  static ScratchDir* scratch_;
  static std::map<std::string, std::string> pem_;
  static std::string token_, wrong_token_;
  fs::path dir_;
  std::unique_ptr<Cluster> cluster_;
  std::vector<fs::path> extra_logs_;
};

ScratchDir* SecurityTest::scratch_ = nullptr;
std::map<std::string, std::string> SecurityTest::pem_;
std::string SecurityTest::token_, SecurityTest::wrong_token_;

TEST_F(SecurityTest, AJobRunsAcrossTwoWorkersOverMutualTlsWithAToken) {
  UseGoodClientSecurity();
  const fs::path placement = dir_ / "placement.json";
  std::ofstream(placement) << R"({"workers": [
      {"name": "enc", "stages": ["text_encoder", "vae_decoder"]},
      {"name": "dit", "stages": ["denoiser"]}]})";
  std::vector<std::string> flags = ServerFlags();
  std::vector<std::string> coordinator = {"--placement", placement.string(), "--metrics", "127.0.0.1:0"};
  coordinator.insert(coordinator.end(), flags.begin(), flags.end());
  ASSERT_TRUE(cluster_->StartCoordinator(coordinator));
  flags.insert(flags.end(), {"--metrics", "127.0.0.1:0"});
  cluster_->StartWorker("enc", flags);
  cluster_->StartWorker("dit", flags);
  ASSERT_TRUE(cluster_->WaitIdle(2));

  // The CLI with a client certificate and the token; the prompt is what must not leak into metrics.
  const std::string prompt = "a-secret-prompt-7f3a91";
  const fs::path out = dir_ / "fox.mp4";
  const CommandResult r = Reel("submit --coordinator " + cluster_->address() + ClientFlags() +
                               " --model tiny --prompt " + prompt +
                               " --frames 9 --height 64 --width 64 --steps 2 --wait --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(fs::file_size(out), 0u);
  const v1::Job j = cluster_->Job(r.output.substr(0, r.output.find('\n')));
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  // The text went enc -> dit and the latents dit -> enc: worker-to-worker fetches over TLS with the token.
  for (const auto& s : j.stages())
    EXPECT_EQ(s.worker(), s.stage() == v1::DENOISER ? "dit" : "enc") << v1::Stage_Name(s.stage());

  // The other client commands that talk to a coordinator take the same flags: `reel plan --coordinator` and
  // `reel top` with them reach it; without them they are refused in one line.
  const std::string at = " --coordinator " + cluster_->address();
  const CommandResult plan = Reel("plan --model tiny --frames 9 --height 64 --width 64 --steps 2 --json" + at +
                                  ClientFlags());
  EXPECT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("\"stages\""), std::string::npos) << plan.output;
  const CommandResult bare = Reel("plan --model tiny --frames 9 --height 64 --width 64 --steps 2" + at);
  EXPECT_NE(bare.exit_code, 0) << bare.output;
  EXPECT_NE(bare.output.find("give --tls-cert, --tls-key and --tls-ca"), std::string::npos) << bare.output;
  EXPECT_EQ(std::count(bare.output.begin(), bare.output.end(), '\n'), 1) << bare.output;
  const CommandResult top = Reel("top --once" + at + ClientFlags());
  EXPECT_EQ(top.exit_code, 0) << top.output;
  EXPECT_NE(top.output.find("enc"), std::string::npos) << top.output;

  // Health stays open to a client without the token (it still needs a certificate: the TLS layer asks first).
  Creds no_token = Good();
  no_token.token.clear();
  EXPECT_TRUE(Health(Channel(cluster_->address(), no_token)).ok());
  const v1::ListWorkersResponse workers = cluster_->Workers();
  ASSERT_EQ(workers.workers_size(), 2);
  for (const auto& w : workers.workers()) EXPECT_TRUE(Health(Channel(w.address(), no_token)).ok()) << w.name();

  // Neither the token, nor the prompt, nor where the key files are appears in any /metrics or any log.
  std::vector<int> ports = {std::stoi(Read(cluster_->data() / "metrics.address").substr(
      Read(cluster_->data() / "metrics.address").rfind(':') + 1))};
  for (const char* w : {"enc", "dit"}) {
    std::smatch m;
    const std::string log = cluster_->worker(w).Log();
    ASSERT_TRUE(std::regex_search(log, m, std::regex("metrics on port ([0-9]+)"))) << log;
    ports.push_back(std::stoi(m[1]));
  }
  for (int port : ports) {
    int status = 0;
    const std::string body = testing::HttpGet(port, "/metrics", &status);
    EXPECT_EQ(status, 200) << port;
    EXPECT_NE(body.find("reel_"), std::string::npos) << port << ": no Reel families scraped";
    for (const std::string& secret : {prompt, token_, (*scratch_ / "pki").string(), std::string("node.key")})
      EXPECT_EQ(body.find(secret), std::string::npos) << "port " << port << " exposes " << secret;
  }
  EXPECT_EQ(cluster_->Logs().find(token_), std::string::npos) << "a log holds the token";
}

TEST_F(SecurityTest, AuthenticationFailuresAreRefusedAndChangeNothing) {
  UseGoodClientSecurity();
  ASSERT_TRUE(cluster_->StartCoordinator(ServerFlags()));
  std::string worker;
  auto lone = LoneWorker("lone", ServerFlags(), &worker);
  ASSERT_FALSE(worker.empty());
  // One queued job (no worker registers), the state every refusal must leave as it was.
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SubmitJobResponse resp;
    ASSERT_TRUE(cluster_->stub().SubmitJob(&ctx, SmallJob(), &resp).ok());
  }
  ASSERT_EQ(JobCount(Good()), 1);

  struct Case {
    std::string name;
    Creds creds;
    grpc::StatusCode want;
  };
  Creds no_token = Good(), wrong = Good(), untrusted = Good(), plaintext = Good(), no_cert = Good();
  no_token.token.clear();
  wrong.token = wrong_token_;
  untrusted.cert = pem_["evil.pem"];
  untrusted.key = pem_["evil.key"];
  plaintext.tls = false;
  no_cert.cert.clear();
  no_cert.key.clear();
  const std::vector<Case> cases = {
      {"no token", no_token, grpc::StatusCode::UNAUTHENTICATED},
      {"wrong token", wrong, grpc::StatusCode::UNAUTHENTICATED},
      {"untrusted client certificate", untrusted, grpc::StatusCode::UNAVAILABLE},
      {"no client certificate", no_cert, grpc::StatusCode::UNAVAILABLE},
      {"plaintext client", plaintext, grpc::StatusCode::UNAVAILABLE},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto stub = v1::Coordinator::NewStub(Channel(cluster_->address(), c.creds));
    {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::SubmitJobResponse resp;
      const grpc::Status st = stub->SubmitJob(&ctx, SmallJob(), &resp);
      EXPECT_EQ(st.error_code(), c.want) << st.error_message();
      if (c.want == grpc::StatusCode::UNAUTHENTICATED) {
        EXPECT_NE(st.error_message().find(c.name == "no token" ? "no bearer token" : "wrong bearer token"),
                  std::string::npos)
            << st.error_message();
      }
    }
    {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::GetJobRequest req;
      req.set_job_id("job-1");
      v1::Job j;
      EXPECT_EQ(stub->CancelJob(&ctx, req, &j).error_code(), c.want);
    }
    {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::RegisterRequest req;
      req.set_name("intruder");
      req.set_address("127.0.0.1:1");
      req.set_device("cpu");
      v1::RegisterResponse resp;
      EXPECT_EQ(stub->Register(&ctx, req, &resp).error_code(), c.want);
    }
    {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::ListJobsResponse resp;
      EXPECT_EQ(stub->ListJobs(&ctx, v1::ListJobsRequest{}, &resp).error_code(), c.want);
    }
    // The worker's service refuses the same way, before a handler could load anything.
    auto wstub = v1::Worker::NewStub(Channel(worker, c.creds));
    {
      grpc::ClientContext ctx;
      Deadline(ctx, 30);
      v1::LoadStagesRequest req;
      req.set_model("tiny");
      req.add_stages()->set_stage(v1::TEXT_ENCODER);
      v1::LoadStagesResponse resp;
      EXPECT_EQ(wstub->LoadStages(&ctx, req, &resp).error_code(), c.want);
    }
    {
      grpc::ClientContext ctx;
      Deadline(ctx);
      v1::FetchTensorRequest req;
      req.set_job_id("job-1");
      req.set_name("text");
      auto reader = wstub->FetchTensor(&ctx, req);
      v1::TensorChunk chunk;
      while (reader->Read(&chunk)) {
      }
      EXPECT_EQ(reader->Finish().error_code(), c.want);
    }
    // Nothing changed: one job, still queued; no worker registered; the worker holds nothing.
    EXPECT_EQ(JobCount(Good()), 1);
    EXPECT_EQ(cluster_->Job("job-1").state(), v1::QUEUED);
    EXPECT_EQ(cluster_->Workers().workers_size(), 0);
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::UnloadStagesRequest req;
    req.set_model("none");
    v1::UnloadStagesResponse held;
    ASSERT_TRUE(v1::Worker::NewStub(Channel(worker, Good()))->UnloadStages(&ctx, req, &held).ok());
    EXPECT_EQ(held.loaded_size(), 0);
  }

  // Health answers without the token; a plaintext probe cannot reach a TLS server.
  EXPECT_TRUE(Health(Channel(cluster_->address(), no_token)).ok());
  EXPECT_TRUE(Health(Channel(worker, no_token)).ok());
  EXPECT_EQ(Health(Channel(worker, plaintext)).error_code(), grpc::StatusCode::UNAVAILABLE);

  // The CLI: one line each, exit 2 for wrong credentials, and the right credentials from the environment.
  const std::string at = " --coordinator " + cluster_->address();
  struct CliCase {
    std::string args;
    int code;
    std::string expect;
  } cli[] = {
      {"jobs" + at + fmt::format(" --tls-cert {} --tls-key {} --tls-ca {}", Pki("client.pem").string(),
                                 Pki("client.key").string(), Pki("ca.pem").string()),
       2, "no bearer token"},
      {"jobs" + at + ClientFlags("wrong-token"), 2, "wrong bearer token"},
      {"jobs" + at + fmt::format(" --tls-cert {} --tls-key {} --tls-ca {} --token-file {}", Pki("evil.pem").string(),
                                 Pki("evil.key").string(), Pki("ca.pem").string(), Pki("token").string()),
       2, "does not verify against --tls-ca"},
      {"jobs" + at, 1, "no TLS connection"},
      // Its own CA trusts it, so it passes the local check; the handshake fails, and gRPC's own log line of that
      // ("E1207 ... Handshake failed") does not reach the terminal beside Reel's line.
      {"jobs" + at + fmt::format(" --tls-cert {} --tls-key {} --tls-ca {} --token-file {}", Pki("evil.pem").string(),
                                 Pki("evil.key").string(), Pki("evil-ca.pem").string(), Pki("token").string()),
       1, "no TLS connection"},
      {fmt::format("REEL_TLS_CERT={} REEL_TLS_KEY={} REEL_TLS_CA={} REEL_TOKEN_FILE={} {} jobs {}",
                   Pki("client.pem").string(), Pki("client.key").string(), Pki("ca.pem").string(),
                   Pki("token").string(), REEL_BINARY, at),
       0, "job-1"},
  };
  for (const auto& c : cli) {
    const CommandResult r = c.args.rfind("REEL_", 0) == 0 ? RunCommand(c.args) : Reel(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << ": " << r.output;
    if (c.code != 0) {
      EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line: " << r.output;
    }
  }
  EXPECT_EQ(JobCount(Good()), 1);

  // A worker with the wrong token is refused at registration and exits 2; nothing registers.
  std::vector<std::string> bad = ServerFlags();
  bad.back() = Pki("wrong-token").string();
  cluster_->StartWorker("intruder", bad);
  const int status = cluster_->worker("intruder").Wait(30);
  ASSERT_NE(status, -1) << "the worker with the wrong token kept running";
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(cluster_->worker("intruder").Log().find("wrong bearer token"), std::string::npos);
  EXPECT_EQ(cluster_->Workers().workers_size(), 0);
  EXPECT_EQ(cluster_->Logs().find(token_), std::string::npos) << "a log holds the token";
}

TEST_F(SecurityTest, ATokenAloneGuardsALoopbackCoordinator) {
  ASSERT_TRUE(cluster_->StartCoordinator({"--token-file", Pki("token").string()}));
  Creds plain{"", "", "", token_, false}, plain_no_token{"", "", "", "", false};
  auto refused = v1::Coordinator::NewStub(Channel(cluster_->address(), plain_no_token));
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SubmitJobResponse resp;
    EXPECT_EQ(refused->SubmitJob(&ctx, SmallJob(), &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(JobCount(plain), 0);
  EXPECT_TRUE(Health(Channel(cluster_->address(), plain_no_token)).ok());
  // The CLI reads the token from the file named by $REEL_TOKEN_FILE.
  const CommandResult ok = RunCommand(fmt::format("REEL_TOKEN_FILE={} {} submit --coordinator {} --model tiny "
                                                  "--prompt x --frames 9 --height 64 --width 64",
                                                  Pki("token").string(), REEL_BINARY, cluster_->address()));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(JobCount(plain), 1);
}

// Issue 19: a certificate problem is named once, on the side that has it.
TEST_F(SecurityTest, AWorkerWhoseCertificateDoesNotNameItsHostExitsWithOneLine) {
  std::string flags;
  for (const auto& f : ServerFlags()) flags += " " + Quote(f);
  const CommandResult r = Reel("worker --coordinator 127.0.0.1:1 --listen 127.0.0.2:0 --threads 1" + flags);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line: " << r.output;
  EXPECT_NE(r.output.find("does not name 127.0.0.2, the host this worker is reached at (it names DNS:localhost, "
                          "IP:127.0.0.1)"),
            std::string::npos)
      << r.output;
}

// Issue 19: over TLS the token travels inside the TLS session only: a plaintext server a TLS client or worker reaches
// by mistake sees a handshake, never the token.
TEST_F(SecurityTest, APlaintextServerNeverReceivesTheTokenFromATlsClientOrWorker) {
  testing::RecordingServer fake("127.0.0.2", /*hang_up=*/true);
  ASSERT_NE(fake.port(), 0);
  const CommandResult r = Reel("jobs --coordinator " + fake.address() + ClientFlags());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line: " << r.output;
  std::vector<std::string> args = {REEL_BINARY, "worker", "--coordinator", fake.address(), "--listen", "127.0.0.1:0",
                                   "--threads", "1", "--name", "mistaken"};
  for (const auto& f : ServerFlags()) args.push_back(f);
  const fs::path log = dir_ / "mistaken.log";
  extra_logs_.push_back(log);
  {
    Process worker(args, log);
    EXPECT_TRUE(WaitFor([&] { return fake.connections() >= 3; }, 30)) << fake.connections();
    worker.Stop(SIGKILL);
  }
  EXPECT_FALSE(fake.received().empty());  // the handshakes
  EXPECT_EQ(fake.received().find(token_), std::string::npos);
  EXPECT_EQ(fake.received().find("authorization"), std::string::npos);
  // It says once that the coordinator is unreachable; gRPC's own lines do not repeat in its log.
  const std::string text = Read(log);
  EXPECT_FALSE(std::regex_search(text, std::regex("(^|\n)[EWID][0-9]{4} "))) << text;
  EXPECT_EQ(text.find("unreachable"), text.rfind("unreachable")) << text;
  EXPECT_NE(text.find("unreachable"), std::string::npos) << text;
}

TEST_F(SecurityTest, NonLoopbackListenNeedsTlsAndATokenOrInsecure) {
  auto start = [&](const std::string& name, std::vector<std::string> args) {
    args.insert(args.begin(), REEL_BINARY);
    extra_logs_.push_back(dir_ / (name + ".log"));
    return std::make_unique<Process>(args, dir_ / (name + ".log"));
  };
  auto data = [&](const std::string& n) { return (dir_ / n).string(); };
  struct Refusal {
    std::string name;
    std::vector<std::string> args;
    std::string expect;
  } refusals[] = {
      {"plain", {"coordinator", "--listen", "0.0.0.0:0", "--data", data("d1")}, "--listen 0.0.0.0:0: not a loopback"},
      {"token-only",
       {"coordinator", "--listen", "0.0.0.0:0", "--data", data("d2"), "--token-file", Pki("token").string()},
       "a bearer token on a non-loopback address needs --tls-cert"},
      {"worker", {"worker", "--listen", "0.0.0.0:0", "--coordinator", "127.0.0.1:1"}, "--listen 0.0.0.0:0: not a"},
  };
  for (auto& r : refusals) {
    auto p = start(r.name, r.args);
    const int status = p->Wait(30);
    ASSERT_NE(status, -1) << r.name << " kept running";
    EXPECT_EQ(WEXITSTATUS(status), 2) << r.name;
    const std::string log = p->Log();
    EXPECT_NE(log.find(r.expect), std::string::npos) << r.name << ": " << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << "one line: " << log;
    EXPECT_FALSE(fs::exists(fs::path(data(r.name == "plain" ? "d1" : "d2")) / "coordinator.address"));
  }
  // --insecure serves anyway, with a warning; TLS and a token need no --insecure.
  auto insecure = start("insecure", {"coordinator", "--listen", "0.0.0.0:0", "--data", data("d3"), "--insecure"});
  std::vector<std::string> secured = {"coordinator", "--listen", "0.0.0.0:0", "--data", data("d4")};
  for (const auto& f : ServerFlags()) secured.push_back(f);
  auto tls = start("tls", secured);
  EXPECT_TRUE(WaitFor([&] { return fs::exists(dir_ / "d3" / "coordinator.address"); }, 30)) << insecure->Log();
  EXPECT_TRUE(WaitFor([&] { return fs::exists(dir_ / "d4" / "coordinator.address"); }, 30)) << tls->Log();
  EXPECT_NE(insecure->Log().find("with --insecure: no TLS and no token"), std::string::npos) << insecure->Log();
  EXPECT_EQ(tls->Log().find("--insecure"), std::string::npos) << tls->Log();
}

TEST_F(SecurityTest, LimitsRefuseWithTheRightStatusAndChangeNothing) {
  ASSERT_TRUE(cluster_->StartCoordinator({"--max-queued-jobs", "2", "--max-frames", "9", "--max-height", "64",
                                          "--max-width", "96", "--max-pixels", "4096", "--max-steps", "8",
                                          "--max-prompt-bytes", "32", "--max-message-bytes", "1048576"}));
  const Creds plain{"", "", "", "", false};
  auto submit = [&](const v1::SubmitJobRequest& req) {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::SubmitJobResponse resp;
    return cluster_->stub().SubmitJob(&ctx, req, &resp);
  };
  struct Case {
    std::string name;
    std::function<void(v1::JobSpec*)> change;
    grpc::StatusCode want;
    std::string expect;
  } cases[] = {
      {"frames", [](v1::JobSpec* s) { s->set_frames(17); }, grpc::StatusCode::INVALID_ARGUMENT,
       "--frames 17: accepted at most 9 on this coordinator (its --max-frames raises it)"},
      {"height", [](v1::JobSpec* s) { s->set_height(80); }, grpc::StatusCode::INVALID_ARGUMENT, "--max-height"},
      {"width", [](v1::JobSpec* s) { s->set_width(112); }, grpc::StatusCode::INVALID_ARGUMENT, "--max-width"},
      {"pixels", [](v1::JobSpec* s) { s->set_width(96); }, grpc::StatusCode::INVALID_ARGUMENT,
       "--height 64 x --width 96: 6144 pixels a frame, accepted at most 4096 on this coordinator (its --max-pixels "
       "raises it)"},
      {"steps", [](v1::JobSpec* s) { s->set_steps(9); }, grpc::StatusCode::INVALID_ARGUMENT, "--max-steps"},
      {"prompt", [](v1::JobSpec* s) { s->set_prompt(std::string(33, 'p')); }, grpc::StatusCode::INVALID_ARGUMENT,
       "--prompt: 33 bytes, accepted at most 32 on this coordinator (its --max-prompt-bytes raises it)"},
      {"negative prompt", [](v1::JobSpec* s) { s->set_negative_prompt(std::string(33, 'n')); },
       grpc::StatusCode::INVALID_ARGUMENT, "--negative-prompt: 33 bytes"},
      {"message", [](v1::JobSpec* s) { s->set_image(std::string(2 << 20, 'i')); },
       grpc::StatusCode::RESOURCE_EXHAUSTED, "larger than max"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    v1::SubmitJobRequest req = SmallJob();
    c.change(req.mutable_spec());
    const grpc::Status st = submit(req);
    EXPECT_EQ(st.error_code(), c.want) << st.error_message();
    EXPECT_NE(st.error_message().find(c.expect), std::string::npos) << st.error_message();
    EXPECT_EQ(JobCount(plain), 0);
  }
  // The queue: two jobs wait (no worker), the third is refused.
  ASSERT_TRUE(submit(SmallJob()).ok());
  ASSERT_TRUE(submit(SmallJob()).ok());
  const grpc::Status full = submit(SmallJob());
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(full.error_message().find("queue full: 2 jobs queued"), std::string::npos) << full.error_message();
  EXPECT_NE(full.error_message().find("--max-queued-jobs 2"), std::string::npos) << full.error_message();
  EXPECT_EQ(JobCount(plain), 2);

  // The CLI says the same in one line: bad input exits 2, a full queue 1.
  const std::string at = " --coordinator " + cluster_->address() + " --model tiny --prompt x --height 64 --width 64";
  const fs::path image = dir_ / "big.png";
  std::ofstream(image) << std::string(2 << 20, 'i');
  struct CliCase {
    std::string args;
    int code;
    std::string expect;
  } cli[] = {
      {"submit" + at + " --frames 17", 2, "its --max-frames raises it"},
      {"submit" + at + " --image " + Quote(image.string()), 2, "the coordinator's --max-message-bytes raises"},
      {"submit" + at, 1, "queue full"},
  };
  for (const auto& c : cli) {
    const CommandResult r = Reel(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line: " << r.output;
  }
  EXPECT_EQ(JobCount(plain), 2);

  // The flags themselves, and where they are documented.
  const CommandResult zero = Reel("coordinator --max-frames 0 --data " + Quote((dir_ / "d0").string()));
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_NE(zero.output.find("--max-frames 0: accepted 1 or more"), std::string::npos) << zero.output;
  const CommandResult help = Reel("serve --help");
  for (const char* f : {"--max-queued-jobs", "--max-frames", "--max-height", "--max-width", "--max-pixels",
                        "--max-steps", "--max-prompt-bytes", "--max-message-bytes", "--tls-cert", "--token-file",
                        "--insecure", "--model-root"})
    EXPECT_NE(help.output.find(f), std::string::npos) << f;

  // A worker's messages are bounded too: a large request is refused by the transport, a chunk larger than the
  // limit allows is refused by the worker.
  std::string worker;
  auto lone = LoneWorker("bounded", {"--max-message-bytes", std::to_string(5 << 20)}, &worker);
  auto wstub = v1::Worker::NewStub(Channel(worker, plain));
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::UnloadStagesRequest req;
    req.set_model(std::string(6 << 20, 'm'));
    v1::UnloadStagesResponse resp;
    EXPECT_EQ(wstub->UnloadStages(&ctx, req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::FetchTensorRequest req;
    req.set_job_id("job-1");
    req.set_name("text");
    req.set_chunk_bytes(8 << 20);
    auto reader = wstub->FetchTensor(&ctx, req);
    v1::TensorChunk chunk;
    while (reader->Read(&chunk)) {
    }
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("--max-message-bytes 5242880"), std::string::npos) << st.error_message();
  }
}

TEST_F(SecurityTest, ModelPackagesLoadOnlyFromUnderTheModelRoots) {
  const fs::path root = dir_ / "models", outside = dir_ / "elsewhere";
  fs::create_directories(root);
  fs::create_directories(outside);
  const CommandResult synth = Reel("model synth --preset tiny --out " + Quote((root / "pkg").string()));
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  fs::copy(root / "pkg", outside / "pkg", fs::copy_options::recursive);
  fs::create_directory_symlink(outside / "pkg", root / "link");
  // A package inside the root whose weights are a symlink to a file outside it.
  fs::copy(root / "pkg", root / "leaky", fs::copy_options::recursive);
  fs::remove(root / "leaky" / "text_encoder" / "embed.pt");
  fs::create_symlink(outside / "pkg" / "text_encoder" / "embed.pt", root / "leaky" / "text_encoder" / "embed.pt");

  std::string worker;
  auto lone = LoneWorker("rooted", {"--model-root", root.string()}, &worker);
  auto stub = v1::Worker::NewStub(Channel(worker, Creds{"", "", "", "", false}));
  auto load = [&](const std::string& model) {
    grpc::ClientContext ctx;
    Deadline(ctx, 60);
    v1::LoadStagesRequest req;
    req.set_model(model);
    req.add_stages()->set_stage(v1::TEXT_ENCODER);
    v1::LoadStagesResponse resp;
    return stub->LoadStages(&ctx, req, &resp);
  };
  struct Case {
    std::string name, model, expect;
  } cases[] = {
      {"dot-dot out of the root", (root / ".." / "elsewhere" / "pkg").string(), "outside the model roots"},
      {"absolute path elsewhere", (outside / "pkg").string(), "outside the model roots"},
      {"relative traversal", "../../../../../../../../etc", "leads to /etc, outside the model roots"},
      {"symlinked directory", (root / "link").string(), "outside the model roots"},
      {"symlinked weights", (root / "leaky").string(), "file 'text_encoder/embed.pt' leads to"},
  };
  for (const auto& c : cases) {
    const grpc::Status st = load(c.model);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name << ": " << st.error_message();
    EXPECT_NE(st.error_message().find(c.expect), std::string::npos) << c.name << ": " << st.error_message();
  }
  // A package under the root loads: the roots confine, they do not forbid.
  ASSERT_TRUE(load((root / "pkg").string()).ok());
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::UnloadStagesRequest req;
    req.set_model("none");
    v1::UnloadStagesResponse held;
    ASSERT_TRUE(stub->UnloadStages(&ctx, req, &held).ok());
    ASSERT_EQ(held.loaded_size(), 1) << "only the package under the root is held";
    EXPECT_EQ(held.loaded(0).model(), (root / "pkg").string());
  }
  // A job id from a request becomes part of a file name on the worker: one plain component only.
  {
    grpc::ClientContext ctx;
    Deadline(ctx);
    v1::RunStageRequest req;
    req.set_job_id("../../tmp/evil");
    req.set_stage(v1::TEXT_ENCODER);
    *req.mutable_spec() = SmallJob().spec();
    auto reader = stub->RunStage(&ctx, req);
    v1::RunStageEvent ev;
    while (reader->Read(&ev)) {
    }
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("job_id '../../tmp/evil'"), std::string::npos) << st.error_message();
  }
  // The coordinator holds its --model directories to the same roots, at startup.
  const CommandResult refused = Reel("coordinator --listen 127.0.0.1:0 --data " + Quote((dir_ / "c1").string()) +
                                     " --model " + Quote((outside / "pkg").string()));
  EXPECT_EQ(refused.exit_code, 2) << refused.output;
  EXPECT_NE(refused.output.find("outside the model roots"), std::string::npos) << refused.output;
  ASSERT_TRUE(cluster_->StartCoordinator({"--model", (outside / "pkg").string(), "--model-root", outside.string()}));
}

}  // namespace
}  // namespace reel
