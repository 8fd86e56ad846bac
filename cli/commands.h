// Subcommand registration: each Add*Command wires flags to a callback that runs the command.
#pragma once

#include <CLI/CLI.hpp>

namespace reel::cli {

void AddModelCommand(CLI::App& app);
void AddGenerateCommand(CLI::App& app);
void AddClusterCommands(CLI::App& app);
void AddPlanCommand(CLI::App& app);

// What main returns when a command finishes without throwing (long-running services set it).
inline int& CommandExitCode() {
  static int code = 0;
  return code;
}

}  // namespace reel::cli
