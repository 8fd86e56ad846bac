// libFuzzer target: a stage package's manifest.json as ManifestFromJson parses it (package/manifest.cc), the same
// function LoadManifest calls on the file's text. A manifest it accepts must write back to itself, and a package
// with it must accept its own default job.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_check.h"
#include "package/job_request.h"
#include "package/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  reel::Manifest m;
  try {
    m = reel::ManifestFromJson(text, "pkg/manifest.json");
  } catch (const reel::Error& e) {
    reel::fuzz::CheckError(e, reel::ErrorKind::kBadPackage);
    reel::fuzz::Report("refused", e.what());
    return 0;
  }
  // What an accepted manifest serialises to parses back to the same manifest.
  const std::string json = reel::ManifestToJson(m);
  reel::Manifest again;
  try {
    again = reel::ManifestFromJson(json, "written manifest.json");
  } catch (const reel::Error& e) {
    reel::fuzz::Fail("an accepted manifest does not read back", std::string(e.what()) + "\n" + json);
  }
  REEL_FUZZ_CHECK(reel::ManifestToJson(again) == json, json);

  // Everything a loader and a planner then do with it: digests, the default job, every tensor's shape at it.
  reel::GenerateRequest request = reel::DefaultRequest(m, "a red fox");
  if (m.image_conditioned) request.image = "fox.png";
  try {
    reel::ValidateRequest(m, request);
  } catch (const reel::Error& e) {
    reel::fuzz::Fail("the manifest's defaults are refused by its own limits", e.what());
  }
  // Refusals that name the package stay one line too.
  for (auto bad : {&reel::GenerateRequest::frames, &reel::GenerateRequest::height}) {
    reel::GenerateRequest wrong = request;
    wrong.*bad = 0;
    try {
      reel::ValidateRequest(m, wrong);
      reel::fuzz::Fail("a zero frame count or height was accepted", json);
    } catch (const reel::Error& e) {
      reel::fuzz::CheckError(e, reel::ErrorKind::kInvalidArgument);
    }
  }
  for (auto kind : {reel::StageKind::kVaeEncoder}) {
    try {
      (void)m.stage(kind);
    } catch (const reel::Error& e) {
      reel::fuzz::CheckError(e, reel::ErrorKind::kBadPackage);
    }
  }
  reel::JobShape shape;
  shape.batch = request.guidance > 1 ? 2 : 1;
  shape.frames = request.frames;
  shape.height = request.height;
  shape.width = request.width;
  shape.text_tokens = m.tokenizer.max_length;
  const auto symbols = shape.symbols(m.vae);
  for (const auto& [kind, stage] : m.stages) {
    REEL_FUZZ_CHECK(reel::StageDigest(m, stage).size() == 16, reel::StageKindName(kind));
    for (const auto* specs : {&stage.inputs, &stage.outputs})
      for (const auto& spec : *specs) {
        for (int64_t d : reel::ResolveShape(spec, symbols)) REEL_FUZZ_CHECK(d > 0, spec.name);
        (void)reel::FormatDims(spec.shape);
      }
  }
  reel::fuzz::Report("accepted", "package '" + m.name + "' with " + std::to_string(m.stages.size()) + " stages");
  return 0;
}
