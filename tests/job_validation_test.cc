// SubmitJob's checks (coordinator/job_validation.cc) on requests fuzz/job_request_fuzzer.cc showed printed a
// client's text back raw: every refusal is one line, whatever the model or image name holds.
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "common/error.h"
#include "coordinator/job_validation.h"
#include "models/presets.h"
#include "models/synth.h"

namespace reel {
namespace {

std::map<std::string, Manifest> Presets() {
  std::map<std::string, Manifest> models;
  for (const char* name : {"tiny", "tiny-i2v"}) {
    const std::string path = std::string(REEL_SOURCE_DIR) + "/fuzz/manifests/" + name + ".json";
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    models[name] = ManifestFromJson(text.str(), path);
  }
  return models;
}

std::string Refusal(const v1::SubmitJobRequest& req) {
  const auto models = Presets();
  v1::JobSpec spec = req.spec();
  try {
    ValidateSubmit(models, req, spec);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_LT(msg.size(), 400u) << msg;
    return msg;
  }
  return "accepted";
}

// The presets' manifests checked in for these tests and for fuzz/job_request_fuzzer.cc (which builds without
// LibTorch, so without models/) are what PresetManifest makes. REEL_UPDATE_FUZZ_MANIFESTS=1 rewrites them.
TEST(JobValidation, CheckedInPresetManifestsAreCurrent) {
  const bool update = std::getenv("REEL_UPDATE_FUZZ_MANIFESTS") != nullptr;
  for (const std::string& preset : PresetNames()) {
    SynthOptions o;
    o.preset = preset;
    const std::string want = ManifestToJson(PresetManifest(o));
    const std::string path = std::string(REEL_SOURCE_DIR) + "/fuzz/manifests/" + preset + ".json";
    if (update) std::ofstream(path, std::ios::binary | std::ios::trunc) << want;
    std::ifstream in(path, std::ios::binary);
    std::stringstream have;
    have << in.rdbuf();
    EXPECT_EQ(have.str(), want) << path << " is stale: run this test with REEL_UPDATE_FUZZ_MANIFESTS=1";
  }
}

TEST(JobValidation, AClientsNamesAreShownAsOnePrintableLine) {
  v1::SubmitJobRequest req;
  req.mutable_spec()->set_model("cogvideox-9b\nSUCCEEDED job-7");
  EXPECT_EQ(Refusal(req), "model 'cogvideox-9b\\x0aSUCCEEDED job-7': this coordinator serves tiny, tiny-i2v");
  req.mutable_spec()->set_model(std::string(1 << 20, 'm'));
  EXPECT_NE(Refusal(req).find("mmm… (1048576 bytes)': this coordinator serves"), std::string::npos);

  req.mutable_spec()->set_model("tiny-i2v");
  req.mutable_spec()->set_image("GIF89a not really");
  req.mutable_spec()->set_image_name("fox.gif\r\n" + std::string(5000, 'x'));
  EXPECT_EQ(Refusal(req).rfind("image fox.gif\\x0d\\x0axxx", 0), 0u) << Refusal(req);

  req.mutable_spec()->set_model("tiny");
  req.mutable_spec()->set_image_name("fox.png\n");
  EXPECT_NE(Refusal(req).find("--image fox.png\\x0a: model 'tiny' is text-to-video"), std::string::npos);
}

}  // namespace
}  // namespace reel
