#include "transfer/server_status.h"

#include <array>

namespace reel {

namespace {

class Filler final : public grpc::experimental::Interceptor {
 public:
  explicit Filler(std::string method) : method_(std::move(method)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      if (!st.ok() && st.error_message().empty()) methods->ModifySendStatus(WithMessage(st, method_));
    }
    methods->Proceed();
  }

 private:
  std::string method_;
};

class FillerFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new Filler(info->method() ? info->method() : "");
  }
};

}  // namespace

grpc::Status WithMessage(const grpc::Status& st, const std::string& method) {
  if (st.ok() || !st.error_message().empty()) return st;
  static constexpr std::array<const char*, 17> kNames = {
      "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",       "DATA_LOSS",        "UNAUTHENTICATED"};
  const auto n = static_cast<size_t>(st.error_code());
  const std::string code = n < kNames.size() ? kNames[n] : "code " + std::to_string(n);
  std::string what = method.empty() ? "this call" : method;
  std::string detail = st.error_code() == grpc::StatusCode::UNIMPLEMENTED ? "this server has no such method"
                                                                           : "no detail given";
  return {st.error_code(), what + ": " + code + " (" + detail + ")", st.error_details()};
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> StatusMessageInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> v;
  v.push_back(std::make_unique<FillerFactory>());
  return v;
}

}  // namespace reel
