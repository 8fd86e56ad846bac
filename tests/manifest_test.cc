// Manifest round trip and every validation error, plus request validation and the tokenizers.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "package/job_request.h"
#include "package/manifest.h"
#include "package/tokenizer.h"

namespace reel {
namespace {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

Manifest Sample() {
  Manifest m;
  m.name = "sample";
  m.preset = "tiny";
  m.seed = 7;
  m.tokenizer = TokenizerSpec{"bytes", "", 32, 384, 0, 1, {}};
  m.limits = ShapeLimits{16, 256, 16, 256, 16, 49, 8};
  m.defaults = JobDefaults{9, 64, 64, 4, 6.0, 8};
  for (StageKind k : {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}) {
    StageManifest s;
    s.kind = k;
    s.dtype = DType::kBF16;
    if (k == StageKind::kVaeDecoder) {
      s.parts = {{"module", "vae_decoder/module.pt", 100, 200}};
    } else {
      const std::string d = StageKindName(k);
      s.parts = {{"embed", d + "/embed.pt", 10, 20}, {"block", d + "/block_000.pt", 30, 60}, {"head", d + "/head.pt", 5, 10}};
    }
    s.inputs = {{"x", DType::kF32, {std::string("B"), int64_t{16}, std::string("f"), std::string("h"), std::string("w")}}};
    s.outputs = {{"y", DType::kBF16, {std::string("B"), std::string("T"), int64_t{64}}}};
    s.config = {{"width", 64}, {"layers", 1}};
    m.stages[k] = s;
  }
  return m;
}

// Applies `edit` to the sample's JSON and returns the parse error message ("" if it parsed).
std::string ErrorAfter(const std::function<void(ordered_json&)>& edit) {
  ordered_json j = ordered_json::parse(ManifestToJson(Sample()));
  edit(j);
  try {
    ManifestFromJson(j.dump(), "pkg/manifest.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kBadPackage);
    return e.what();
  }
  return "";
}

TEST(Manifest, RoundTripIsExact) {
  const Manifest m = Sample();
  const std::string text = ManifestToJson(m);
  const Manifest back = ManifestFromJson(text, "x");
  EXPECT_EQ(ManifestToJson(back), text);
  EXPECT_EQ(back.name, "sample");
  EXPECT_EQ(back.scheduler.kind, "cogvideox_ddim");
  Manifest dpm = m;
  dpm.scheduler.kind = "cogvideox_dpm";  // a CogVideoXDPMScheduler checkpoint keeps its sampler
  EXPECT_EQ(ManifestFromJson(ManifestToJson(dpm), "x").scheduler.kind, "cogvideox_dpm");
  EXPECT_EQ(*back.seed, 7u);
  EXPECT_EQ(back.stage(StageKind::kDenoiser).num_blocks(), 1);
  EXPECT_EQ(back.stage(StageKind::kDenoiser).params(), 45);
  EXPECT_EQ(back.stage(StageKind::kDenoiser).dtype, DType::kBF16);
  EXPECT_EQ(FormatDims(back.stage(StageKind::kVaeDecoder).inputs[0].shape), "[B, 16, f, h, w]");
}

TEST(Manifest, EachValidationErrorNamesTheField) {
  struct Case {
    std::function<void(ordered_json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](auto& j) { j["format"] = "zip"; }, "field 'format' is 'zip'"},
      {[](auto& j) { j["format_version"] = 9; }, "field 'format_version' is 9, accepted 1..1"},
      {[](auto& j) { j.erase("name"); }, "field 'name' is missing"},
      {[](auto& j) { j["image_conditioned"] = "yes"; }, "field 'image_conditioned' must be true or false"},
      {[](auto& j) { j["tokenizer"]["kind"] = "wordpiece"; }, "field 'tokenizer.kind' is 'wordpiece'"},
      {[](auto& j) { j["tokenizer"]["max_length"] = 1; }, "field 'tokenizer.max_length' is 1"},
      {[](auto& j) { j["vae"]["scaling_factor"] = -1; }, "field 'vae.scaling_factor' is -1"},
      {[](auto& j) { j["vae"]["latent_channels"] = "16"; }, "field 'vae.latent_channels' must be an integer"},
      {[](auto& j) { j["scheduler"]["kind"] = "euler"; },
       "field 'scheduler.kind' is 'euler', accepted 'cogvideox_ddim' or 'cogvideox_dpm'"},
      {[](auto& j) { j["scheduler"]["prediction_type"] = "sample"; }, "field 'scheduler.prediction_type'"},
      {[](auto& j) { j["scheduler"]["timestep_spacing"] = "odd"; }, "field 'scheduler.timestep_spacing'"},
      {[](auto& j) { j["limits"]["max_height"] = 8; }, "field 'limits.max_height' is 8"},
      {[](auto& j) { j["defaults"]["frames"] = 500; }, "field 'defaults.frames' is 500"},
      {[](auto& j) { j["limits"]["frame_step"] = 6; }, "field 'limits.frame_step' is 6, accepted a multiple of"},
      {[](auto& j) { j["stages"]["upscaler"] = j["stages"]["denoiser"]; }, "field 'stages.upscaler' is not a stage kind"},
      {[](auto& j) { j["stages"].erase("denoiser"); }, "field 'stages.denoiser' is missing"},
      {[](auto& j) { j["image_conditioned"] = true; }, "field 'stages.vae_encoder' is missing"},
      {[](auto& j) { j["stages"]["denoiser"]["dtype"] = "f64"; }, "field 'stages.denoiser.dtype' is 'f64'"},
      {[](auto& j) { j["stages"]["denoiser"]["parts"] = ordered_json::array(); }, "field 'stages.denoiser.parts' must list"},
      {[](auto& j) { j["stages"]["denoiser"]["parts"][0]["role"] = "body"; }, "field 'stages.denoiser.parts[0].role' is 'body'"},
      {[](auto& j) { j["stages"]["denoiser"]["parts"][0]["file"] = "../x.pt"; }, "field 'stages.denoiser.parts[0].file'"},
      {[](auto& j) { j["stages"]["denoiser"]["parts"][0]["params"] = -3; }, "field 'stages.denoiser.parts[0].params' is -3"},
      {[](auto& j) { std::swap(j["stages"]["denoiser"]["parts"][0], j["stages"]["denoiser"]["parts"][2]); },
       "field 'stages.denoiser.parts' must be one 'module' or 'embed'"},
      {[](auto& j) { j["stages"]["denoiser"]["params"] = 44; }, "field 'stages.denoiser.params' is 44 but its parts add up to 45"},
      {[](auto& j) { j["stages"]["denoiser"]["bytes"] = 1; }, "field 'stages.denoiser.bytes' is 1 but its parts add up to 90"},
      {[](auto& j) { j["stages"]["denoiser"]["inputs"][0]["shape"][1] = "Q"; }, "field 'stages.denoiser.inputs[0].shape' has dimension \"Q\""},
      {[](auto& j) { j["stages"]["denoiser"]["inputs"][0]["shape"][1] = 0; }, "has dimension 0"},
      {[](auto& j) { j["stages"]["denoiser"]["outputs"][0]["dtype"] = "int8"; }, "field 'stages.denoiser.outputs[0].dtype' is 'int8'"},
      {[](auto& j) { j["stages"]["denoiser"]["outputs"] = ordered_json::array(); }, "field 'stages.denoiser.outputs' must list"},
      {[](auto& j) { j["stages"]["denoiser"]["config"]["width"] = "wide"; }, "field 'stages.denoiser.config.width' must be a number"},
  };
  for (const auto& c : cases) {
    const std::string msg = ErrorAfter(c.edit);
    EXPECT_NE(msg.find("pkg/manifest.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << msg;
  }
  EXPECT_EQ(ErrorAfter([](auto&) {}), "");
}

TEST(Manifest, InvalidJsonIsReported) {
  try {
    ManifestFromJson("{\"format\": ", "pkg/manifest.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pkg/manifest.json: not valid JSON"), std::string::npos);
  }
}

// Inputs the fuzzer (fuzz/manifest_fuzzer.cc) found or that guard what it checks: each is refused with one line of
// bounded length naming the field, where the parser used to crash, hit UB, or print the input back whole.
TEST(Manifest, HostileInputsGetOneBoundedLine) {
  auto error = [](const std::string& text) -> std::string {
    try {
      ManifestFromJson(text, "pkg/manifest.json");
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kBadPackage);
      const std::string msg = e.what();
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_LT(msg.size(), 300u) << msg;
      return msg;
    }
    return "accepted";
  };
  auto edited = [](const std::function<void(ordered_json&)>& edit) {
    ordered_json j = ordered_json::parse(ManifestToJson(Sample()));
    edit(j);
    return j.dump();
  };
  // A number beyond a double was an uncaught nlohmann out_of_range: the process terminated.
  EXPECT_EQ(error("{\"format\": 22432e6144}"),
            "pkg/manifest.json: not valid JSON (number overflow parsing '22432e6144')");
  // The syntax error quoted the whole offending token.
  EXPECT_EQ(error("{\"file\":" + std::string(5000, '\t') + "%}"),
            "pkg/manifest.json: not valid JSON (parse error at line 1, column 5009: syntax error while parsing value - "
            "invalid literal)");
  // A wrongly typed field printed its whole value (here most of the file).
  EXPECT_EQ(error(edited([](auto& j) { j["format"] = j["stages"]; })),
            "pkg/manifest.json: field 'format' must be a string, got an object");
  EXPECT_EQ(error(edited([](auto& j) { j["name"] = std::string(1000, 'x'); })),
            "pkg/manifest.json: field 'name' is '" + std::string(64, 'x') +
                "… (1000 bytes)', accepted at most 128 bytes of text without control characters");
  EXPECT_NE(error(edited([](auto& j) { j["name"] = "fox\nRUNNING"; })).find("field 'name' is 'fox\\x0aRUNNING'"),
            std::string::npos);
  EXPECT_NE(error(edited([](auto& j) { j["stages"]["den\noiser"] = 1; }))
                .find("field 'stages.den\\x0aoiser' is not a stage kind"),
            std::string::npos);
  EXPECT_NE(error(edited([](auto& j) { j["tokenizer"]["kind"] = std::string(10000, 'k'); }))
                .find("… (10000 bytes)', accepted 'bytes' or 'sentencepiece'"),
            std::string::npos);
  // Integers above INT64_MAX were wrapped and reported as negative.
  EXPECT_EQ(error(edited([](auto& j) { j["seed"] = UINT64_MAX; })),
            "pkg/manifest.json: field 'seed' is 18446744073709551615, accepted 0..9223372036854775807");
  // Parts whose counts add up past INT64_MAX overflowed StageManifest::params() (UBSan: signed overflow).
  EXPECT_EQ(error(edited([](auto& j) {
              j["stages"]["denoiser"]["parts"][0]["params"] = INT64_MAX;
              j["stages"]["denoiser"]["parts"][1]["params"] = INT64_MAX;
            })),
            "pkg/manifest.json: field 'stages.denoiser.parts[1].params' is 9223372036854775807: the stage's parts add "
            "up to more than 9223372036854775807");
  // Defaults the package's own limits refuse: `reel generate` without flags failed on them.
  EXPECT_EQ(error(edited([](auto& j) { j["defaults"]["height"] = 65; })),
            "pkg/manifest.json: field 'defaults.height' is 65, accepted a multiple of limits.size_multiple (16) "
            "from 16 to 256");
  EXPECT_EQ(error(edited([](auto& j) { j["defaults"]["frames"] = 10; })),
            "pkg/manifest.json: field 'defaults.frames' is 10, accepted limits.frame_step·k+1 (8k+1) up to "
            "limits.max_frames (49)");
  EXPECT_EQ(error(edited([](auto& j) { j["defaults"]["steps"] = 1001; })),
            "pkg/manifest.json: field 'defaults.steps' is 1001, accepted 1..1000");
  EXPECT_EQ(error(edited([](auto& j) { j["defaults"]["guidance"] = 500; })),
            "pkg/manifest.json: field 'defaults.guidance' is 500, accepted 0..100");
  // Sizes that are not whole latent pixels.
  EXPECT_EQ(error(edited([](auto& j) { j["limits"]["size_multiple"] = 4; })),
            "pkg/manifest.json: field 'limits.size_multiple' is 4, accepted a multiple of vae.spatial_compression (8)");
}

class PackageDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("reel-manifest-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    m_ = Sample();
    for (const auto& [k, s] : m_.stages)
      for (const auto& p : s.parts) {
        fs::create_directories((dir_ / p.file).parent_path());
        std::ofstream(dir_ / p.file) << "x";
      }
    SaveManifest(m_, dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string LoadError() {
    try {
      LoadManifest(dir_);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
  Manifest m_;
};

TEST_F(PackageDir, LoadsWhenComplete) { EXPECT_EQ(LoadError(), ""); }

TEST_F(PackageDir, MissingPartFileIsNamed) {
  fs::remove(dir_ / "denoiser/block_000.pt");
  EXPECT_NE(LoadError().find("denoiser/block_000.pt (stages.denoiser) is missing"), std::string::npos);
}

TEST_F(PackageDir, EmptyPartFileIsNamed) {
  std::ofstream(dir_ / "vae_decoder/module.pt", std::ios::trunc).close();
  EXPECT_NE(LoadError().find("vae_decoder/module.pt (stages.vae_decoder) is empty"), std::string::npos);
}

TEST_F(PackageDir, MissingManifestAndDirectory) {
  fs::remove(dir_ / "manifest.json");
  EXPECT_NE(LoadError().find("manifest.json is missing"), std::string::npos);
  fs::remove_all(dir_);
  EXPECT_NE(LoadError().find("not a directory"), std::string::npos);
}

TEST(JobRequest, EachBadValueIsRefusedWithTheAcceptedRange) {
  const Manifest m = Sample();
  auto error = [&](const std::function<void(GenerateRequest&)>& edit) -> std::string {
    GenerateRequest r = DefaultRequest(m, "a fox");
    edit(r);
    try {
      ValidateRequest(m, r);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error([](auto&) {}), "");
  EXPECT_EQ(error([](auto& r) { r.frames = 1; }), "");
  EXPECT_EQ(error([](auto& r) { r.frames = 49; }), "");
  EXPECT_EQ(error([](auto& r) { r.guidance = 0; }), "");
  EXPECT_EQ(error([](auto& r) { r.dynamic_cfg = true; }), "");
  EXPECT_NE(error([](auto& r) {
              r.dynamic_cfg = true;
              r.guidance = 1;
            }).find("--dynamic-cfg: needs --guidance above 1, got 1"),
            std::string::npos);
  EXPECT_NE(error([](auto& r) { r.frames = 8; }).find("--frames 8: accepted 8k+1 frames from 1 to 49 (1, 9, 17, ...)"),
            std::string::npos);
  EXPECT_NE(error([](auto& r) { r.frames = 5; }).find("--frames 5: accepted 8k+1"), std::string::npos);
  EXPECT_NE(error([](auto& r) { r.frames = 53; }).find("--frames 53"), std::string::npos);
  EXPECT_NE(error([](auto& r) { r.frames = -3; }).find("--frames -3"), std::string::npos);
  EXPECT_NE(error([](auto& r) { r.height = 72; }).find("--height 72: accepted a multiple of 16 from 16 to 256"),
            std::string::npos);
  EXPECT_NE(error([](auto& r) { r.width = 512; }).find("--width 512: accepted a multiple of 16 from 16 to 256"),
            std::string::npos);
  EXPECT_NE(error([](auto& r) { r.steps = 0; }).find("--steps 0: accepted 1 to 1000"), std::string::npos);
  EXPECT_NE(error([](auto& r) { r.guidance = -1; }).find("--guidance -1: accepted 0 to 100"), std::string::npos);
  EXPECT_NE(error([](auto& r) { r.image = "cat.png"; }).find("--image cat.png: model 'sample' is text-to-video"),
            std::string::npos);
  // The image name comes from a client (SubmitJob's image_name): shown as one printable line.
  EXPECT_NE(error([](auto& r) { r.image = "cat.png\n" + std::string(500, 'c'); })
                .find("--image cat.png\\x0acccc"),
            std::string::npos);
  EXPECT_LT(error([](auto& r) { r.image = std::string(5000, 'c'); }).size(), 300u);
  Manifest i2v = m;
  i2v.image_conditioned = true;
  GenerateRequest r = DefaultRequest(i2v, "");
  EXPECT_THROW(ValidateRequest(i2v, r), Error);
}

TEST(Manifest, AddedTokensRoundTripAndBadOnesAreNamed) {
  Manifest m = Sample();
  m.tokenizer = TokenizerSpec{"sentencepiece", "tokenizer/spiece.model", 32, 384, 0, 1, {{"</s>", 1}, {"<extra_id_0>", 383}}};
  const std::string text = ManifestToJson(m);
  EXPECT_EQ(ManifestFromJson(text, "x").tokenizer.added_tokens, m.tokenizer.added_tokens);
  auto error = [&](const std::function<void(ordered_json&)>& edit) {
    ordered_json j = ordered_json::parse(text);
    edit(j);
    try {
      ManifestFromJson(j.dump(), "pkg/manifest.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error([](auto& j) { j["tokenizer"]["added_tokens"][1]["id"] = 384; })
                .find("field 'tokenizer.added_tokens[1].id' is 384, accepted 0..383"),
            std::string::npos);
  EXPECT_NE(error([](auto& j) { j["tokenizer"]["added_tokens"][0]["content"] = ""; }).find("accepted 1 to 256 bytes"),
            std::string::npos);
  EXPECT_NE(error([](auto& j) { j["tokenizer"]["added_tokens"][1]["content"] = "</s>"; }).find("listed twice"),
            std::string::npos);
  EXPECT_NE(error([](auto& j) { j["tokenizer"]["added_tokens"] = 5; }).find("must be an array"), std::string::npos);
  EXPECT_NE(error([](auto& j) {
              j["tokenizer"]["kind"] = "bytes";
              j["tokenizer"].erase("file");
            }).find("accepted only with 'sentencepiece'"),
            std::string::npos);
}

TEST(Tokenizer, BytesAreOffsetTerminatedAndPadded) {
  TokenizerSpec spec{"bytes", "", 8, 384, 0, 1, {}};
  auto tok = MakeTokenizer(spec, ".");
  EXPECT_EQ(tok->Encode("ab"), (std::vector<int64_t>{'a' + 3, 'b' + 3, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(tok->Encode(""), (std::vector<int64_t>{1, 0, 0, 0, 0, 0, 0, 0}));
  const auto long_ids = tok->Encode("abcdefghijkl");
  EXPECT_EQ(long_ids.size(), 8u);
  EXPECT_EQ(long_ids[6], 'g' + 3);
  EXPECT_EQ(long_ids[7], 1);  // truncated, EOS kept
}

TEST(Tokenizer, SentencePieceModelFromThePackage) {
  const fs::path dir = fs::temp_directory_path() / ("reel-spm-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream corpus(dir / "corpus.txt");
  for (int i = 0; i < 200; ++i) corpus << "a red fox runs through the snowy forest at dawn " << i << "\n";
  corpus.close();
  const std::string cmd = "cd " + dir.string() +
                          " && spm_train --input=corpus.txt --model_prefix=spiece --vocab_size=40 "
                          "--pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 > train.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "spm_train failed, see " << dir / "train.log";
  TokenizerSpec spec{"sentencepiece", "spiece.model", 16, 40, 0, 1, {}};
  auto tok = MakeTokenizer(spec, dir);
  const auto ids = tok->Encode("a red fox");
  ASSERT_EQ(ids.size(), 16u);
  const auto eos = std::find(ids.begin(), ids.end(), 1);
  ASSERT_NE(eos, ids.end());
  EXPECT_GT(eos - ids.begin(), 0);
  for (auto it = eos + 1; it != ids.end(); ++it) EXPECT_EQ(*it, 0);
  spec.file = "missing.model";
  EXPECT_THROW(MakeTokenizer(spec, dir), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace reel
