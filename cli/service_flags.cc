#include "cli/service_flags.h"

#include <filesystem>
#include <memory>

#include "security/transport_security.h"

namespace reel::cli {

namespace {

void AddFiles(CLI::App& c, SecurityFlags& f) {
  c.add_option("--tls-cert", f.tls.cert, "PEM certificate this process presents (TLS on every connection)");
  c.add_option("--tls-key", f.tls.key, "PEM private key of --tls-cert");
  c.add_option("--tls-ca", f.tls.ca, "PEM CA certificate that signs every certificate of the cluster");
  c.add_option("--token-file", f.token_file, "File holding the cluster's bearer token (required on every call)");
}

}  // namespace

void AddServerSecurityFlags(CLI::App& c, SecurityFlags& f) {
  AddFiles(c, f);
  c.add_flag("--insecure", f.insecure, "Allow a non-loopback --listen without TLS and a token (logs a warning)");
}

void AddClientSecurityFlags(CLI::App& c) {
  // Set as they are parsed: one client command runs per process, and every channel it opens (ChannelTo) uses them.
  auto flags = std::make_shared<SecurityFlags>();
  auto set = [flags](std::string SecurityFlags::*field) {
    return [flags, field](const std::string& v) {
      (*flags).*field = v;
      SetClientSecurityFlags(*flags);
    };
  };
  auto set_tls = [flags](std::string TlsFiles::*field) {
    return [flags, field](const std::string& v) {
      flags->tls.*field = v;
      SetClientSecurityFlags(*flags);
    };
  };
  c.add_option_function<std::string>("--tls-cert", set_tls(&TlsFiles::cert),
                                     "PEM client certificate (or $REEL_TLS_CERT)");
  c.add_option_function<std::string>("--tls-key", set_tls(&TlsFiles::key),
                                     "PEM private key of --tls-cert (or $REEL_TLS_KEY)");
  c.add_option_function<std::string>("--tls-ca", set_tls(&TlsFiles::ca),
                                     "PEM CA certificate that signs the cluster's certificates (or $REEL_TLS_CA)");
  c.add_option_function<std::string>("--token-file", set(&SecurityFlags::token_file),
                                     "File holding the cluster's bearer token (or $REEL_TOKEN_FILE)");
}

void AddLimitFlags(CLI::App& c, Limits& l) {
  c.add_option("--max-queued-jobs", l.max_queued_jobs, "Jobs waiting to start; beyond it SubmitJob is refused")
      ->default_val(l.max_queued_jobs);
  c.add_option("--max-frames", l.max_frames, "Most frames a job may ask for")->default_val(l.max_frames);
  c.add_option("--max-height", l.max_height, "Largest height a job may ask for")->default_val(l.max_height);
  c.add_option("--max-width", l.max_width, "Largest width a job may ask for")->default_val(l.max_width);
  c.add_option("--max-pixels", l.max_pixels, "Largest height x width of one frame")->default_val(l.max_pixels);
  c.add_option("--max-steps", l.max_steps, "Most denoising steps a job may ask for")->default_val(l.max_steps);
  c.add_option("--max-prompt-bytes", l.max_prompt_bytes, "Longest prompt and negative prompt, each, in bytes")
      ->default_val(l.max_prompt_bytes);
  c.add_option("--max-message-bytes", l.max_message_bytes, "Largest gRPC message the servers receive")
      ->default_val(l.max_message_bytes);
}

void AddModelRootFlag(CLI::App& c, std::vector<std::string>& roots) {
  c.add_option("--model-root", roots,
               "Directory package directories must lie under (repeatable; default: the model cache)");
}

std::vector<std::string> WorkerArgs(const SecurityFlags& s, const std::vector<std::string>& roots, const Limits& l) {
  std::vector<std::string> args;
  auto absolute = [](const std::string& p) { return std::filesystem::absolute(p).string(); };
  for (const auto& [flag, value] : {std::pair{"--tls-cert", s.tls.cert}, {"--tls-key", s.tls.key},
                                    {"--tls-ca", s.tls.ca}, {"--token-file", s.token_file}})
    if (!value.empty()) args.insert(args.end(), {flag, absolute(value)});
  for (const auto& r : roots) args.insert(args.end(), {"--model-root", absolute(r)});
  args.insert(args.end(), {"--max-message-bytes", std::to_string(l.max_message_bytes)});
  return args;
}

}  // namespace reel::cli
