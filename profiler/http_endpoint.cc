// HttpEndpoint on libmicrohttpd (Debian's libmicrohttpd-dev). Why this library: it parses HTTP and serves every
// connection from one event loop (poll: with epoll, 0.9.75 noticed a client's end of a half-sent request only at
// its timeout; connections are few here), with bounds on connections and per-connection memory, and its thread
// starts with the default stack; civetweb, the other packaged server, cannot start inside `reel` (metrics.cc).
// What it lacks is a deadline on the whole request (its timeout is one of inactivity, which a client sending a byte
// a second never reaches): a small thread here shuts down the sockets of connections past their deadline, and the
// library then closes them as it would any connection its peer ended.
#include "profiler/http_endpoint.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/error.h"

#if REEL_HAVE_MICROHTTPD
#include <microhttpd.h>
#endif

namespace reel {

HttpReply RouteRequest(std::string_view method, std::string_view url, std::string_view path,
                       const std::function<std::string()>& document) {
  const std::string only = "only GET " + std::string(path) + " is served here\n";
  if (url != path) return {404, only, false};
  if (method != "GET" && method != "HEAD") return {405, only, true};
  return {200, document(), false};
}

void ConnectionDeadlines::Opened(const void* connection, int fd, Clock::time_point now) {
  open_[connection] = Open{fd, now, false};
}

void ConnectionDeadlines::Closed(const void* connection) { open_.erase(connection); }

std::vector<int> ConnectionDeadlines::Due(Clock::time_point now) {
  std::vector<int> due;
  for (auto& [c, o] : open_)
    if (!o.cut && now - o.started >= deadline_) {
      o.cut = true;
      due.push_back(o.fd);
    }
  return due;
}

std::optional<ConnectionDeadlines::Clock::time_point> ConnectionDeadlines::Next() const {
  std::optional<Clock::time_point> next;
  for (const auto& [c, o] : open_)
    if (!o.cut && (!next || o.started + deadline_ < *next)) next = o.started + deadline_;
  return next;
}

namespace {

struct ListenAddress {
  int family = AF_INET;
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// "127.0.0.1:9464", "[::1]:0", "localhost:9464" -> a socket address; nullopt when malformed.
std::optional<ListenAddress> ParseListen(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535)
    return std::nullopt;
  if (host == "localhost") host = "127.0.0.1";
  ListenAddress a;
  const auto port_n = static_cast<uint16_t>(std::stoi(port));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.addr);
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6->sin6_addr) != 1) return std::nullopt;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port_n);
    a.family = AF_INET6;
    a.len = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&a.addr);
    if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1) return std::nullopt;
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port_n);
    a.len = sizeof(sockaddr_in);
  }
  return a;
}

}  // namespace

#if REEL_HAVE_MICROHTTPD

struct HttpEndpoint::Impl {
  std::string path;
  std::function<std::string()> document;
  HttpLimits limits;
  MHD_Daemon* daemon = nullptr;
  int port = 0;

  std::mutex mu;  // guards deadlines and stop; the library's thread and the sweeper share them
  std::condition_variable cv;
  ConnectionDeadlines deadlines{limits.request_deadline};
  bool stop = false;
  std::thread sweeper;

  // Called on the library's thread; CLOSED comes before it closes the socket, so the sweeper never shuts down a
  // descriptor that was closed and reused.
  static void Notify(void* cls, MHD_Connection* c, void**, MHD_ConnectionNotificationCode code) {
    auto* self = static_cast<Impl*>(cls);
    std::lock_guard lock(self->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      const MHD_ConnectionInfo* info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
      if (info) self->deadlines.Opened(c, info->connect_fd, ConnectionDeadlines::Clock::now());
      self->cv.notify_all();
    } else {
      self->deadlines.Closed(c);
    }
  }

  static MHD_Result Handle(void* cls, MHD_Connection* c, const char* url, const char* method, const char*,
                           const char*, size_t* upload_size, void**) {
    auto* self = static_cast<Impl*>(cls);
    *upload_size = 0;  // a body is not read: the reply ends the connection
    const HttpReply r = RouteRequest(method, url, self->path, self->document);
    MHD_Response* resp = MHD_create_response_from_buffer(r.body.size(), const_cast<char*>(r.body.data()),
                                                         MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r.status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    if (r.allow_header) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    const MHD_Result queued = MHD_queue_response(c, static_cast<unsigned>(r.status), resp);
    MHD_destroy_response(resp);
    return queued;
  }

  void Sweep() {
    std::unique_lock lock(mu);
    while (!stop) {
      for (int fd : deadlines.Due(ConnectionDeadlines::Clock::now())) ::shutdown(fd, SHUT_RDWR);
      if (const auto next = deadlines.Next()) {
        cv.wait_until(lock, *next);
      } else {
        cv.wait(lock);
      }
    }
  }
};

HttpEndpoint::HttpEndpoint(std::string path, std::function<std::string()> document, HttpLimits limits)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->document = std::move(document);
  impl_->limits = limits;
  impl_->deadlines = ConnectionDeadlines(limits.request_deadline);
}

HttpEndpoint::~HttpEndpoint() {
  if (impl_->daemon) MHD_stop_daemon(impl_->daemon);  // closes every connection and the listening socket
  if (impl_->sweeper.joinable()) {
    {
      std::lock_guard lock(impl_->mu);
      impl_->stop = true;
    }
    impl_->cv.notify_all();
    impl_->sweeper.join();
  }
}

void HttpEndpoint::Serve(const std::string& host_port, const std::string& flag) {
  const auto addr = ParseListen(host_port);
  if (!addr)
    throw InvalidArgument(flag + " " + host_port +
                          ": accepted HOST:PORT with an IP address or localhost, such as 127.0.0.1:9464 or "
                          "0.0.0.0:9464 (port 0 picks a free port)");
  if (impl_->daemon)
    throw InvalidArgument(flag + " " + host_port + ": already served on port " + std::to_string(impl_->port));
  const int fd = ::socket(addr->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&addr->addr), addr->len) != 0 || ::listen(fd, 64) != 0) {
    if (fd >= 0) ::close(fd);
    throw InvalidArgument(flag + " " + host_port + ": cannot listen there (in use, or not an address of this host)");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int port = ntohs(addr->family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                  : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  const auto& l = impl_->limits;
  // The library's own inactivity timeout (whole seconds) only backs up the deadline. Its strict mode
  // (MHD_OPTION_STRICT_FOR_CLIENT) stays off: in 0.9.75 its "Host required" 400 sends the status line and headers
  // twice (found by fuzz/metrics_http_fuzzer.cc).
  const auto idle_s = static_cast<unsigned>(
      std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::seconds>(l.request_deadline).count() + 1));
  impl_->daemon = MHD_start_daemon(
      MHD_USE_POLL_INTERNAL_THREAD, 0, nullptr, nullptr, &Impl::Handle, impl_.get(),  //
      MHD_OPTION_LISTEN_SOCKET, fd,                                                  //
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(std::max(1, l.max_connections)),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, l.max_request_bytes,  //
      MHD_OPTION_CONNECTION_TIMEOUT, idle_s,                    //
      MHD_OPTION_NOTIFY_CONNECTION, &Impl::Notify, impl_.get(),  //
      MHD_OPTION_END);
  if (!impl_->daemon) {
    ::close(fd);
    throw InvalidArgument(flag + " " + host_port + ": cannot start the HTTP server there");
  }
  impl_->port = port;
  impl_->sweeper = std::thread([this] { impl_->Sweep(); });
}

#else  // a runtime-only build made where libmicrohttpd is missing (the GPU check's machines): no HTTP server

struct HttpEndpoint::Impl {
  int port = 0;
};

HttpEndpoint::HttpEndpoint(std::string, std::function<std::string()>, HttpLimits) : impl_(std::make_unique<Impl>()) {}
HttpEndpoint::~HttpEndpoint() = default;

void HttpEndpoint::Serve(const std::string& host_port, const std::string& flag) {
  throw InvalidArgument(flag + " " + host_port + ": this build of Reel has no HTTP server (libmicrohttpd-dev was "
                        "missing when it was configured)");
}

#endif

int HttpEndpoint::port() const { return impl_->port; }

}  // namespace reel
