// `reel worker`: one process per device. Registers with the coordinator, heartbeats, loads the stages it is
// assigned with the strategy it is assigned, runs them, and serves the tensors they produce to other workers.
#pragma once

#include <cstdint>
#include <string>

namespace reel {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:7070";
  std::string device = "cpu";       // cpu | cuda:N
  std::string name;                 // default: HOST-DEVICE-PID
  std::string listen = "127.0.0.1:0";
  std::string metrics;              // HOST:PORT for /metrics, empty for none
  int64_t device_memory = 0;        // simulated capacity on cpu, 0 = unlimited
  int threads = 0;                  // intra-op threads, 0 = all cores
};

// Validates the options (InvalidArgument naming the flag), serves until SIGINT/SIGTERM, returns the exit code.
int RunWorker(const WorkerOptions& options);

}  // namespace reel
