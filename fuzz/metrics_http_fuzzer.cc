// libFuzzer target: bytes a client sends to a /metrics endpoint, through the production HttpEndpoint
// (profiler/http_endpoint.cc: libmicrohttpd's request parser, Reel's routing and deadline) over a loopback socket.
// Whatever arrives, the endpoint answers with at most one well-formed response, a 200 only for GET or HEAD of
// /metrics (with the document, whole, unless the deadline cut it), and the connection ends within the deadline.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "fuzz/fuzz_check.h"
#include "profiler/http_endpoint.h"

namespace {

const std::string kDocument = "# TYPE reel_fuzz_total counter\nreel_fuzz_total 1\n";
// Shorter than the default 5 s, so that an input the server waits on costs less.
constexpr std::chrono::milliseconds kDeadline(1000);

reel::HttpEndpoint& Endpoint() {
  static reel::HttpEndpoint* e = [] {
    reel::HttpLimits limits;
    limits.request_deadline = kDeadline;
    auto* ep = new reel::HttpEndpoint("/metrics", [] { return kDocument; }, limits);
    ep->Serve("127.0.0.1:0", "--metrics");
    return ep;
  }();
  return *e;
}

// The input, then the end of what the client sends; everything the server answers until it closes. `cut`: the
// exchange outlasted the deadline, so the server may have ended it midway.
std::string Exchange(const std::string& input, bool* cut) {
  const auto start = std::chrono::steady_clock::now();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REEL_FUZZ_CHECK(fd >= 0, "socket");
  const linger hard{1, 0};  // closed with a reset: no TIME_WAIT left on this side
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof hard);
  // The server closes first, so each input leaves a TIME_WAIT there for a minute, holding its source port: thousands
  // of inputs a second would use up a single source address's ports, so they come from 127.0.0.1 to 127.0.0.250.
  static unsigned next_source = 0;
  sockaddr_in from{};
  from.sin_family = AF_INET;
  from.sin_addr.s_addr = htonl(INADDR_LOOPBACK + (next_source++ % 250));
  REEL_FUZZ_CHECK(::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0, "bind a loopback source address");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(Endpoint().port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    // libFuzzer's timers interrupt calls; an interrupted connect goes on, and is waited for.
    int error = errno;
    if (error == EINTR) {
      pollfd p{fd, POLLOUT, 0};
      while (::poll(&p, 1, 5000) < 0 && errno == EINTR) {
      }
      socklen_t len = sizeof error;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
    }
    if (error != 0) reel::fuzz::Fail("connect to the endpoint", std::strerror(error));
  }
  for (size_t sent = 0; sent < input.size();) {
    const ssize_t n = ::send(fd, input.data() + sent, input.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the server already answered and closed
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string out;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    REEL_FUZZ_CHECK(left.count() > 0, "no end of the response within 5 s (the deadline is 1 s)");
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  *cut = std::chrono::steady_clock::now() - start >= kDeadline;
  return out;
}

// Whether the request carries a Content-Length header (any case). Which values libmicrohttpd's line reader takes
// for malformed (a bare CR, a NUL, a sign) is its own business; the property only needs the header to be there.
bool HasContentLength(const std::string& input) {
  std::string lower(input);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower.find("content-length:") != std::string::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  bool cut = false;
  const std::string out = Exchange(input, &cut);
  if (out.empty() || (cut && out.find("\r\n\r\n") == std::string::npos)) {
    reel::fuzz::Report("closed", "no reply");
    return 0;
  }
  int status = 0;
  REEL_FUZZ_CHECK(out.rfind("HTTP/1.1 ", 0) == 0 && std::sscanf(out.c_str(), "HTTP/1.1 %3d ", &status) == 1,
                  out.substr(0, 200));
  const auto head_end = out.find("\r\n\r\n");
  REEL_FUZZ_CHECK(head_end != std::string::npos, out.substr(0, 200));
  const std::string head = out.substr(0, head_end), body = out.substr(head_end + 4);
  if (const auto second = out.find("HTTP/1.1 ", 1); second != std::string::npos) {
    // libmicrohttpd 0.9.75 (Debian 12) answers a Content-Length it cannot read with its own 400
    // (found-bad-content-length-400-sent-twice), and one past 2^64 with its own 413
    // (found-huge-content-length-413-sent-twice), the status line and headers sent twice, identically. The library's
    // error path, not Reel's (no option turns it off): the client gets the error and the connection closes. Anything
    // else answered twice, or a second status line that differs from the first, is a failure.
    const std::string status_line = out.substr(0, out.find("\r\n") + 2);
    REEL_FUZZ_CHECK((status == 400 || status == 413) && HasContentLength(input) &&
                        out.compare(second, status_line.size(), status_line) == 0,
                    "more than one response: " + out.substr(0, 400));
    reel::fuzz::Report("answered",
                       head.substr(0, head.find('\r')) + " (sent twice by the library: malformed Content-Length)");
    return 0;
  }
  const auto cl = head.find("Content-Length: ");
  REEL_FUZZ_CHECK(cl != std::string::npos, head);
  const size_t length = std::stoul(head.substr(cl + 16));
  // A reply to HEAD has no body (the parser decides what was a HEAD; line ends and blank lines vary).
  const bool head_request = body.empty() && input.find("HEAD") != std::string::npos;
  REEL_FUZZ_CHECK(head_request || body.size() == length || (cut && body.size() < length), head);
  if (status == 200) {
    // A GET or HEAD of /metrics. Not checked more closely: the library reads lines as C strings, so a NUL ends a
    // method or a line ("HEAD\0x /metrics" is a HEAD, "\0\n" a blank line before the request).
    REEL_FUZZ_CHECK((input.find("GET") != std::string::npos || input.find("HEAD") != std::string::npos) &&
                        input.find("/metrics") != std::string::npos,
                    input.substr(0, 200));
    REEL_FUZZ_CHECK(head_request || body == kDocument || (cut && kDocument.rfind(body, 0) == 0), body.substr(0, 200));
  } else {
    REEL_FUZZ_CHECK(status >= 400 && status < 600, head);
  }
  reel::fuzz::Report("answered", head.substr(0, head.find('\r')));
  return 0;
}
