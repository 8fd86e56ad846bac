// libFuzzer target: a SubmitJob request as the coordinator receives it. The input is the request's protobuf bytes;
// it is checked by ValidateSubmit (coordinator/job_validation.cc: the model, priority, limits, the job shape
// against the model's manifest, the conditioning image) against the built-in presets' manifests
// (fuzz/manifests/, written from models' PresetManifest), and its raw spec by ValidateRequest as `reel generate`
// checks flags. An accepted job must be one every later check accepts too.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "coordinator/job_validation.h"
#include <google/protobuf/stubs/logging.h>

#include "fuzz/fuzz_check.h"
#include "package/job_request.h"
#include "package/manifest.h"
#include "transfer/wire.h"

namespace {

std::map<std::string, reel::Manifest>* models = nullptr;

void LoadModels() {
  namespace fs = std::filesystem;
  const char* env = std::getenv("REEL_FUZZ_MANIFESTS");
  const fs::path dir = env ? fs::path(env) : fs::path(REEL_SOURCE_DIR) / "fuzz" / "manifests";
  models = new std::map<std::string, reel::Manifest>();
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    reel::Manifest m = reel::ManifestFromJson(text.str(), entry.path().string());
    (*models)[m.name] = std::move(m);
  }
  if (models->empty()) {
    std::fprintf(stderr, "job_request_fuzzer: no manifests in %s (set REEL_FUZZ_MANIFESTS)\n", dir.c_str());
    std::exit(1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string field with invalid UTF-8 it parses; the fuzzer sends many.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  LoadModels();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  reel::v1::SubmitJobRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;

  // The raw spec as `reel generate` validates its flags (nothing filled in), against the model it names or else
  // one the seed picks.
  auto it = models->find(req.spec().model());
  if (it == models->end()) std::advance(it = models->begin(), req.spec().seed() % models->size());
  try {
    reel::ValidateRequest(it->second, reel::RequestOf(req.spec()));
  } catch (const reel::Error& e) {
    reel::fuzz::CheckError(e, reel::ErrorKind::kInvalidArgument);
  }

  // SubmitJob's checks.
  const reel::Limits limits;
  reel::v1::JobSpec spec = req.spec();
  const reel::Manifest* accepted = nullptr;
  try {
    accepted = &reel::ValidateSubmit(*models, req, spec, limits);
  } catch (const reel::Error& e) {
    reel::fuzz::CheckError(e, reel::ErrorKind::kInvalidArgument);
    reel::fuzz::Report("refused", std::string("INVALID_ARGUMENT: ") + e.what());
    return 0;
  }
  // Accepted: every shape field is filled in and within both the coordinator's limits and the model's.
  REEL_FUZZ_CHECK(accepted == &models->at(spec.model()), spec.model());
  REEL_FUZZ_CHECK(spec.frames() > 0 && spec.height() > 0 && spec.width() > 0 && spec.steps() > 0 && spec.fps() > 0,
                  spec.ShortDebugString());
  try {
    reel::CheckLimits(limits, spec);
    reel::ValidateRequest(*accepted, reel::RequestOf(spec));
  } catch (const reel::Error& e) {
    reel::fuzz::Fail("an accepted job fails a later check", e.what());
  }
  const auto& l = accepted->limits;
  REEL_FUZZ_CHECK((spec.frames() - 1) % l.frame_step == 0 && spec.frames() <= l.max_frames, spec.ShortDebugString());
  REEL_FUZZ_CHECK(spec.height() % l.size_multiple == 0 && spec.width() % l.size_multiple == 0,
                  spec.ShortDebugString());
  REEL_FUZZ_CHECK(accepted->image_conditioned == !spec.image().empty(), spec.ShortDebugString());
  reel::fuzz::Report("accepted", "queued: " + spec.model() + ", " + std::to_string(spec.frames()) + " frames " +
                                     std::to_string(spec.height()) + "x" + std::to_string(spec.width()) + ", " +
                                     std::to_string(spec.steps()) + " steps");
  return 0;
}
