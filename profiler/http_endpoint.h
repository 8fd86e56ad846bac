// A small HTTP server for one read-only document (Prometheus' /metrics): libmicrohttpd serves connections
// concurrently from one event loop; Reel adds a whole-request deadline and the routing. The decisions (what a
// request gets, which connections are past their deadline) are plain functions and a plain class, tested alone.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace reel {

struct HttpLimits {
  // From accept to the last byte of the response: a slow or idle client holds a connection no longer than this.
  // Prometheus' own scrape timeout defaults to 10 s; a scrape takes milliseconds.
  std::chrono::milliseconds request_deadline{5000};
  // Connections served at once; more wait in the listen backlog until one ends (at the latest at its deadline).
  int max_connections = 128;
  // Memory one connection may use for its request (request line and headers); beyond it the request is refused
  // with 431 and the connection closed.
  size_t max_request_bytes = 16 << 10;
};

struct HttpReply {
  int status = 200;
  std::string body;
  bool allow_header = false;  // 405: "Allow: GET, HEAD"
};

// What a request for `url` (its path, without the query) with `method` gets from an endpoint serving `path`.
HttpReply RouteRequest(std::string_view method, std::string_view url, std::string_view path,
                       const std::function<std::string()>& document);

// The deadline bookkeeping of open connections, apart from the sockets: opened and closed as the server reports
// them, Due(now) says which to cut (each once).
class ConnectionDeadlines {
 public:
  using Clock = std::chrono::steady_clock;
  explicit ConnectionDeadlines(std::chrono::milliseconds deadline) : deadline_(deadline) {}
  void Opened(const void* connection, int fd, Clock::time_point now);
  void Closed(const void* connection);
  // The sockets of connections open for longer than the deadline and not yet cut; they count as cut from now on.
  std::vector<int> Due(Clock::time_point now);
  // When the next open connection not yet cut reaches its deadline; nullopt when none is open.
  std::optional<Clock::time_point> Next() const;
  size_t open() const { return open_.size(); }

 private:
  struct Open {
    int fd = -1;
    Clock::time_point started;
    bool cut = false;
  };
  std::chrono::milliseconds deadline_;
  std::map<const void*, Open> open_;
};

// Serves `document()` on GET (and HEAD) of `path`, over HTTP/1.x, one request per connection.
class HttpEndpoint {
 public:
  HttpEndpoint(std::string path, std::function<std::string()> document, HttpLimits limits = {});
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // "HOST:PORT" (an IP address or localhost; port 0 picks a free port). Throws InvalidArgument("<flag> <value>:
  // ...") for a malformed address, one that cannot be bound, or a second call.
  void Serve(const std::string& host_port, const std::string& flag);
  int port() const;  // the bound port, 0 when not serving

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace reel
