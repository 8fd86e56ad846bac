// A program on a pseudo-terminal and the screen it draws: the pty's output is applied to a small VT100/xterm
// screen model (cursor moves, erases, the alternate screen, cursor visibility, autowrap) so tests read rows of
// text as a person would see them, not raw escape bytes.
#pragma once

#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <utmp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace reel::testing {

class TerminalScreen {
 public:
  TerminalScreen(int cols, int rows) : cols_(cols), rows_(rows) { Clear(main_), Clear(alt_); }

  // A resized terminal, blanked: what shows afterwards is only what the program draws again.
  void Resize(int cols, int rows) {
    cols_ = cols;
    rows_ = rows;
    Clear(main_);
    Clear(alt_);
    row_ = std::min(row_, rows_ - 1);
    col_ = std::min(col_, cols_ - 1);
    wrap_pending_ = false;
    overflowed_ = false;
  }

  void Feed(std::string_view bytes) {
    for (const char ch : bytes) Byte(static_cast<unsigned char>(ch));
  }

  // The visible rows, trailing blanks trimmed.
  std::vector<std::string> Rows() const {
    std::vector<std::string> out;
    for (const auto& r : Grid()) {
      std::string s = r;
      while (!s.empty() && s.back() == ' ') s.pop_back();
      out.push_back(s);
    }
    return out;
  }
  std::string Text() const {
    std::string t;
    for (const auto& r : Rows()) t += r + "\n";
    return t;
  }
  bool alternate() const { return alternate_; }
  bool cursor_visible() const { return cursor_visible_; }
  // A character was written past the right margin and wrapped onto the next row: a line wider than the screen.
  bool overflowed() const { return overflowed_; }
  int scrolls() const { return scrolls_; }  // rows scrolled off the top: output taller than the screen

 private:
  enum class State { kGround, kEscape, kCsi, kOsc, kOscEscape, kCharset };

  using Grid_ = std::vector<std::string>;
  void Clear(Grid_& g) { g.assign(rows_, std::string(cols_, ' ')); }
  Grid_& Grid() { return alternate_ ? alt_ : main_; }
  const Grid_& Grid() const { return alternate_ ? alt_ : main_; }

  void LineFeed() {
    if (row_ + 1 < rows_) {
      ++row_;
      return;
    }
    Grid_& g = Grid();
    g.erase(g.begin());
    g.push_back(std::string(cols_, ' '));
    ++scrolls_;
  }

  void Print(char c) {
    if (wrap_pending_) {
      overflowed_ = true;
      wrap_pending_ = false;
      col_ = 0;
      LineFeed();
    }
    Grid()[row_][col_] = c;
    if (col_ + 1 < cols_) ++col_;
    else wrap_pending_ = true;
  }

  int Param(size_t i, int fallback) const {
    std::vector<std::string> parts(1);
    for (char c : params_) {
      if (c == ';') parts.emplace_back();
      else if (c >= '0' && c <= '9') parts.back() += c;
    }
    if (i >= parts.size() || parts[i].empty()) return fallback;
    return std::stoi(parts[i]);
  }

  void Erase(int row, int from, int to) {
    for (int c = std::max(from, 0); c < std::min(to, cols_); ++c) Grid()[row][c] = ' ';
  }

  void Csi(char final) {
    const bool priv = !params_.empty() && params_[0] == '?';
    switch (final) {
      case 'H':
      case 'f':
        row_ = std::clamp(Param(0, 1) - 1, 0, rows_ - 1);
        col_ = std::clamp(Param(1, 1) - 1, 0, cols_ - 1);
        wrap_pending_ = false;
        break;
      case 'A': row_ = std::max(row_ - Param(0, 1), 0), wrap_pending_ = false; break;
      case 'B': row_ = std::min(row_ + Param(0, 1), rows_ - 1), wrap_pending_ = false; break;
      case 'C': col_ = std::min(col_ + Param(0, 1), cols_ - 1), wrap_pending_ = false; break;
      case 'D': col_ = std::max(col_ - Param(0, 1), 0), wrap_pending_ = false; break;
      case 'G': col_ = std::clamp(Param(0, 1) - 1, 0, cols_ - 1), wrap_pending_ = false; break;
      case 'd': row_ = std::clamp(Param(0, 1) - 1, 0, rows_ - 1), wrap_pending_ = false; break;
      case 'J': {
        const int mode = Param(0, 0);
        if (mode == 0) {
          Erase(row_, col_, cols_);
          for (int r = row_ + 1; r < rows_; ++r) Erase(r, 0, cols_);
        } else if (mode == 1) {
          for (int r = 0; r < row_; ++r) Erase(r, 0, cols_);
          Erase(row_, 0, col_ + 1);
        } else {
          for (int r = 0; r < rows_; ++r) Erase(r, 0, cols_);
        }
        wrap_pending_ = false;
        break;
      }
      case 'K': {
        const int mode = Param(0, 0);
        if (mode == 0) Erase(row_, col_, cols_);
        else if (mode == 1) Erase(row_, 0, col_ + 1);
        else Erase(row_, 0, cols_);
        wrap_pending_ = false;
        break;
      }
      case 'h':
      case 'l': {
        if (!priv) break;
        const bool on = final == 'h';
        const int mode = Param(0, 0);
        if (mode == 25) cursor_visible_ = on;
        if ((mode == 1049 || mode == 1047 || mode == 47) && on != alternate_) {
          if (on) {
            saved_row_ = row_, saved_col_ = col_;
            alternate_ = true;
            Clear(alt_);
          } else {
            alternate_ = false;
            row_ = saved_row_, col_ = saved_col_;
          }
          wrap_pending_ = false;
        }
        break;
      }
      default: break;  // SGR (m) and the rest change nothing a test reads
    }
  }

  void Byte(unsigned char b) {
    switch (state_) {
      case State::kGround:
        if (b == 0x1b) state_ = State::kEscape;
        else if (b == '\r') col_ = 0, wrap_pending_ = false;
        else if (b == '\n') LineFeed(), wrap_pending_ = false;
        else if (b == '\b') col_ = std::max(col_ - 1, 0), wrap_pending_ = false;
        else if (b == '\t') col_ = std::min((col_ / 8 + 1) * 8, cols_ - 1);
        else if (b >= 0x20 && b < 0x7f) Print(static_cast<char>(b));
        else if (b >= 0xc0) Print('?');  // a UTF-8 lead byte: one cell; continuation bytes take none
        break;
      case State::kEscape:
        if (b == '[') state_ = State::kCsi, params_.clear();
        else if (b == ']') state_ = State::kOsc;
        else if (b == '(' || b == ')') state_ = State::kCharset;
        else state_ = State::kGround;  // ESC 7, ESC 8, ESC =, ...: nothing a test reads
        break;
      case State::kCsi:
        if (b >= 0x40 && b <= 0x7e) {
          Csi(static_cast<char>(b));
          state_ = State::kGround;
        } else {
          params_ += static_cast<char>(b);
        }
        break;
      case State::kOsc:
        if (b == 0x07) state_ = State::kGround;
        else if (b == 0x1b) state_ = State::kOscEscape;
        break;
      case State::kOscEscape: state_ = State::kGround; break;
      case State::kCharset: state_ = State::kGround; break;
    }
  }

  int cols_, rows_;
  Grid_ main_, alt_;
  int row_ = 0, col_ = 0, saved_row_ = 0, saved_col_ = 0;
  bool wrap_pending_ = false, alternate_ = false, cursor_visible_ = true, overflowed_ = false;
  int scrolls_ = 0;
  State state_ = State::kGround;
  std::string params_;
};

// A child process whose stdin, stdout and stderr are a pseudo-terminal's slave side (its controlling terminal);
// the test holds the master and a second handle on the slave, to read the terminal's modes afterwards.
class PtyProcess {
 public:
  PtyProcess(const std::vector<std::string>& args, int cols, int rows) : screen_(cols, rows) {
    winsize ws{};
    ws.ws_col = static_cast<unsigned short>(cols);
    ws.ws_row = static_cast<unsigned short>(rows);
    if (::openpty(&master_, &slave_, nullptr, nullptr, &ws) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(master_);
      ::login_tty(::dup(slave_));  // a new session with the pty as its controlling terminal, on fds 0-2
      ::close(slave_);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::fcntl(master_, F_SETFL, ::fcntl(master_, F_GETFL) | O_NONBLOCK);
  }
  ~PtyProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) ::close(master_);
    if (slave_ >= 0) ::close(slave_);
  }
  PtyProcess(const PtyProcess&) = delete;
  PtyProcess& operator=(const PtyProcess&) = delete;

  bool started() const { return pid_ > 0; }
  const TerminalScreen& screen() const { return screen_; }
  const std::string& raw() const { return raw_; }

  // Applies whatever the program has written so far to the screen.
  void Pump() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(master_, buf, sizeof buf);
      if (n <= 0) break;
      raw_.append(buf, static_cast<size_t>(n));
      screen_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    }
  }

  // Pumps until `pred(screen)` holds or `seconds` pass; returns whether it held.
  bool WaitScreen(const std::function<bool(const TerminalScreen&)>& pred, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      Pump();
      if (pred(screen_)) return true;
      if (std::chrono::steady_clock::now() >= end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Typed keys (a Ctrl-C typed as "\x03" signals the program, as a terminal does).
  void Type(const std::string& keys) { (void)!::write(master_, keys.data(), keys.size()); }

  // The window changes size: the kernel sends SIGWINCH to the program; the model is blanked to the new size.
  void Resize(int cols, int rows) {
    Pump();
    winsize ws{};
    ws.ws_col = static_cast<unsigned short>(cols);
    ws.ws_row = static_cast<unsigned short>(rows);
    screen_.Resize(cols, rows);
    ::ioctl(master_, TIOCSWINSZ, &ws);
  }

  // The terminal's modes now (what the program set, or put back).
  termios Modes() const {
    termios t{};
    ::tcgetattr(slave_, &t);
    return t;
  }

  // Waits for the program to exit, pumping its output; the exit status as waitpid gives it, -1 if still running.
  int Wait(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (pid_ > 0) {
      Pump();
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
        pid_ = -1;
        Pump();
        break;
      }
      if (std::chrono::steady_clock::now() >= end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return status_;
  }

 private:
  TerminalScreen screen_;
  std::string raw_;
  int master_ = -1, slave_ = -1;
  pid_t pid_ = -1;
  int status_ = -1;
};

}  // namespace reel::testing
