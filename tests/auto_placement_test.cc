// The coordinator's default placement (coordinator/auto_placement.h) on the presets' real shapes: the motivating
// 12 GiB machine streams the denoiser's blocks, an 80 GiB card keeps everything resident, a machine nothing fits
// falls back to each stage's least-memory choice, a second model sees what the first one's plan uses, and planner
// options become the strategies workers load.
#include <gtest/gtest.h>

#include "coordinator/auto_placement.h"
#include "models/synth.h"
#include "planner/plan_report.h"

namespace reel {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

Manifest Preset(const std::string& name) {
  SynthOptions o;
  o.preset = name;
  return PresetManifest(o);
}

// The strategy a worker got for a stage, or "" when it holds none.
std::string StrategyFor(const AutoPlacement& p, const std::string& worker, const std::string& model, StageKind k) {
  auto w = p.workers.find(worker);
  if (w == p.workers.end()) return "";
  auto m = w->second.find(model);
  if (m == w->second.end()) return "";
  for (const auto& [kind, s] : m->second)
    if (kind == k) return s.offload() + (s.vae_slicing() ? "+slicing" : "") +
                          (s.vae_tile() > 0 ? "+tiling=" + std::to_string(s.vae_tile()) : "") + "/" + s.dtype();
  return "";
}

TEST(AutoPlacement, TwelveGigabyteWorkerStreamsTheDenoiserAndEightyKeepsItResident) {
  const std::map<std::string, Manifest> models = {{"i2v", Preset("cogvideox-5b-i2v")}};
  const AutoPlacement small = PlanPlacement(models, {{"gpu0", "h", "cuda:0", 12 * kGiB, 24 * kGiB}}, {},
                                            planner::Objective::kLatency, 0.10);
  ASSERT_EQ(small.notes.size(), 1u);
  EXPECT_EQ(small.notes[0].find("nothing fits"), std::string::npos) << small.notes[0];
  const std::string denoiser = StrategyFor(small, "gpu0", "i2v", StageKind::kDenoiser);
  EXPECT_EQ(denoiser.rfind("block:", 0), 0u) << denoiser;
  for (StageKind k : {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kVaeDecoder})
    EXPECT_NE(StrategyFor(small, "gpu0", "i2v", k), "") << StageKindName(k);

  const AutoPlacement big = PlanPlacement(models, {{"gpu0", "h", "cuda:0", 80 * kGiB, 256 * kGiB}}, {},
                                          planner::Objective::kLatency, 0.10);
  for (StageKind k : {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser})
    EXPECT_EQ(StrategyFor(big, "gpu0", "i2v", k).rfind("none/", 0), 0u) << StageKindName(k);
}

TEST(AutoPlacement, ThroughputUsesEveryWorkerAndPackageDtypesStay) {
  const std::map<std::string, Manifest> models = {{"2b", Preset("cogvideox-2b")}};
  planner::PlanningOptions po;
  po.package_dtype_only = true;
  const AutoPlacement p = PlanPlacement(models,
                                        {{"a", "h", "cuda:0", 80 * kGiB, 512 * kGiB},
                                         {"b", "h", "cuda:1", 80 * kGiB, 512 * kGiB}},
                                        {}, planner::Objective::kThroughput, 0.10, po);
  int denoisers = 0;
  for (const std::string w : {"a", "b"}) {
    const std::string s = StrategyFor(p, w, "2b", StageKind::kDenoiser);
    denoisers += !s.empty();
    if (!s.empty()) {
      EXPECT_EQ(s.substr(s.find('/')), "/f32") << s;  // the synthetic package's dtype
    }
  }
  EXPECT_EQ(denoisers, 2) << "both workers should run the denoiser, the stage that bounds throughput";
}

TEST(AutoPlacement, NothingFitsFallsBackToLeastMemoryEverywhere) {
  const std::map<std::string, Manifest> models = {{"5b", Preset("cogvideox-5b")}};
  const AutoPlacement p = PlanPlacement(models, {{"w", "h", "cuda:0", kGiB, 8 * kGiB}}, {},
                                        planner::Objective::kLatency, 0.10);
  ASSERT_EQ(p.notes.size(), 1u);
  EXPECT_NE(p.notes[0].find("nothing fits"), std::string::npos) << p.notes[0];
  EXPECT_EQ(StrategyFor(p, "w", "5b", StageKind::kDenoiser).rfind("sequential/", 0), 0u)
      << StrategyFor(p, "w", "5b", StageKind::kDenoiser);
  EXPECT_NE(StrategyFor(p, "w", "5b", StageKind::kVaeDecoder).find("tiling"), std::string::npos)
      << StrategyFor(p, "w", "5b", StageKind::kVaeDecoder);
}

TEST(AutoPlacement, ASecondModelSeesWhatTheFirstUses) {
  // 2B alone keeps its denoiser resident on 40 GiB; beside the 5B (planned first: "a-5b" < "b-2b") it cannot.
  const std::vector<WorkerSlot> one = {{"w", "h", "cuda:0", 40 * kGiB, 512 * kGiB}};
  const AutoPlacement alone = PlanPlacement({{"b-2b", Preset("cogvideox-2b")}}, one, {},
                                            planner::Objective::kLatency, 0.10);
  const AutoPlacement both = PlanPlacement({{"a-5b", Preset("cogvideox-5b")}, {"b-2b", Preset("cogvideox-2b")}},
                                           one, {}, planner::Objective::kLatency, 0.10);
  const std::string a = StrategyFor(alone, "w", "b-2b", StageKind::kDenoiser);
  const std::string b = StrategyFor(both, "w", "b-2b", StageKind::kDenoiser);
  EXPECT_EQ(a.rfind("none/", 0), 0u) << a;
  EXPECT_NE(b.rfind("none/", 0), 0u) << b;
}

TEST(AutoPlacement, PlannerOptionsBecomeWorkerStrategies) {
  planner::Option o;
  o.strategy = "model+slicing+tiling=256";
  o.dtype = "int8";
  o.compute_dtype = "bf16";
  const v1::StageStrategy s = StrategyOf(o);
  EXPECT_EQ(s.offload(), "model");
  EXPECT_TRUE(s.vae_slicing());
  EXPECT_EQ(s.vae_tile(), 256);
  EXPECT_TRUE(s.int8_weights());
  EXPECT_EQ(s.dtype(), "bf16");
  o.strategy = "block:3";
  o.dtype = "f16";
  const v1::StageStrategy t = StrategyOf(o);
  EXPECT_EQ(t.offload(), "block:3");
  EXPECT_FALSE(t.vae_slicing());
  EXPECT_EQ(t.vae_tile(), 0);
  EXPECT_FALSE(t.int8_weights());
  EXPECT_EQ(t.dtype(), "f16");
}

TEST(AutoPlacement, WorkersOnOneHostShareItsRam) {
  const planner::Machine m = MachineOfWorkers({{"a", "h1", "cuda:0", 24 * kGiB, 64 * kGiB},
                                               {"b", "h1", "cuda:1", 24 * kGiB, 64 * kGiB},
                                               {"c", "h2", "cpu", 0, 32 * kGiB}},
                                              0.2);
  ASSERT_EQ(m.devices.size(), 3u);
  ASSERT_EQ(m.hosts.size(), 2u);
  EXPECT_EQ(m.devices[2].kind, "cpu");
  EXPECT_EQ(m.devices[0].host, m.devices[1].host);
  EXPECT_EQ(m.hosts[0].ram_bytes, 64 * kGiB);
  EXPECT_DOUBLE_EQ(m.margin, 0.2);
}

}  // namespace
}  // namespace reel
