#include "runtime/run_profile.h"

#include <ctime>

namespace reel {

StageProfile ProfileOf(StageKind kind, const StageStats& st, const ProfileContext& c, const std::string& oom) {
  StageProfile p;
  p.stage = StageKindName(kind);
  p.stage_digest = StageDigest(*c.manifest, c.manifest->stage(kind));
  p.device_kind = "cpu";
  p.device_name = c.device_capacity > 0 ? "cpu (simulated)" : "cpu";
  p.device_capacity_bytes = c.device_capacity;
  p.strategy = c.strategy;
  p.dtype = c.weight_format;
  p.frames = c.request.frames;
  p.height = c.request.height;
  p.width = c.request.width;
  p.steps = c.request.steps;
  p.batch = c.request.guidance > 1.0 ? 2 : 1;
  p.outcome = oom.empty() ? "ok" : "oom";
  p.error = oom;
  p.peak_device_bytes = st.peak_device_bytes;
  p.base_device_bytes = std::min(st.base_device_bytes, st.peak_device_bytes);
  p.peak_host_rss_bytes = c.peak_host_rss;
  p.pinned_host_bytes = 0;  // the CPU device has no pinned memory
  p.load_seconds = st.load_seconds;
  p.copy_seconds = st.copy_seconds;
  p.copied_bytes = st.copied_bytes;
  p.compute_seconds = st.compute_seconds;
  p.wall_seconds = st.wall_seconds;
  p.step_seconds = st.step_seconds;
  for (size_t i = 0; i < st.block_seconds.size(); ++i)
    p.block_seconds.push_back(st.block_runs[i] ? st.block_seconds[i] / st.block_runs[i] : 0.0);
  p.recorded_at = static_cast<int64_t>(std::time(nullptr));
  return p;
}

}  // namespace reel
