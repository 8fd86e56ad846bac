// Profiler on against off in one process: the same package and job run alternately with and without the
// trace recorder and the 10 ms memory sampler, so machine noise hits both sides alike. Prints median step times.
// Usage: reel_profiler_overhead PACKAGE_DIR [REPS] [STEPS] [THREADS] [SIZE]
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "profiler/sampler.h"
#include "profiler/trace.h"
#include "runtime/device_memory.h"
#include "runtime/pipeline.h"

namespace {

class TraceObserver : public reel::RunObserver {
 public:
  explicit TraceObserver(reel::TraceRecorder* t) : t_(t) {}
  void OnEvent(const reel::RunEvent& e) override { t_->Complete(e.name, e.category, e.track, e.start, e.end - e.start); }

 private:
  reel::TraceRecorder* t_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PACKAGE_DIR [REPS] [STEPS] [THREADS] [SIZE]\n", argv[0]);
    return 2;
  }
  const int reps = argc > 2 ? std::stoi(argv[2]) : 5;
  const int steps = argc > 3 ? std::stoi(argv[3]) : 8;
  const int threads = argc > 4 ? std::stoi(argv[4]) : 2;
  const int size = argc > 5 ? std::stoi(argv[5]) : 64;
  at::set_num_threads(threads);
  reel::StagePackage package = reel::StagePackage::Load(argv[1]);
  reel::RunOptions options;
  for (auto k : {reel::StageKind::kTextEncoder, reel::StageKind::kDenoiser})
    options.offload[k] = reel::ParseOffload("block:1", "--offload");
  reel::GenerateRequest r;
  r.prompt = "a red fox";
  r.frames = 9;
  r.height = size;
  r.width = size;
  r.steps = steps;
  r.guidance = 6.0;
  r.fps = 8;
  std::vector<double> off, on;
  for (int i = 0; i < reps; ++i) {
    for (bool profiled : {false, true}) {
      reel::TraceRecorder trace;
      TraceObserver observer(&trace);
      std::unique_ptr<reel::MemorySampler> sampler;
      if (profiled) {
        sampler = std::make_unique<reel::MemorySampler>(std::chrono::milliseconds(10),
                                                        [] { return reel::DeviceMemory::Get().used(); }, &trace);
        sampler->Start();
      }
      reel::Runtime rt(package, options, profiled ? &observer : nullptr);
      rt.Generate(r, {});
      if (sampler) sampler->Stop();
      const auto steps_s = rt.stats().at(reel::StageKind::kDenoiser).step_seconds;
      // The first step of a run pays TorchScript's profiling passes; both sides skip it.
      (profiled ? on : off).insert((profiled ? on : off).end(), steps_s.begin() + 1, steps_s.end());
    }
  }
  const double a = Median(off), b = Median(on);
  std::printf("| %s | %dx%d, %d steps x %d runs each | %.5f | %.5f | %.4f |\n", package.manifest().name.c_str(), size,
              size, steps, reps, a, b, b / a);
  return 0;
}
