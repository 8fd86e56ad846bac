// Subcommand registration: each Add*Command wires flags to a callback that runs the command.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "reel/v1/coordinator.pb.h"

namespace reel::cli {

void AddModelCommand(CLI::App& app);
void AddGenerateCommand(CLI::App& app);
void AddClusterCommands(CLI::App& app);
void AddPlanCommand(CLI::App& app);
void AddTuneCommand(CLI::App& app);
void AddTopCommand(CLI::App& app);

// `reel plan --coordinator`: the job shape and options sent to the coordinator's PlanJob (0 = the model's default).
struct PlanQuery {
  std::string model, objective;  // empty: the coordinator's --plan-objective
  int frames = 0, height = 0, width = 0, steps = 0;
  std::optional<double> guidance;
  double margin = 0.10;
  bool explain = false, allow_int8 = false;
};
// The coordinator's plan report (planner/plan_report.h) as JSON text; throws the client commands' errors.
std::string PlanOnCoordinator(const std::string& address, const PlanQuery& query);

// `reel tune --coordinator`: streams the coordinator's Tune events to `each`; throws the client commands' errors.
void TuneOnCoordinator(const std::string& address, const reel::v1::TuneClusterRequest& request,
                       const std::function<void(const reel::v1::TuneClusterEvent&)>& each);

// What main returns when a command finishes without throwing (long-running services set it).
inline int& CommandExitCode() {
  static int code = 0;
  return code;
}

}  // namespace reel::cli
