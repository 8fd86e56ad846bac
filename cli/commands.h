// Subcommand registration: each Add*Command wires flags to a callback that runs the command.
#pragma once

#include <CLI/CLI.hpp>

namespace reel::cli {

void AddModelCommand(CLI::App& app);
void AddGenerateCommand(CLI::App& app);

}  // namespace reel::cli
