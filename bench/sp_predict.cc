// reel_sp_predict: the cost model's predicted speedups of sequence parallelism (and with the guided batch split
// besides) for one job at 49x480x720, 50 steps, bf16, on 2/4/8 GPUs over NVLink and PCIe (docs/BENCHMARKS.md prints
// them beside xDiT's published figures). Estimates only: no GPU runs here.
#include <cstdio>
#include <string>

#include "models/synth.h"
#include "planner/sequence_parallel_cost.h"

int main() {
  using namespace reel;
  std::printf("| model | GPUs | link | layout | step (s) | compute (s) | all-to-all (s) | speedup |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (const char* preset : {"cogvideox-2b", "cogvideox-5b"}) {
    SynthOptions o;
    o.preset = preset;
    const planner::CostModel model(PresetManifest(o), {});
    planner::Job job;  // 49x480x720, 50 steps, guidance 6
    for (const char* gpu : {"L40", "H100"}) {
      planner::Device device;
      device.kind = "cuda";
      // bf16 dense GEMM rates: L40 181 TFLOP/s (its datasheet, without sparsity), H100 SXM the cost model's default.
      if (std::string(gpu) == "L40") device.flops = 181e12;
      const planner::Link link = planner::DefaultLink(std::string(gpu) == "L40" ? "pcie" : "nvlink");
      for (int gpus : {1, 2, 4, 8}) {
        for (bool split : {false, true}) {
          if (split && gpus == 1) continue;
          const int degree = split ? gpus / 2 : gpus;
          const auto p = planner::PriceSequenceParallel(model, device, job, "bf16", degree, split, link);
          std::printf("| %s | %d %s | %s | %s | %.2f | %.2f | %.2f | %.2f |\n", preset, gpus, gpu, link.name.c_str(),
                      split ? (degree > 1 ? ("guidance 2 x Ulysses " + std::to_string(degree)).c_str() : "guidance 2")
                            : (gpus > 1 ? ("Ulysses " + std::to_string(degree)).c_str() : "one GPU"),
                      p.seconds() / job.steps, p.compute_seconds / job.steps, p.comm_seconds / job.steps,
                      p.speedup());
        }
      }
    }
  }
  return 0;
}
