// A StageProfile from what a runtime measured: shared by `reel generate` and workers so both record the same.
#pragma once

#include <cstdint>
#include <string>

#include "package/job_request.h"
#include "package/manifest.h"
#include "profiler/stage_profile.h"
#include "runtime/stage_executor.h"

namespace reel {

struct ProfileContext {
  const Manifest* manifest = nullptr;
  GenerateRequest request;
  int64_t device_capacity = 0;
  int64_t peak_host_rss = 0;
  std::string strategy;
  std::string weight_format;
};

// `error` is the failure's line when the stage ran out of device memory (outcome "oom"), else empty.
StageProfile ProfileOf(StageKind kind, const StageStats& st, const ProfileContext& c, const std::string& oom = "");

}  // namespace reel
