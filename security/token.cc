#include "security/token.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace reel {

namespace {

constexpr const char* kHeader = "authorization";
constexpr std::string_view kScheme = "Bearer ";
constexpr std::string_view kOpenPrefix = "/grpc.health.v1.Health/";
constexpr size_t kMinTokenBytes = 16;

class Checker final : public grpc::AuthMetadataProcessor {
 public:
  explicit Checker(std::string token) : expected_(std::string(kScheme) + token) {}

  // Cheap and non-blocking: run on the transport's thread.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& md, grpc::AuthContext*, OutputMetadata* consumed,
                       OutputMetadata*) override {
    if (auto path = md.find(":path"); path != md.end()) {
      const std::string_view p(path->second.data(), path->second.size());
      if (p.substr(0, kOpenPrefix.size()) == kOpenPrefix) return grpc::Status::OK;
    }
    auto it = md.find(kHeader);
    if (it == md.end())
      return {grpc::StatusCode::UNAUTHENTICATED,
              "no bearer token: this server requires one; give the client --token-file FILE (or REEL_TOKEN_FILE) "
              "holding the cluster's token"};
    const std::string_view got(it->second.data(), it->second.size());
    if (!TokenEquals(got, expected_))
      return {grpc::StatusCode::UNAUTHENTICATED,
              "wrong bearer token: the client's --token-file (or REEL_TOKEN_FILE) does not hold this server's token"};
    // Handlers never see the token.
    consumed->insert({std::string(it->first.data(), it->first.size()), std::string(got)});
    return grpc::Status::OK;
  }

 private:
  std::string expected_;
};

class Plugin final : public grpc::MetadataCredentialsPlugin {
 public:
  explicit Plugin(std::string token) : value_(std::string(kScheme) + token) {}
  bool IsBlocking() const override { return false; }
  const char* GetType() const override { return "reel-bearer-token"; }
  grpc::Status GetMetadata(grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
                           std::multimap<std::string, std::string>* metadata) override {
    metadata->insert({kHeader, value_});
    return grpc::Status::OK;
  }
  std::string DebugString() override { return "Reel bearer token"; }  // never the token

 private:
  std::string value_;
};

}  // namespace

std::string ReadTokenFile(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InvalidArgument(fmt::format("{} {}: cannot read the file; accepted a readable file holding the token", flag,
                                      path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string t = ss.str();
  const auto first = t.find_first_not_of(" \t\r\n");
  const auto last = t.find_last_not_of(" \t\r\n");
  t = first == std::string::npos ? "" : t.substr(first, last - first + 1);
  if (t.size() < kMinTokenBytes)
    throw InvalidArgument(fmt::format("{} {}: the token is {} bytes; accepted {} bytes or more (e.g. `openssl rand "
                                      "-hex 32 > {}`)",
                                      flag, path, t.size(), kMinTokenBytes, path));
  for (unsigned char c : t)
    if (c < 0x21 || c > 0x7e)
      throw InvalidArgument(fmt::format("{} {}: the token holds a byte 0x{:02x}; accepted printable ASCII without "
                                        "spaces (e.g. `openssl rand -hex 32`)",
                                        flag, path, static_cast<int>(c)));
  return t;
}

bool TokenEquals(std::string_view a, std::string_view b) {
  // Every byte of the longer one is looked at whatever the contents, so timing tells at most the length.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  // Keep the compiler from ending the loop early on the first difference.
  volatile unsigned char result = diff;
  return result == 0;
}

std::shared_ptr<grpc::AuthMetadataProcessor> TokenChecker(std::string token) {
  return std::make_shared<Checker>(std::move(token));
}

std::shared_ptr<grpc::CallCredentials> TokenCredentials(std::string token, grpc_security_level min_level) {
  return grpc::experimental::MetadataCredentialsFromPlugin(std::make_unique<Plugin>(std::move(token)), min_level);
}

}  // namespace reel
