// The /metrics endpoint against slow, idle, oversized and malformed clients (issue 19): scrapes keep answering
// within 100 ms while 50 such connections are held open, each connection is cut at the whole-request deadline,
// connections beyond the bound wait rather than fail, and the decisions (routing, deadlines) alone.
#include "profiler/http_endpoint.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "profiler/metrics.h"

namespace reel {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& s) {
  for (size_t sent = 0; sent < s.size();) {
    const ssize_t n = ::send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Everything the server sends until it closes, or until `limit` passes.
std::string ReadUntilClosed(int fd, milliseconds limit = milliseconds(10000)) {
  std::string out;
  const auto end = Clock::now() + limit;
  char buf[8192];
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

int StatusOf(const std::string& response) {
  int status = 0;
  std::sscanf(response.c_str(), "HTTP/%*s %d", &status);
  return status;
}

std::string Request(int port, const std::string& raw) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  SendAll(fd, raw);
  std::string r = ReadUntilClosed(fd);
  ::close(fd);
  return r;
}

std::string Get(int port, const std::string& path) {
  return Request(port, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
}

// An endpoint serving "x 1\n" on a free loopback port.
std::unique_ptr<HttpEndpoint> Serving(HttpLimits limits = {}) {
  auto e = std::make_unique<HttpEndpoint>("/metrics", [] { return std::string("x 1\n"); }, limits);
  e->Serve("127.0.0.1:0", "--metrics");
  return e;
}

TEST(HttpEndpointRouting, ServesGetAndHeadOfItsPathOnly) {
  auto doc = [] { return std::string("reel_x 1\n"); };
  EXPECT_EQ(RouteRequest("GET", "/metrics", "/metrics", doc).status, 200);
  EXPECT_EQ(RouteRequest("GET", "/metrics", "/metrics", doc).body, "reel_x 1\n");
  EXPECT_EQ(RouteRequest("HEAD", "/metrics", "/metrics", doc).status, 200);
  const HttpReply post = RouteRequest("POST", "/metrics", "/metrics", doc);
  EXPECT_EQ(post.status, 405);
  EXPECT_TRUE(post.allow_header);
  for (const char* url : {"/", "/metrics/", "/metricsx", "", "/../metrics"})
    EXPECT_EQ(RouteRequest("GET", url, "/metrics", doc).status, 404) << url;
}

TEST(HttpEndpointDeadlines, EachConnectionIsCutOnceAtItsDeadline) {
  ConnectionDeadlines d(milliseconds(100));
  const auto t0 = Clock::now();
  int a = 0, b = 0;
  EXPECT_FALSE(d.Next());
  d.Opened(&a, 7, t0);
  d.Opened(&b, 8, t0 + milliseconds(50));
  EXPECT_EQ(*d.Next(), t0 + milliseconds(100));
  EXPECT_TRUE(d.Due(t0 + milliseconds(99)).empty());
  EXPECT_EQ(d.Due(t0 + milliseconds(100)), std::vector<int>{7});
  EXPECT_TRUE(d.Due(t0 + milliseconds(120)).empty());  // cut once
  EXPECT_EQ(*d.Next(), t0 + milliseconds(150));
  d.Closed(&b);
  EXPECT_TRUE(d.Due(t0 + milliseconds(1000)).empty());
  EXPECT_FALSE(d.Next());
  d.Closed(&a);
  EXPECT_EQ(d.open(), 0u);
}

// The measurement: 25 idle connections and 25 sending a byte every 100 ms held open while /metrics is
// scraped; the median scrape answers within 100 ms.
TEST(MetricsEndpointUnderAbuse, AScrapeAnswersWithin100MsWhile50SlowAndIdleClientsHoldConnections) {
  Metrics m;
  m.Serve("127.0.0.1:0");
  std::vector<int> idle, slow;
  for (int i = 0; i < 25; ++i) {
    idle.push_back(Connect(m.port()));
    slow.push_back(Connect(m.port()));
    ASSERT_GE(idle.back(), 0);
    ASSERT_GE(slow.back(), 0);
  }
  std::atomic<bool> stop{false};
  std::thread dribble([&] {
    const std::string head = "GET /metrics HTTP/1.1\r\nX-Slow: ";
    for (size_t i = 0; !stop; ++i) {
      for (int fd : slow) ::send(fd, &head[std::min(i, head.size() - 1)], 1, MSG_NOSIGNAL);
      std::this_thread::sleep_for(milliseconds(100));
    }
  });
  std::this_thread::sleep_for(milliseconds(300));  // every connection accepted and dribbling
  std::vector<double> ms;
  for (int i = 0; i < 9; ++i) {
    const auto t0 = Clock::now();
    const std::string r = Get(m.port(), "/metrics");
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    ASSERT_EQ(StatusOf(r), 200) << r.substr(0, 200);
    EXPECT_NE(r.find("reel_jobs_completed_total"), std::string::npos);
  }
  stop = true;
  dribble.join();
  std::sort(ms.begin(), ms.end());
  std::printf("9 scrapes beside 50 slow and idle connections: median %.1f ms, slowest %.1f ms\n", ms[ms.size() / 2],
              ms.back());
  EXPECT_LT(ms[ms.size() / 2], 100.0) << "median of 9 scrapes; slowest " << ms.back() << " ms";
  for (int fd : idle) ::close(fd);
  for (int fd : slow) ::close(fd);
}

TEST(HttpEndpointUnderAbuse, SlowAndIdleClientsAreCutAtTheWholeRequestDeadline) {
  HttpLimits limits;
  limits.request_deadline = milliseconds(300);
  const auto e = Serving(limits);
  const int idle = Connect(e->port());
  const int slow = Connect(e->port());
  ASSERT_GE(idle, 0);
  ASSERT_GE(slow, 0);
  const auto t0 = Clock::now();
  // A byte every 50 ms never leaves the connection idle; only the deadline ends it.
  bool slow_closed = false;
  for (int i = 0; i < 200 && !slow_closed; ++i) {
    slow_closed = !SendAll(slow, "G");
    pollfd p{slow, POLLIN, 0};
    if (::poll(&p, 1, 50) > 0) {
      char c;
      slow_closed = ::recv(slow, &c, 1, 0) <= 0;
    }
  }
  const double slow_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_TRUE(slow_closed);
  EXPECT_LT(slow_s, 5.0);  // deadline 0.3 s; generous under load
  EXPECT_EQ(ReadUntilClosed(idle, milliseconds(5000)), "");  // closed without a reply
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0);
  ::close(idle);
  ::close(slow);
  EXPECT_EQ(StatusOf(Get(e->port(), "/metrics")), 200);
}

TEST(HttpEndpointUnderAbuse, ConnectionsBeyondTheBoundWaitForASlotInsteadOfFailing) {
  HttpLimits limits;
  limits.max_connections = 4;
  limits.request_deadline = milliseconds(500);
  const auto e = Serving(limits);
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) held.push_back(Connect(e->port()));
  std::this_thread::sleep_for(milliseconds(100));
  const std::string r = Get(e->port(), "/metrics");  // served once the deadline frees a slot
  EXPECT_EQ(StatusOf(r), 200) << r;
  for (int fd : held) ::close(fd);
}

TEST(HttpEndpointUnderAbuse, OversizedAndMalformedRequestsGetAnErrorAndTheEndpointStaysUp) {
  HttpLimits limits;
  limits.request_deadline = milliseconds(1000);
  const auto e = Serving(limits);
  const std::string big = "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(64 << 10, 'a') + "\r\n\r\n";
  const std::string r = Request(e->port(), big);
  EXPECT_TRUE(r.empty() || (StatusOf(r) >= 400 && StatusOf(r) < 500)) << r.substr(0, 200);
  for (const char* bad : {"GARBAGE\r\n\r\n", "GET /metrics\r\n\r\n", "\r\n\r\n\r\n", "GET \x01\xff HTTP/1.1\r\n\r\n"}) {
    // 400, 404 for a path that is not /metrics, or closed without a reply (at the latest at the deadline)
    const int status = StatusOf(Request(e->port(), bad));
    EXPECT_TRUE(status == 0 || status == 400 || status == 404) << status;
  }
  EXPECT_EQ(StatusOf(Request(e->port(), "GET /metrics HTTP/9.9\r\n\r\n")) / 100, 5);
  EXPECT_EQ(StatusOf(Request(e->port(), "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")), 405);
  // libmicrohttpd's own errors for a Content-Length it cannot read or hold (their heads come twice: FUZZING.md).
  EXPECT_EQ(StatusOf(Request(e->port(), "GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: -\r\n\r\n")), 400);
  EXPECT_EQ(StatusOf(Request(e->port(), "GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: " +
                                            std::string(26, '9') + "\r\n\r\n")),
            413);
  EXPECT_EQ(StatusOf(Get(e->port(), "/other")), 404);
  const std::string ok = Get(e->port(), "/metrics");
  EXPECT_EQ(StatusOf(ok), 200);
  EXPECT_NE(ok.find("\r\n\r\nx 1\n"), std::string::npos) << ok;
  // HTTP/1.0 without a Host header, as the old endpoint's clients sent.
  EXPECT_EQ(StatusOf(Request(e->port(), "GET /metrics HTTP/1.0\r\n\r\n")), 200);
}

}  // namespace
}  // namespace reel
