// How Reel's gRPC servers and channels are secured: mutual TLS when certificates are configured, a bearer token
// when a token file is, and plaintext on loopback only unless --insecure says otherwise (docs/SECURITY.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "security/security_flags.h"
#include "security/tls.h"

namespace reel {

// What was loaded from those files.
struct TransportSecurity {
  TlsMaterial tls;
  std::string token;
  bool insecure = false;

  // For logs: what protects the connections, never a secret or a path.
  std::string Describe() const;
};

// Reads the files; throws InvalidArgument naming the flag (tls.h, token.h).
TransportSecurity LoadSecurity(const SecurityFlags& flags);

// 127.0.0.0/8, ::1 and localhost. Hosts listed in $REEL_TEST_NOT_LOOPBACK (comma-separated) are not: tests stand
// in for a remote address with one of them (127.0.0.2), so no test sends anything off the machine. It can only
// make a policy stricter.
bool IsLoopbackHost(const std::string& host);

// The host of a gRPC target: "h:7070", "[::1]:7070", "dns:///h:7070", "ipv4:127.0.0.1:7070" -> "h", "[::1]", ...
std::string TargetHost(const std::string& target);

// The client side of the rule servers follow (CheckListen): a token goes over TLS, or in clear to a loopback
// address only. The one line refusing a channel to `target` that would carry the token in clear, or "" when it may
// be made. Decided from the address alone, before anything is dialled.
std::string TokenInClearRefusal(const std::string& target, bool tls, bool token);

// A server may listen beyond loopback only with TLS and a token, or with --insecure (then a warning is logged).
// Throws InvalidArgument naming `flag` and the address otherwise.
void CheckListen(const std::string& listen, const TransportSecurity& security, const std::string& flag = "--listen");

// Mutual TLS (client certificates required and verified against the CA) when TLS is configured; the token checked
// on every call but health checks when a token is; plaintext otherwise.
std::shared_ptr<grpc::ServerCredentials> ServerCredentials(const TransportSecurity& security);

// ---- the process's client side: every channel it opens (ChannelTo) ----

// Servers and tests: what this process's channels present from now on.
void SetClientSecurity(const TransportSecurity& security);
// Client commands: loaded (with the environment's defaults) when the first channel is made, so a client that never
// connects never reads the files.
void SetClientSecurityFlags(const SecurityFlags& flags);
SecurityFlags ClientSecurityFlags();
// Bumped by the two above: channels cached under an older value are not reused.
uint64_t ClientSecurityGeneration();
// TokenInClearRefusal for `address` with this process's client security ("" when a channel may be made).
std::string ClientChannelRefusal(const std::string& address);
// A channel to `address` with this process's client security: TLS credentials composed with the token's call
// credentials, or, without TLS, local credentials (loopback peers only) with them. Throws InvalidArgument when the
// files are bad or the token would travel in clear (TokenInClearRefusal), without dialling.
std::shared_ptr<grpc::Channel> CreateClientChannel(const std::string& address, const grpc::ChannelArguments& args);

}  // namespace reel
