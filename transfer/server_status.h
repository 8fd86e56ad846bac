// No status leaves a Reel server without a message: a server interceptor fills in the method and the code where
// a handler, or gRPC itself (an unknown method is UNIMPLEMENTED with nothing more), left the message empty.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

namespace reel {

// `st` unchanged when it is OK or has a message; otherwise the same code with "METHOD: CODE (no detail given)".
grpc::Status WithMessage(const grpc::Status& st, const std::string& method);

// For ServerBuilder::experimental().SetInterceptorCreators (ConfigureServer does it).
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> StatusMessageInterceptors();

}  // namespace reel
