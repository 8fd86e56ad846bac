// What one coordinator accepts at most: the operator's bounds on queue length, job shape, prompt size and gRPC
// message size, each set by the `reel coordinator` / `reel serve` flag named beside it (docs/SECURITY.md).
#pragma once

#include <cstdint>

namespace reel {

struct Limits {
  int max_queued_jobs = 1000;               // --max-queued-jobs: jobs waiting for their first stage
  int max_frames = 161;                     // --max-frames
  int max_height = 2048;                    // --max-height
  int max_width = 2048;                     // --max-width
  int64_t max_pixels = 1 << 20;             // --max-pixels: height × width of one frame
  int max_steps = 1000;                     // --max-steps
  int max_prompt_bytes = 16 << 10;          // --max-prompt-bytes: the prompt and the negative prompt, each
  int64_t max_message_bytes = 64 << 20;     // --max-message-bytes: the largest gRPC message a server receives
};

}  // namespace reel
