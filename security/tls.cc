#include "security/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <openssl/x509_vfy.h>

#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace reel {

namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Key = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Store = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using StoreCtx = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

std::string ReadPem(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument(fmt::format("{} {}: cannot read the file; accepted a readable PEM file", flag, path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.find("-----BEGIN ") == std::string::npos)
    throw InvalidArgument(fmt::format("{} {}: not PEM (no -----BEGIN line); accepted a PEM file", flag, path));
  return text;
}

Bio BioOf(const std::string& pem) { return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))); }

Cert FirstCert(const std::string& pem, const std::string& flag, const std::string& path) {
  ERR_clear_error();
  Bio bio = BioOf(pem);
  Cert c(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!c) throw InvalidArgument(fmt::format("{} {}: no PEM certificate in it; accepted an X.509 certificate", flag, path));
  return c;
}

}  // namespace

TlsMaterial LoadTls(const TlsFiles& f) {
  TlsMaterial m;
  if (!f.any()) return m;
  for (const auto& [value, name] : {std::pair{f.cert, f.cert_name}, {f.key, f.key_name}, {f.ca, f.ca_name}})
    if (value.empty())
      throw InvalidArgument(fmt::format("{}: missing; {}, {} and {} go together (mutual TLS needs all three)", name,
                                        f.cert_name, f.key_name, f.ca_name));
  m.cert_pem = ReadPem(f.cert, f.cert_name);
  m.key_pem = ReadPem(f.key, f.key_name);
  m.ca_pem = ReadPem(f.ca, f.ca_name);

  Cert cert = FirstCert(m.cert_pem, f.cert_name, f.cert);
  ERR_clear_error();
  Key key;
  {
    Bio bio = BioOf(m.key_pem);
    key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  }
  if (!key)
    throw InvalidArgument(fmt::format("{} {}: no unencrypted PEM private key in it; accepted a PEM private key without "
                                      "a passphrase",
                                      f.key_name, f.key));
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    throw InvalidArgument(fmt::format("{} {}: does not match the certificate in {} {}; accepted the key the "
                                      "certificate was issued for",
                                      f.key_name, f.key, f.cert_name, f.cert));

  // Every certificate in the CA file is trusted; the first one (and any intermediates) of the cert file chain up.
  Store store(X509_STORE_new());
  int cas = 0;
  {
    Bio bio = BioOf(m.ca_pem);
    while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
      X509_STORE_add_cert(store.get(), ca);
      X509_free(ca);
      ++cas;
    }
    ERR_clear_error();
  }
  if (cas == 0)
    throw InvalidArgument(fmt::format("{} {}: no PEM certificate in it; accepted the CA certificate(s)", f.ca_name, f.ca));
  STACK_OF(X509)* chain = sk_X509_new_null();
  {
    Bio bio = BioOf(m.cert_pem);
    X509* first = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    X509_free(first);
    while (X509* extra = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) sk_X509_push(chain, extra);
    ERR_clear_error();
  }
  StoreCtx ctx(X509_STORE_CTX_new());
  X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), chain);
  const int ok = X509_verify_cert(ctx.get());
  const int err = X509_STORE_CTX_get_error(ctx.get());
  sk_X509_pop_free(chain, X509_free);
  if (ok != 1)
    throw InvalidArgument(fmt::format("{} {}: does not verify against {} {} ({}); accepted a certificate signed by "
                                      "that CA and valid now",
                                      f.cert_name, f.cert, f.ca_name, f.ca, X509_verify_cert_error_string(err)));
  return m;
}

std::string CertificateNameProblem(const std::string& cert_pem, const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  Bio bio = BioOf(cert_pem);
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!cert) return "it holds no certificate";
  in6_addr any{};
  const bool ip = inet_pton(AF_INET, host.c_str(), &any) == 1 || inet_pton(AF_INET6, host.c_str(), &any) == 1;
  if (ip ? X509_check_ip_asc(cert.get(), host.c_str(), 0) == 1
         : X509_check_host(cert.get(), host.data(), host.size(), 0, nullptr) == 1)
    return "";
  std::string names;
  auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
    std::string one;
    if (n->type == GEN_DNS) {
      one = "DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(n->d.dNSName)),
                                 static_cast<size_t>(ASN1_STRING_length(n->d.dNSName)));
    } else if (n->type == GEN_IPADD) {
      char text[INET6_ADDRSTRLEN] = "?";
      const int len = ASN1_STRING_length(n->d.iPAddress);
      inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(n->d.iPAddress), text, sizeof text);
      one = std::string("IP:") + text;
    }
    if (!one.empty()) names += (names.empty() ? "" : ", ") + one;
  }
  GENERAL_NAMES_free(sans);
  return names.empty() ? "it has no subjectAltName DNS or IP entry" : "it names " + names;
}

}  // namespace reel
