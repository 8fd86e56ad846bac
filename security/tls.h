// TLS material from PEM files: a certificate and its key, and the CA that signs every certificate of the
// cluster. Checked when loaded, so a wrong file is one clear line at startup rather than a failed handshake later.
#pragma once

#include <string>

namespace reel {

// File paths as given, and the flag (or environment variable) each came from, for errors.
struct TlsFiles {
  std::string cert, key, ca;
  std::string cert_name = "--tls-cert", key_name = "--tls-key", ca_name = "--tls-ca";

  bool any() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

// PEM text. Empty when TLS is off.
struct TlsMaterial {
  std::string cert_pem, key_pem, ca_pem;

  bool enabled() const { return !cert_pem.empty(); }
};

// Reads the three files (all or none): each must parse, the key must match the certificate, and the certificate
// must verify against the CA now (signature and validity dates). Throws InvalidArgument naming the flag, the file
// and what is wrong.
TlsMaterial LoadTls(const TlsFiles& files);

// Whether the certificate in `cert_pem` names `host` (an IP address, "[v6]", or a DNS name) as peers verify it:
// "" when it does, else what it names instead ("it names DNS:localhost, IP:127.0.0.1").
std::string CertificateNameProblem(const std::string& cert_pem, const std::string& host);

}  // namespace reel
