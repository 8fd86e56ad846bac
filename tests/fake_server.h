// A fake plaintext server for the tests of what clients send (issue 19): it listens on a loopback address (127.0.0.2
// stands in for a remote host), accepts every connection and records every byte, answering nothing; with
// `hang_up` it closes each connection after its first bytes, so a client fails at once instead of at its deadline.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace reel::testing {

class RecordingServer {
 public:
  explicit RecordingServer(const std::string& ip = "127.0.0.2", bool hang_up = false) : ip_(ip), hang_up_(hang_up) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 16) != 0) return;
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~RecordingServer() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    ::close(fd_);
  }
  RecordingServer(const RecordingServer&) = delete;
  RecordingServer& operator=(const RecordingServer&) = delete;

  std::string address() const { return ip_ + ":" + std::to_string(port_); }
  int port() const { return port_; }  // 0: could not listen
  int connections() const { return connections_; }
  std::string received() const {
    std::lock_guard lock(mu_);
    return bytes_;
  }

 private:
  void Loop() {
    std::vector<pollfd> fds = {{fd_, POLLIN, 0}};
    while (!stop_) {
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      for (size_t i = fds.size(); i-- > 0;) {
        if (!fds[i].revents) continue;
        if (i == 0) {
          const int c = ::accept(fd_, nullptr, nullptr);
          if (c >= 0) fds.push_back({c, POLLIN, 0}), ++connections_;
          continue;
        }
        char buf[4096];
        const ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, 0);
        if (n > 0) {
          std::lock_guard lock(mu_);
          bytes_.append(buf, static_cast<size_t>(n));
        }
        if (n <= 0 || hang_up_) {
          ::close(fds[i].fd);
          fds.erase(fds.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
    }
    for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i].fd);
  }

  std::string ip_;
  bool hang_up_ = false;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  mutable std::mutex mu_;
  std::string bytes_;
  std::thread thread_;
};

}  // namespace reel::testing
