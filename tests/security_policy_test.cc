// The security policies in one process: token comparison and token files, which listen addresses count as
// loopback and what the listen policy refuses, model roots against `..` and symlinks, names that become file names,
// and the TLS material checks (certificates from openssl at test time).
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <fstream>

#include "common/error.h"
#include "security/path_policy.h"
#include "security/token.h"
#include "security/transport_security.h"
#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
using testing::Quote;
using testing::RunCommand;
using testing::ScratchDir;

// The message of the InvalidArgument `fn` throws ("" when it throws none).
template <typename F>
std::string Refusal(F fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

TEST(TokenTest, ComparesWholeTokens) {
  EXPECT_TRUE(TokenEquals("Bearer abcdef0123456789", "Bearer abcdef0123456789"));
  EXPECT_FALSE(TokenEquals("Bearer abcdef0123456789", "Bearer abcdef0123456788"));
  EXPECT_FALSE(TokenEquals("Bearer abcdef0123456789", "Bearer abcdef012345678"));   // a prefix
  EXPECT_FALSE(TokenEquals("Bearer abcdef012345678", "Bearer abcdef0123456789"));
  EXPECT_FALSE(TokenEquals("", "x"));
  EXPECT_TRUE(TokenEquals("", ""));
  EXPECT_FALSE(TokenEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(TokenTest, TokenFilesAreCheckedAndTrimmed) {
  ScratchDir dir("token");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  };
  EXPECT_EQ(ReadTokenFile(write("ok", "  0123456789abcdef0123\n"), "--token-file"), "0123456789abcdef0123");
  EXPECT_NE(Refusal([&] { ReadTokenFile((dir / "missing").string(), "--token-file"); }).find("cannot read the file"),
            std::string::npos);
  EXPECT_NE(Refusal([&] { ReadTokenFile(write("short", "abc\n"), "--token-file"); })
                .find("the token is 3 bytes; accepted 16 bytes or more"),
            std::string::npos);
  EXPECT_NE(Refusal([&] { ReadTokenFile(write("space", "0123456789 abcdef0123"), "$REEL_TOKEN_FILE"); })
                .find("$REEL_TOKEN_FILE"),
            std::string::npos);
}

TEST(ListenPolicyTest, OnlyLoopbackWithoutTlsAndAToken) {
  for (const char* h : {"127.0.0.1", "127.8.9.10", "localhost", "[::1]", "::1"}) EXPECT_TRUE(IsLoopbackHost(h)) << h;
  for (const char* h : {"0.0.0.0", "[::]", "", "10.0.0.1", "128.0.0.1", "example.com", "localhost.evil.com"})
    EXPECT_FALSE(IsLoopbackHost(h)) << h;

  TransportSecurity plain;
  EXPECT_EQ(Refusal([&] { CheckListen("127.0.0.1:7070", plain); }), "");
  EXPECT_NE(Refusal([&] { CheckListen("0.0.0.0:7070", plain); }).find("--listen 0.0.0.0:7070: not a loopback address"),
            std::string::npos);
  EXPECT_NE(Refusal([&] { CheckListen(":7070", plain); }).find("not a loopback"), std::string::npos);
  TransportSecurity token_only;
  token_only.token = "0123456789abcdef";
  EXPECT_NE(Refusal([&] { CheckListen("0.0.0.0:7070", token_only); }).find("needs --tls-cert"), std::string::npos);
  token_only.insecure = true;  // --insecure does not make a clear-text token acceptable
  EXPECT_NE(Refusal([&] { CheckListen("0.0.0.0:7070", token_only); }).find("needs --tls-cert"), std::string::npos);
  TransportSecurity insecure;
  insecure.insecure = true;
  EXPECT_EQ(Refusal([&] { CheckListen("0.0.0.0:7070", insecure); }), "");
  TransportSecurity secured;
  secured.tls.cert_pem = "x";
  secured.token = "0123456789abcdef";
  EXPECT_EQ(Refusal([&] { CheckListen("0.0.0.0:7070", secured); }), "");
  TransportSecurity tls_only;
  tls_only.tls.cert_pem = "x";
  EXPECT_NE(Refusal([&] { CheckListen("0.0.0.0:7070", tls_only); }).find("--token-file"), std::string::npos);
}

TEST(PathPolicyTest, ModelRootsHoldAgainstDotDotAndSymlinks) {
  ScratchDir dir("roots");
  const fs::path root = dir / "models", sibling = dir / "models-evil";
  fs::create_directories(root / "pkg");
  fs::create_directories(sibling / "pkg");
  fs::create_directory_symlink(sibling / "pkg", root / "escape");
  fs::create_directory_symlink(root / "pkg", dir / "alias");  // a symlink from outside into the root is fine
  const ModelRoots roots({root.string()}, "/unused");

  EXPECT_EQ(roots.Confine((root / "pkg").string(), "model"), fs::canonical(root / "pkg"));
  EXPECT_EQ(roots.Confine((dir / "alias").string(), "model"), fs::canonical(root / "pkg"));
  EXPECT_EQ(roots.Confine((root / "sub" / ".." / "pkg").string(), "model"), fs::canonical(root / "pkg"));
  for (const fs::path& bad : {root / ".." / "models-evil" / "pkg", sibling / "pkg", root / "escape",
                              root / "escape" / ".." / ".." / "models" / ".." / "models-evil", fs::path("/etc")}) {
    const std::string why = Refusal([&] { roots.Confine(bad.string(), "model"); });
    EXPECT_NE(why.find("outside the model roots (" + fs::canonical(root).string() + ")"), std::string::npos)
        << bad << ": " << why;
  }
  EXPECT_NE(Refusal([&] { roots.Confine("", "model"); }).find("model ''"), std::string::npos);
  EXPECT_NE(Refusal([&] { ModelRoots({(dir / "nope").string()}, "/unused"); }).find("--model-root"),
            std::string::npos);
  // Without --model-root: the fallback (the model cache), which need not exist yet.
  const ModelRoots fallback({}, dir / "cache");
  ASSERT_EQ(fallback.roots().size(), 1u);
  EXPECT_EQ(fallback.roots()[0], dir.path() / "cache");

  EXPECT_TRUE(IsWithin("/a/b/c", "/a/b"));
  EXPECT_TRUE(IsWithin("/a/b", "/a/b"));
  EXPECT_FALSE(IsWithin("/a/bc", "/a/b"));
  EXPECT_FALSE(IsWithin("/a", "/a/b"));
}

TEST(PathPolicyTest, NamesThatBecomeFileNamesAreOneComponent) {
  for (const char* ok : {"job-1", "job_2.a", "J"}) EXPECT_EQ(Refusal([&] { CheckNameComponent(ok, "job_id"); }), "");
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "../x", "a/b", "a b", std::string(129, 'a'),
                                                          std::string("a\0b", 3)})
    EXPECT_NE(Refusal([&] { CheckNameComponent(bad, "job_id"); }).find("job_id '"), std::string::npos) << bad;
}

TEST(TlsTest, MaterialIsCheckedWhenLoaded) {
  ScratchDir dir("tls");
  const std::string script = R"(set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=ca
openssl req -x509 $ec -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=other
openssl req $ec -keyout node.key -out node.csr -subj /CN=node
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem -days 2
openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out old.pem -days -1
)";
  const auto r = RunCommand("cd " + Quote(dir.path().string()) + " && /bin/sh -c " + Quote(script));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto files = [&](const std::string& cert, const std::string& key, const std::string& ca) {
    TlsFiles f;
    f.cert = cert.empty() ? "" : (dir / cert).string();
    f.key = key.empty() ? "" : (dir / key).string();
    f.ca = ca.empty() ? "" : (dir / ca).string();
    return f;
  };
  EXPECT_TRUE(LoadTls(files("node.pem", "node.key", "ca.pem")).enabled());
  EXPECT_FALSE(LoadTls(TlsFiles{}).enabled());
  struct Case {
    TlsFiles f;
    std::string expect;
  } cases[] = {
      {files("node.pem", "", "ca.pem"), "--tls-key: missing; --tls-cert, --tls-key and --tls-ca go together"},
      {files("node.pem", "ca.key", "ca.pem"), "--tls-key " + (dir / "ca.key").string() + ": does not match"},
      {files("node.pem", "node.key", "other-ca.pem"), "does not verify against --tls-ca"},
      {files("old.pem", "node.key", "ca.pem"), "certificate has expired"},
      {files("node.csr", "node.key", "ca.pem"), "--tls-cert " + (dir / "node.csr").string() + ": no PEM certificate"},
      {files("missing.pem", "node.key", "ca.pem"), "cannot read the file"},
  };
  for (const auto& c : cases) {
    const std::string why = Refusal([&] { LoadTls(c.f); });
    EXPECT_NE(why.find(c.expect), std::string::npos) << why;
  }
}

}  // namespace
}  // namespace reel
