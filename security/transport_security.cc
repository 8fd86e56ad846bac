#include "security/transport_security.h"

#include <arpa/inet.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/printable.h"
#include "common/split.h"
#include "security/token.h"

namespace reel {

SecurityFlags SecurityFlags::WithEnvironmentDefaults() const {
  SecurityFlags f = *this;
  auto fill = [](std::string& value, std::string& name, const char* var) {
    if (!value.empty()) return;
    if (const char* v = std::getenv(var); v && *v) {
      value = v;
      name = std::string("$") + var;
    }
  };
  fill(f.tls.cert, f.tls.cert_name, "REEL_TLS_CERT");
  fill(f.tls.key, f.tls.key_name, "REEL_TLS_KEY");
  fill(f.tls.ca, f.tls.ca_name, "REEL_TLS_CA");
  fill(f.token_file, f.token_file_name, "REEL_TOKEN_FILE");
  return f;
}

std::string TransportSecurity::Describe() const {
  if (tls.enabled()) return token.empty() ? "mutual TLS, no token" : "mutual TLS and a bearer token";
  return token.empty() ? "plaintext, no token" : "plaintext on loopback with a bearer token";
}

TransportSecurity LoadSecurity(const SecurityFlags& f) {
  TransportSecurity s;
  s.tls = LoadTls(f.tls);
  if (!f.token_file.empty()) s.token = ReadTokenFile(f.token_file, f.token_file_name);
  s.insecure = f.insecure;
  return s;
}

bool IsLoopbackHost(const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (const char* remote = std::getenv("REEL_TEST_NOT_LOOPBACK"); remote && *remote)
    for (const auto& h : SplitList(remote))
      if (h == host || h == host_in) return false;
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

std::string TargetHost(const std::string& target) {
  std::string t = target;
  // dns://AUTHORITY/host names its own resolver: never taken for loopback.
  if (t.rfind("dns://", 0) == 0 && t.rfind("dns:///", 0) != 0) return "";
  for (const char* scheme : {"dns:///", "dns:", "ipv4:", "ipv6:"})
    if (t.rfind(scheme, 0) == 0) {
      t = t.substr(std::strlen(scheme));
      break;
    }
  if (!t.empty() && t.front() == '[') {
    const auto close = t.find(']');
    return close == std::string::npos ? t : t.substr(0, close + 1);
  }
  const auto colon = t.rfind(':');
  return colon == std::string::npos ? t : t.substr(0, colon);
}

std::string TokenInClearRefusal(const std::string& target, bool tls, bool token) {
  if (!token || tls || IsLoopbackHost(TargetHost(target))) return "";
  return fmt::format("{}: not a loopback address, and a bearer token goes there only over TLS (it would cross the "
                     "network in clear); give --tls-cert, --tls-key and --tls-ca (or $REEL_TLS_*) as well, or use a "
                     "loopback address (127.0.0.1, localhost, [::1])",
                     Printable(target));
}

void CheckListen(const std::string& listen, const TransportSecurity& s, const std::string& flag) {
  const auto colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  if (IsLoopbackHost(host)) return;
  if (s.tls.enabled() && !s.token.empty()) return;
  if (!s.token.empty())
    throw InvalidArgument(fmt::format("{} {}: a bearer token on a non-loopback address needs --tls-cert, --tls-key and "
                                      "--tls-ca (it would cross the network in clear); accepted a loopback address "
                                      "(127.0.0.1, localhost, [::1]) or TLS as well",
                                      flag, listen));
  if (!s.insecure)
    throw InvalidArgument(fmt::format("{} {}: not a loopback address, and TLS and a token are not both configured; "
                                      "accepted 127.0.0.1, localhost or [::1], or --tls-cert, --tls-key, --tls-ca and "
                                      "--token-file, or --insecure to serve in clear anyway",
                                      flag, listen));
  spdlog::warn("{} {} with --insecure: {}; anyone who can reach this port can use every call", flag, listen,
               s.tls.enabled() ? "TLS but no token" : "no TLS and no token");
}

std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TransportSecurity& s) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (s.tls.enabled()) {
    grpc::SslServerCredentialsOptions o(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    o.pem_root_certs = s.tls.ca_pem;
    o.pem_key_cert_pairs.push_back({s.tls.key_pem, s.tls.cert_pem});
    creds = grpc::SslServerCredentials(o);
  } else if (!s.token.empty()) {
    // Plaintext that still runs the token check; it admits loopback peers only, which CheckListen guarantees.
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    return grpc::InsecureServerCredentials();
  }
  if (!s.token.empty()) creds->SetAuthMetadataProcessor(TokenChecker(s.token));
  return creds;
}

namespace {

struct ClientState {
  std::mutex mu;
  SecurityFlags flags;
  std::optional<TransportSecurity> loaded;  // set explicitly, or loaded from `flags` at the first channel
  uint64_t generation = 1;
};

ClientState& Client() {
  static ClientState s;
  return s;
}

}  // namespace

void SetClientSecurity(const TransportSecurity& security) {
  auto& c = Client();
  std::lock_guard lock(c.mu);
  c.loaded = security;
  ++c.generation;
}

void SetClientSecurityFlags(const SecurityFlags& flags) {
  auto& c = Client();
  std::lock_guard lock(c.mu);
  c.flags = flags;
  c.loaded.reset();
  ++c.generation;
}

SecurityFlags ClientSecurityFlags() {
  auto& c = Client();
  std::lock_guard lock(c.mu);
  return c.flags;
}

uint64_t ClientSecurityGeneration() {
  auto& c = Client();
  std::lock_guard lock(c.mu);
  return c.generation;
}

namespace {

TransportSecurity ClientSecurity() {
  auto& c = Client();
  std::lock_guard lock(c.mu);
  if (!c.loaded) c.loaded = LoadSecurity(c.flags.WithEnvironmentDefaults());
  return *c.loaded;
}

}  // namespace

std::string ClientChannelRefusal(const std::string& address) {
  const TransportSecurity s = ClientSecurity();
  return TokenInClearRefusal(address, s.tls.enabled(), !s.token.empty());
}

std::shared_ptr<grpc::Channel> CreateClientChannel(const std::string& address, const grpc::ChannelArguments& args) {
  const TransportSecurity s = ClientSecurity();
  if (std::string refusal = TokenInClearRefusal(address, s.tls.enabled(), !s.token.empty()); !refusal.empty())
    throw InvalidArgument(refusal);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (s.tls.enabled()) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = s.tls.ca_pem;
    o.pem_private_key = s.tls.key_pem;
    o.pem_cert_chain = s.tls.cert_pem;
    creds = grpc::SslCredentials(o);
    if (!s.token.empty()) creds = grpc::CompositeChannelCredentials(creds, TokenCredentials(s.token));
  } else if (!s.token.empty()) {
    // The loopback exception, kept deliberately narrow: local credentials refuse any peer that is not loopback
    // (after connecting, before a byte of the call is sent), and only they carry call credentials without TLS.
    creds = grpc::CompositeChannelCredentials(grpc::experimental::LocalCredentials(LOCAL_TCP),
                                              TokenCredentials(s.token, GRPC_SECURITY_NONE));
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(address, creds, args);
}

}  // namespace reel
