// From a package and a machine to a plan: the problem the cost model prices for the pipeline's stages, and, when
// nothing fits, the nearest job shapes and budgets that would. What `reel plan` and the coordinator call.
#pragma once

#include <string>
#include <vector>

#include "planner/cost_model.h"
#include "planner/problem.h"
#include "planner/search.h"

namespace reel::planner {

// The stages a job runs, in order: text encoder, image encoder (image-to-video), denoiser, decoder.
std::vector<StageKind> PipelineStages(const Manifest& manifest);

// What a plan may trade for memory beyond strategies and dtypes.
struct PlanningOptions {
  // int8-stored weights cost picture quality (docs/MEMORY.md: ~29 dB PSNR against bf16), so they are offered only
  // when asked for.
  bool allow_int8 = false;
  // Only each stage's package dtype: the numbers `reel generate` computes by default. The coordinator's default
  // placement keeps them (precision is the package author's or the user's choice, not a side effect of placement);
  // `reel plan` and `--plan-dtype any` let the planner pick bf16/f16 where it is faster or smaller.
  bool package_dtype_only = false;
};

// An Option::strategy split into what a worker or runtime sets: "model+slicing+tiling=128" → offload "model",
// slicing, tile 128.
struct StrategyParts {
  std::string offload = "none";
  bool slicing = false;
  int tile = 0;
  int tile_w = 0;  // tiling=HxW: the width where it differs from the height
};
StrategyParts SplitStrategy(const std::string& strategy);
// "T" or "HxW" (digits) into tile and tile_w (0 when square); false for anything else.
bool ParseTile(const std::string& text, int& tile, int& tile_w);

// The manifest's default job shape; `frames`, `height`, `width`, `steps` > 0 override it.
Job JobOf(const Manifest& manifest, int frames = 0, int height = 0, int width = 0, int steps = 0);
// Refuses a job shape the package does not accept, as `reel generate` and `reel submit` would (InvalidArgument
// naming the flag, the value and what is accepted).
void ValidateJob(const Manifest& manifest, const Job& job);

// Every option of every stage on every device of `machine` at `job`, with the stages' output sizes.
Problem BuildProblem(const CostModel& model, const Machine& machine, const Job& job,
                     const PlanningOptions& options = {});

// When `job` fits nowhere on `machine`: what would, each as a phrase a user can act on ("--frames 33",
// "--height 384 --width 576", "32.0 GiB of host RAM per host", "a device with 14.2 GiB"). Empty when it fits or
// when none of those changes helps.
std::vector<std::string> WhatWouldFit(const CostModel& model, const Machine& machine, const Job& job,
                                      Objective objective, const PlanningOptions& options = {});

}  // namespace reel::planner
