// Bearer tokens: read from a file (never a flag value, which `ps` shows), sent as `authorization: Bearer TOKEN` on
// every call, and checked on every call a server receives (health checks excepted) in constant time.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/security/auth_metadata_processor.h>
#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/credentials.h>

namespace reel {

// The token in `path` without surrounding whitespace. Throws InvalidArgument naming `flag` and the file when it
// cannot be read, is empty, is shorter than 16 bytes, or holds characters other than printable ASCII.
std::string ReadTokenFile(const std::string& path, const std::string& flag);

// True when the two are equal; the time taken depends on their lengths only, never on where they differ.
bool TokenEquals(std::string_view a, std::string_view b);

// The server side: refuses a call without the token, or with another one, with UNAUTHENTICATED before its handler
// runs. grpc.health.v1.Health stays open (orchestrators probe it without credentials).
std::shared_ptr<grpc::AuthMetadataProcessor> TokenChecker(std::string token);

// The client side: call credentials that add the token to every call. gRPC attaches call credentials only on a
// channel whose security level is at least `min_level`, and never on an insecure channel: composed with TLS
// credentials (the default level, privacy and integrity) the token never travels in clear. GRPC_SECURITY_NONE is
// for the loopback exception alone, composed with local credentials, which admit loopback peers only
// (CreateClientChannel).
std::shared_ptr<grpc::CallCredentials> TokenCredentials(std::string token,
                                                        grpc_security_level min_level = GRPC_PRIVACY_AND_INTEGRITY);

}  // namespace reel
