// The security settings as a user gives them (paths and switches, no secrets), for option structs that must not
// pull in gRPC: --tls-cert, --tls-key, --tls-ca, --token-file, --insecure.
#pragma once

#include <string>

#include "security/tls.h"

namespace reel {

struct SecurityFlags {
  TlsFiles tls;
  std::string token_file;
  std::string token_file_name = "--token-file";
  bool insecure = false;

  // Clients: empty fields from $REEL_TLS_CERT, $REEL_TLS_KEY, $REEL_TLS_CA and $REEL_TOKEN_FILE.
  SecurityFlags WithEnvironmentDefaults() const;
};

}  // namespace reel
