// Bearer tokens: read from a file (never a flag value, which `ps` shows), sent as `authorization: Bearer TOKEN` on
// every call, and checked on every call a server receives (health checks excepted) in constant time.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/support/client_interceptor.h>

namespace reel {

// The token in `path` without surrounding whitespace. Throws InvalidArgument naming `flag` and the file when it
// cannot be read, is empty, is shorter than 16 bytes, or holds characters other than printable ASCII.
std::string ReadTokenFile(const std::string& path, const std::string& flag);

// True when the two are equal; the time taken depends on their lengths only, never on where they differ.
bool TokenEquals(std::string_view a, std::string_view b);

// The server side: refuses a call without the token, or with another one, with UNAUTHENTICATED before its handler
// runs. grpc.health.v1.Health stays open (orchestrators probe it without credentials).
std::shared_ptr<grpc::AuthMetadataProcessor> TokenChecker(std::string token);

// The client side: adds the token to every call on a channel.
std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface> TokenSender(std::string token);

}  // namespace reel
