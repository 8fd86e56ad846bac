// A child process for tests: started with fork and exec, its output in a log file, reaped when it goes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace reel::testing {

// A child process with its output in a log file.
class Process {
 public:
  Process(const std::vector<std::string>& args, const std::filesystem::path& log) : log_(log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      // A test that crashes must not leave its cluster running: the child goes with the test process. (With the
      // thread that forked it, in fact: start processes from a thread that lives as long as they should.)
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~Process() { Stop(SIGTERM); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Signals and reaps it (SIGKILL after 5 s); returns its exit status as waitpid reports it.
  int Stop(int sig) {
    if (pid_ <= 0) return status_;
    ::kill(pid_, sig);
    for (int i = 0; i < 500; ++i) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    pid_ = -1;
    return status_;
  }
  // Stops it without waiting for a graceful drain: a signal, then after a moment a second one (which cuts a drain
  // short), then Stop's SIGKILL after 5 s.
  int StopNow() {
    if (pid_ <= 0) return status_;
    ::kill(pid_, SIGTERM);
    if (Wait(0.3) != -1) return status_;
    return Stop(SIGTERM);
  }
  // Sends a signal and returns at once (SIGSTOP, SIGCONT, a SIGTERM whose drain the caller watches).
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  pid_t pid() const { return pid_; }
  // Waits for it to exit by itself (up to `seconds`); -1 if it is still running.
  int Wait(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (pid_ > 0 && std::chrono::steady_clock::now() < end) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pid_ > 0 ? -1 : status_;
  }
  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  std::filesystem::path log_;
};

}  // namespace reel::testing
