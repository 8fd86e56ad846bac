// SequenceGroup on c10d: a TCPStore for the rendezvous (rank 0 serves it) and a Gloo process group for the
// all-to-alls. LibTorch's wheel ships c10d's headers but not Gloo's; the declarations ProcessGroupGloo.hpp needs come
// from Debian's libgloo-dev (headers only: the code that runs is the Gloo inside libtorch_cpu), so a build without
// them has no sequence parallelism and says so.
#include "runtime/sequence_parallel.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "common/error.h"

#if REEL_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#if REEL_HAVE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace reel {

Shares ShareEvenly(int64_t n, int ranks) {
  Shares s;
  int64_t offset = 0;
  for (int r = 0; r < ranks; ++r) {
    const int64_t c = n / ranks + (r < n % ranks ? 1 : 0);
    s.counts.push_back(c);
    s.offsets.push_back(offset);
    offset += c;
  }
  return s;
}

SequenceGroupSpec ParseSequenceGroup(const std::string& text, const std::string& flag) {
  const std::string accepted = "accepted RANK/SIZE@HOST:PORT with 0 <= RANK < SIZE <= 64, such as 1/2@127.0.0.1:29500";
  const auto slash = text.find('/'), at = text.find('@');
  const auto colon = text.rfind(':');
  SequenceGroupSpec spec;
  try {
    if (slash == std::string::npos || at == std::string::npos || colon == std::string::npos || slash > at ||
        colon < at)
      throw std::invalid_argument("shape");
    size_t used = 0;
    spec.rank = std::stoi(text.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("rank");
    spec.size = std::stoi(text.substr(slash + 1, at - slash - 1), &used);
    if (used != at - slash - 1) throw std::invalid_argument("size");
    const int port = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1 || port < 1 || port > 65535 || colon == at + 1)
      throw std::invalid_argument("port");
  } catch (const std::exception&) {
    throw InvalidArgument(fmt::format("{} '{}': {}", flag, text, accepted));
  }
  if (spec.rank < 0 || spec.size < 1 || spec.size > 64 || spec.rank >= spec.size)
    throw InvalidArgument(fmt::format("{} '{}': {}", flag, text, accepted));
  spec.store = text.substr(at + 1);
  return spec;
}

#if REEL_HAVE_GLOO

namespace {

// The address of this host's interface toward `host` (a UDP socket "connected" there sends nothing): the address
// the other ranks reach this one at, on loopback or across hosts alike.
std::string LocalAddressToward(const std::string& host) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || !res)
    throw InvalidArgument(fmt::format("sequence-parallel store host '{}': not an address or a known host name", host));
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  std::string out;
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof local;
    char buf[INET_ADDRSTRLEN] = {};
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        inet_ntop(AF_INET, &local.sin_addr, buf, sizeof buf))
      out = buf;
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(res);
  if (out.empty()) throw Unavailable(fmt::format("sequence-parallel store host '{}': no route from this host", host));
  return out;
}

// Rank 0's store socket, listening on `host`'s address only (c10d's own would listen on every interface): a group of
// workers on loopback stays on loopback. Port 0 picks a free one; `*bound` is the port it got.
int ListenOn(const std::string& host, int port, int* bound) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res)
    throw InvalidArgument(fmt::format("sequence-parallel store host '{}': not an address or a known host name", host));
  sockaddr_in addr = *reinterpret_cast<const sockaddr_in*>(res->ai_addr);
  freeaddrinfo(res);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd < 0 || ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 128) != 0) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw Unavailable(fmt::format("sequence-parallel store {}:{}: cannot listen there: {}", host, port, why));
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *bound = ntohs(addr.sin_port);
  return fd;
}

}  // namespace

struct SequenceGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> group;
  bool host_copies = false;  // CUDA tensors over Gloo: exchanged from and to the host
};

bool SequenceParallelBuilt() { return true; }

#if REEL_HAVE_C10D_NCCL
bool SequenceParallelNcclBuilt() { return true; }
#else
bool SequenceParallelNcclBuilt() { return false; }
#endif

SequenceGroup::SequenceGroup(const SequenceGroupSpec& spec, const std::function<void(const std::string&)>& listening)
    : spec_(spec), impl_(std::make_unique<Impl>()) {
  const auto colon = spec.store.rfind(':');
  const std::string host = spec.store.substr(0, colon);
  const int port = std::stoi(spec.store.substr(colon + 1));
  const std::string who = fmt::format("sequence-parallel rank {} of {} (store {})", spec.rank, spec.size, spec.store);
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    if (spec.rank == 0) {  // the store takes the socket over
      int bound = 0;
      o.masterListenFd = ListenOn(host, port, &bound);
      o.port = static_cast<uint16_t>(bound);
    }
    o.isServer = spec.rank == 0;
    o.numWorkers = spec.size;
    o.waitWorkers = false;
    o.timeout = spec.timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, o);
    impl_->store = store;
    if (spec.rank == 0) {
      spec_.store = fmt::format("{}:{}", host, store->getPort());
      if (listening) listening(spec_.store);
    }
#if REEL_HAVE_C10D_NCCL
    if (spec.device.is_cuda()) {
      // A collective that waits past the timeout throws from wait() (blocking wait) instead of the watchdog ending
      // the process: a lost peer fails the stage, the worker lives on. Read when the group is made.
      ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = spec.timeout;
      auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, spec.rank, spec.size, options);
      // Joins the communicator now, on this device, so a rank that never comes fails here rather than mid-step.
      group->setBoundDeviceId(spec.device);
      group->eagerConnectSingleDevice(spec.device);
      impl_->group = group;
      backend_ = "nccl";
    }
#endif
    if (!impl_->group) {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->timeout = spec.timeout;
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(LocalAddressToward(host)));
      impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, spec.rank, spec.size, options);
      impl_->host_copies = spec.device.is_cuda();
      backend_ = impl_->host_copies ? "gloo (host copies)" : "gloo";
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (const auto nl = m.find('\n'); nl != std::string::npos) m.resize(nl);
    throw Unavailable(fmt::format("{}: could not join the group within {} ms: {}", who, spec.timeout.count(), m));
  }
}

SequenceGroup::~SequenceGroup() = default;

std::vector<torch::Tensor> SequenceGroup::Exchange(const std::vector<torch::Tensor>& pieces,
                                                   const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<int64_t> in_splits, out_splits;
  std::vector<torch::Tensor> flat;
  for (const auto& p : pieces) {
    flat.push_back(p.contiguous().view(-1));
    in_splits.push_back(p.numel());
  }
  int64_t total = 0;
  for (const auto& s : shapes) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    out_splits.push_back(n);
    total += n;
  }
  const auto started = std::chrono::steady_clock::now();
  torch::Tensor input = torch::cat(flat);
  const torch::Device device = input.device();
  if (impl_->host_copies) input = input.to(torch::kCPU);
  torch::Tensor output = torch::empty({total}, input.options());
  try {
    // Copies: the backend takes the split sizes by reference and moves them away.
    std::vector<int64_t> out_sizes = out_splits, in_sizes = in_splits;
    impl_->group->alltoall_base(output, input, out_sizes, in_sizes)->wait(spec_.timeout);
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (const auto nl = m.find('\n'); nl != std::string::npos) m.resize(nl);
    throw Unavailable(fmt::format("sequence-parallel rank {} of {}: an all-to-all failed (a peer is gone or did not "
                                  "answer within {} ms): {}",
                                  spec_.rank, spec_.size, spec_.timeout.count(), m));
  }
  bytes_sent_ += (input.numel() - in_splits[static_cast<size_t>(spec_.rank)]) * input.element_size();
  if (impl_->host_copies) output = output.to(device);
  exchange_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::vector<torch::Tensor> out;
  int64_t at = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    out.push_back(output.narrow(0, at, out_splits[i]).view(shapes[i]));
    at += out_splits[i];
  }
  return out;
}

#else  // built without Gloo's headers (libgloo-dev): no sequence parallelism

struct SequenceGroup::Impl {};

bool SequenceParallelBuilt() { return false; }
bool SequenceParallelNcclBuilt() { return false; }

SequenceGroup::SequenceGroup(const SequenceGroupSpec& spec, const std::function<void(const std::string&)>&)
    : spec_(spec) {
  throw InvalidArgument(fmt::format("sequence-parallel rank {} of {}: this build of Reel has no sequence parallelism "
                                    "(Gloo's headers, Debian's libgloo-dev, were missing when it was configured)",
                                    spec.rank, spec.size));
}

SequenceGroup::~SequenceGroup() = default;

std::vector<torch::Tensor> SequenceGroup::Exchange(const std::vector<torch::Tensor>&,
                                                   const std::vector<std::vector<int64_t>>&) {
  return {};
}

#endif

torch::Tensor SequenceGroup::TokensToHeads(const torch::Tensor& x, const Shares& tokens, const Shares& heads) {
  const int64_t B = x.size(0), d = x.size(3);
  std::vector<torch::Tensor> pieces;
  std::vector<std::vector<int64_t>> shapes;
  for (int j = 0; j < size(); ++j) {
    pieces.push_back(x.narrow(1, heads.offset(j), heads.count(j)));
    shapes.push_back({B, heads.count(rank()), tokens.count(j), d});
  }
  return torch::cat(Exchange(pieces, shapes), 2);
}

torch::Tensor SequenceGroup::HeadsToTokens(const torch::Tensor& x, const Shares& tokens, const Shares& heads) {
  const int64_t B = x.size(0), d = x.size(3);
  std::vector<torch::Tensor> pieces;
  std::vector<std::vector<int64_t>> shapes;
  for (int j = 0; j < size(); ++j) {
    pieces.push_back(x.narrow(2, tokens.offset(j), tokens.count(j)));
    shapes.push_back({B, heads.count(j), tokens.count(rank()), d});
  }
  return torch::cat(Exchange(pieces, shapes), 1);
}

torch::Tensor SequenceGroup::Gather(const torch::Tensor& x, int64_t dim, const Shares& shares) {
  std::vector<torch::Tensor> pieces(static_cast<size_t>(size()), x);
  std::vector<std::vector<int64_t>> shapes;
  for (int j = 0; j < size(); ++j) {
    std::vector<int64_t> s = x.sizes().vec();
    s[static_cast<size_t>(dim)] = shares.count(j);
    shapes.push_back(s);
  }
  return torch::cat(Exchange(pieces, shapes), dim);
}

}  // namespace reel
