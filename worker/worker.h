// `reel worker`: one process per device. Registers with the coordinator, heartbeats, loads the stages it is
// assigned with the strategy it is assigned, runs them, and serves the tensors they produce to other workers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "security/security_flags.h"

namespace reel {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:7070";
  std::string device = "cpu";       // cpu | cuda:N
  std::string name;                 // default: HOST-DEVICE-PID
  std::string listen = "127.0.0.1:0";
  std::string metrics;              // HOST:PORT for /metrics, empty for none
  int64_t device_memory = 0;        // simulated capacity on cpu, 0 = unlimited
  int threads = 0;                  // intra-op threads, 0 = all cores
  bool no_oom_retry = false;        // a stage out of device memory fails instead of retrying cheaper
  SecurityFlags security;           // TLS, token file, --insecure (docs/SECURITY.md)
  std::vector<std::string> model_roots;      // packages load only from under these; none: the model cache
  int64_t max_message_bytes = 64 << 20;      // the largest gRPC message it receives or sends
  int drain_seconds = 30;  // on SIGTERM: how long it may take to finish its stage and hand over its tensors
  // When it offers to take a rank of a sequence-parallel denoise: "loopback" (only when its address is a loopback
  // one: the group's store and all-to-alls stay on this host), "network" (on any address: they cross the network
  // without TLS or the token, for trusted networks only), "off".
  std::string sequence_parallel = "loopback";
};

// Validates the options (InvalidArgument naming the flag), serves until SIGINT/SIGTERM, then drains: finishes the
// stage it runs, tells the coordinator it is leaving (nothing new is sent to it, it is not taken for lost), stays
// until no job needs a tensor it holds (at most --drain-seconds; a second signal cuts it short), and returns the
// exit code (0).
int RunWorker(const WorkerOptions& options);

}  // namespace reel
