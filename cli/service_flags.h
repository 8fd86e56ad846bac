// Flags the coordinator, the worker, `reel serve` and the client commands share: TLS, the token file and
// --insecure, the coordinator's limits, and model roots (docs/SECURITY.md).
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "coordinator/limits.h"
#include "security/security_flags.h"

namespace reel::cli {

// --tls-cert, --tls-key, --tls-ca, --token-file and --insecure for a server.
void AddServerSecurityFlags(CLI::App& c, SecurityFlags& flags);
// The same files for a client command (no --insecure); $REEL_TLS_CERT, $REEL_TLS_KEY, $REEL_TLS_CA and
// $REEL_TOKEN_FILE fill in what is not given. They apply to every channel the command opens.
void AddClientSecurityFlags(CLI::App& c);
// --max-queued-jobs, --max-frames, --max-height, --max-width, --max-pixels, --max-steps, --max-prompt-bytes and
// --max-message-bytes.
void AddLimitFlags(CLI::App& c, Limits& limits);
// --model-root DIR, repeatable.
void AddModelRootFlag(CLI::App& c, std::vector<std::string>& roots);

// The flags that give a worker `reel serve` starts the same security, model roots and message limit.
std::vector<std::string> WorkerArgs(const SecurityFlags& security, const std::vector<std::string>& model_roots,
                                    const Limits& limits);

}  // namespace reel::cli
