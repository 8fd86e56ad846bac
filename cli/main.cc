// `reel`: the command-line front end. Each subcommand parses flags into plain structs and calls the library.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>
#include <grpc/support/log.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "common/error.h"

namespace {

// gRPC's own log lines ("E1207 ... Handshake failed", "No match found for server name" once a second) never stand in
// for Reel's one-line errors on a user's terminal: they go to Reel's log at debug level. Setting $GRPC_VERBOSITY
// asks for gRPC's own logging instead, as usual.
void RouteGrpcLog(gpr_log_func_args* args) {
  spdlog::debug("grpc: {}:{}: {}", args->file ? args->file : "?", args->line, args->message ? args->message : "");
}

}  // namespace

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("reel");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  if (!std::getenv("GRPC_VERBOSITY")) gpr_set_log_function(RouteGrpcLog);

  CLI::App app{"Reel: runs CogVideoX-style video-diffusion pipelines on the devices you have"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "reel 0.1.0");
  reel::cli::AddModelCommand(app);
  reel::cli::AddGenerateCommand(app);
  reel::cli::AddClusterCommands(app);
  reel::cli::AddPlanCommand(app);
  reel::cli::AddTuneCommand(app);
  reel::cli::AddTopCommand(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  } catch (const reel::Error& e) {
    std::fprintf(stderr, "reel: error: %s\n", *e.what() ? e.what() : "(no detail: a bug in reel, please report it)");
    return reel::ExitCodeFor(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "reel: error: %s\n", e.what());
    return 1;
  }
  return reel::cli::CommandExitCode();
}
