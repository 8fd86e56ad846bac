// `reel generate` and `reel model synth` as a user runs them: real processes, real files, ffprobe on the MP4,
// and every bad input refused with one line, a non-zero exit and no output left behind.
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
using reel::testing::CommandResult;
using reel::testing::Quote;
using reel::testing::RunCommand;
using reel::testing::ScratchDir;

class GenerateCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("cli");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() { delete scratch_; }

  static CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }
  static fs::path Tmp(const std::string& name) { return *scratch_ / name; }
  static std::string Generate(const std::string& model, const fs::path& out, const std::string& extra = "") {
    return "generate --model " + model + " --prompt 'a red fox' --frames 9 --height 64 --width 64 --steps 2 --threads 2 --out " +
           Quote(out.string()) + " " + extra;
  }
  static std::string Probe(const fs::path& mp4) {
    auto r = RunCommand("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                 "stream=codec_name,width,height,nb_read_frames -of csv=p=0 " + Quote(mp4.string()));
    return r.output;
  }
  static std::string ReadFile(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // A failure: non-zero exit, one "reel: error:" line containing `expect`, and nothing left at `out`.
  static void ExpectRefused(const std::string& args, const std::string& expect, const fs::path& out) {
    const CommandResult r = Reel(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.output.find("reel: error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << "expected '" << expect << "' in:\n" << r.output;
    size_t error_lines = 0;
    std::istringstream lines(r.output);
    for (std::string line; std::getline(lines, line);) error_lines += line.find("error") != std::string::npos;
    EXPECT_EQ(error_lines, 1u) << r.output;
    EXPECT_FALSE(fs::exists(out)) << out;
    if (fs::is_directory(out.parent_path()))
      for (const auto& e : fs::directory_iterator(out.parent_path()))
        EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << e.path();
  }
  // A copy of the tiny package to corrupt.
  static fs::path CopyTiny(const std::string& name) {
    const fs::path src = *scratch_ / "cache/models/tiny-seed0-f32-r5";
    if (!fs::exists(src)) EXPECT_EQ(Reel("model info --model tiny").exit_code, 0);
    const fs::path dst = Tmp(name);
    fs::copy(src, dst, fs::copy_options::recursive);
    return dst;
  }
  static void EditManifest(const fs::path& pkg, const std::function<void(nlohmann::json&)>& edit) {
    auto j = nlohmann::json::parse(ReadFile(pkg / "manifest.json"));
    edit(j);
    std::ofstream(pkg / "manifest.json", std::ios::trunc) << j.dump(2);
  }
  static ScratchDir* scratch_;
};
ScratchDir* GenerateCli::scratch_ = nullptr;

TEST_F(GenerateCli, TinyFoxIsANineFrameH264File) {
  const fs::path out = Tmp("fox.mp4");
  const CommandResult r = Reel("generate --model tiny --prompt 'a red fox' --frames 9 --height 64 --width 64 "
                               "--steps 4 --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote " + out.string()), std::string::npos);
  EXPECT_NE(r.output.find("denoise step 4/4"), std::string::npos) << "plain progress lines off a terminal";
  EXPECT_EQ(Probe(out), "h264,64,64,9\n");
}

TEST_F(GenerateCli, SameSeedSameFramesOtherSeedOtherFrames) {
  auto frames = [&](const std::string& tag, int seed) {
    const fs::path dir = Tmp("frames-" + tag);
    const auto r = Reel(Generate("tiny", Tmp(tag + ".mp4"), "--seed " + std::to_string(seed) + " --frames-dir " +
                                                                Quote(dir.string())));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<std::string> pngs;
    for (int i = 0; i < 9; ++i) pngs.push_back(ReadFile(dir / ("frame_000" + std::to_string(i) + ".png")));
    EXPECT_FALSE(pngs[0].empty());
    return pngs;
  };
  const auto a = frames("a", 5), b = frames("b", 5), c = frames("c", 6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST_F(GenerateCli, ImageToVideoUsesTheImage) {
  const fs::path red = Tmp("red.png"), blue = Tmp("blue.png");
  ASSERT_EQ(RunCommand("ffmpeg -v error -y -f lavfi -i color=c=red:s=80x96 -frames:v 1 " + Quote(red.string())).exit_code, 0);
  ASSERT_EQ(RunCommand("ffmpeg -v error -y -f lavfi -i testsrc=s=128x96 -frames:v 1 " + Quote(blue.string())).exit_code, 0);
  const auto r1 = Reel(Generate("tiny-i2v", Tmp("i2v-red.mp4"), "--image " + Quote(red.string()) + " --frames-dir " +
                                                                   Quote(Tmp("i2v-red").string())));
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_EQ(Probe(Tmp("i2v-red.mp4")), "h264,64,64,9\n");
  const auto r2 = Reel(Generate("tiny-i2v", Tmp("i2v-blue.mp4"), "--image " + Quote(blue.string()) +
                                                                     " --frames-dir " + Quote(Tmp("i2v-blue").string())));
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(ReadFile(Tmp("i2v-red/frame_0000.png")), ReadFile(Tmp("i2v-blue/frame_0000.png")));
}

TEST_F(GenerateCli, SynthWritesAPackageAndRefusesBadFlags) {
  const fs::path pkg = Tmp("synth-pkg");
  auto r = Reel("model synth --preset tiny --out " + Quote(pkg.string()) + " --seed 4 --dtype bf16 --layers 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(ReadFile(pkg / "manifest.json"));
  EXPECT_EQ(j["stages"]["denoiser"]["dtype"], "bf16");
  EXPECT_EQ(j["stages"]["denoiser"]["parts"].size(), 3u);  // embed, 1 block, head
  r = Reel(Generate(pkg.string(), Tmp("bf16.mp4")));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Probe(Tmp("bf16.mp4")), "h264,64,64,9\n");

  ExpectRefused("model synth --preset cogvideox-9b --out " + Quote(Tmp("s1").string()),
                "--preset cogvideox-9b: unknown preset; accepted tiny, tiny-i2v, cogvideox-2b", Tmp("s1"));
  ExpectRefused("model synth --preset tiny --dtype f16 --out " + Quote(Tmp("s2").string()),
                "--dtype f16: accepted f32 or bf16", Tmp("s2"));
  ExpectRefused("model synth --preset tiny --layers 0 --out " + Quote(Tmp("s3").string()),
                "--layers 0: accepted 1..64", Tmp("s3"));
  ExpectRefused("model synth --preset tiny --out " + Quote(pkg.string()), "already exists", Tmp("s4"));
  ExpectRefused("model synth --preset tiny --out /nonexistent-dir/pkg", "parent directory /nonexistent-dir does not exist",
                "/nonexistent-dir/pkg");
}

// A disk that fills while a package is written: one line naming the part and the error, a non-zero exit, and
// nothing left behind (LibTorch's zip writer alone would end the process from a destructor). Needs a small tmpfs,
// so root and a kernel that lets this process mount one.
TEST_F(GenerateCli, SynthOnAFullDiskSaysSoAndLeavesNothing) {
  const fs::path small = Tmp("full-disk");
  fs::create_directories(small);
  if (RunCommand("mount -t tmpfs -o size=3m tmpfs " + Quote(small.string()) + " 2>&1").exit_code != 0)
    GTEST_SKIP() << "cannot mount a 3 MiB tmpfs here (not root, or not allowed in this container)";
  struct Unmount {
    fs::path dir;
    ~Unmount() { RunCommand("umount " + Quote(dir.string())); }
  } unmount{small};
  const auto r = Reel("model synth --preset tiny --out " + Quote((small / "pkg").string()) + " 2>&1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("No space left on device"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("package part "), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_TRUE(fs::is_empty(small)) << "a partial package was left behind";
}

TEST_F(GenerateCli, BadJobFlagsAreRefusedBeforeAnyWork) {
  const fs::path out = Tmp("bad.mp4");
  const std::string base = "generate --model tiny --prompt fox --out " + Quote(out.string()) + " ";
  ExpectRefused(base + "--frames 8", "--frames 8: accepted 8k+1 frames from 1 to 49", out);
  ExpectRefused(base + "--frames 5", "--frames 5: accepted 8k+1", out);
  ExpectRefused(base + "--frames 0", "--frames 0", out);
  ExpectRefused(base + "--height 72", "--height 72: accepted a multiple of 16 from 16 to 256", out);
  ExpectRefused(base + "--width 1024", "--width 1024: accepted a multiple of 16 from 16 to 256", out);
  ExpectRefused(base + "--steps 0", "--steps 0: accepted 1 to 1000", out);
  ExpectRefused(base + "--guidance -1", "--guidance -1: accepted 0 to 100", out);
  ExpectRefused(base + "--image " + Quote(Tmp("none.png").string()), "model 'tiny' is text-to-video", out);
  ExpectRefused("generate --model cogvideox-7b --prompt fox --out " + Quote(out.string()),
                "--model cogvideox-7b: neither a preset (tiny, tiny-i2v, cogvideox-2b, cogvideox-5b, cogvideox-5b-i2v)",
                out);
  ExpectRefused("generate --model tiny --prompt fox --out " + Quote(Tmp("no-such-dir/x.mp4").string()),
                "--out " + Tmp("no-such-dir").string() + ": directory does not exist", Tmp("no-such-dir/x.mp4"));
  ExpectRefused("generate --model tiny --prompt fox --out " + Quote(Tmp("x.avi").string()),
                "accepted a file name ending in .mp4", Tmp("x.avi"));
}

TEST_F(GenerateCli, BadImagesAreRefused) {
  const fs::path out = Tmp("img.mp4");
  const std::string base = Generate("tiny-i2v", out);
  ExpectRefused(base, "--image: required by image-to-video model 'tiny-i2v'", out);
  ExpectRefused(base + " --image " + Quote(Tmp("missing.png").string()), "file does not exist", out);
  std::ofstream(Tmp("notes.png")) << "this is text, not a picture\n";
  ExpectRefused(base + " --image " + Quote(Tmp("notes.png").string()), "not a PNG or JPEG image", out);
}

TEST_F(GenerateCli, UnwritableOutputDirectory) {
  const fs::path dir = Tmp("readonly");
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                           fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  std::string prefix;
  if (::geteuid() == 0) {
    // Root writes anywhere; run as nobody so the directory's permissions apply, as they would to a user.
    if (RunCommand("command -v setpriv").exit_code != 0) GTEST_SKIP() << "running as root without setpriv";
    prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
    if (RunCommand(prefix + "test -x " + std::string(REEL_BINARY)).exit_code != 0)
      GTEST_SKIP() << "the reel binary is not reachable by user nobody";
  }
  const fs::path out = dir / "x.mp4";
  const CommandResult r = RunCommand(prefix + REEL_BINARY + " generate --model tiny --prompt fox --out " + Quote(out.string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--out " + dir.string() + ": directory is not writable"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(GenerateCli, BrokenPackagesNameTheFileAndField) {
  const fs::path out = Tmp("pkg.mp4");
  ExpectRefused(Generate(Tmp("no-package").string(), out), "neither a preset", out);

  const fs::path truncated = CopyTiny("truncated");
  const auto block = truncated / "denoiser/block_001.pt";
  fs::resize_file(block, fs::file_size(block) / 2);
  ExpectRefused(Generate(truncated.string(), out),
                "denoiser/block_001.pt (stages.denoiser.parts[2]) is not a readable TorchScript file", out);

  const fs::path garbage = CopyTiny("garbage");
  std::ofstream(garbage / "vae_decoder/module.pt", std::ios::trunc) << "not a zip archive";
  ExpectRefused(Generate(garbage.string(), out), "vae_decoder/module.pt (stages.vae_decoder.parts[0])", out);

  const fs::path missing = CopyTiny("missing");
  fs::remove(missing / "text_encoder/head.pt");
  ExpectRefused(Generate(missing.string(), out), "text_encoder/head.pt (stages.text_encoder) is missing", out);

  const fs::path shape = CopyTiny("shape");
  EditManifest(shape, [](auto& j) { j["stages"]["denoiser"]["outputs"][0]["shape"][2] = 8; });
  ExpectRefused(Generate(shape.string(), out),
                "stages.denoiser.outputs[0] 'velocity' is [B, f, 8, h, w] = [2, 3, 8, 8, 8] but the TorchScript "
                "returned [2, 3, 16, 8, 8]",
                out);

  const fs::path width = CopyTiny("width");
  EditManifest(width, [](auto& j) { j["stages"]["text_encoder"]["outputs"][0]["shape"][2] = 4096; });
  ExpectRefused(Generate(width.string(), out), "stages.text_encoder.outputs[0] 'embeddings'", out);

  const fs::path params = CopyTiny("params");
  EditManifest(params, [](auto& j) {
    j["stages"]["denoiser"]["parts"][1]["params"] = j["stages"]["denoiser"]["parts"][1]["params"].template get<int64_t>() + 1;
    j["stages"]["denoiser"]["params"] = j["stages"]["denoiser"]["params"].template get<int64_t>() + 1;
  });
  ExpectRefused(Generate(params.string(), out), "parameters but stages.denoiser.parts[1].params says", out);

  const fs::path channels = CopyTiny("channels");
  EditManifest(channels, [](auto& j) { j["stages"]["denoiser"]["inputs"][0]["shape"][2] = 12; });
  ExpectRefused(Generate(channels.string(), out), "stages.denoiser.inputs[0] 'latents' is [B, f, 12, h, w]", out);

  const fs::path json = CopyTiny("json");
  std::ofstream(json / "manifest.json", std::ios::trunc) << "{\"format\": \"reel-stage-package\",";
  ExpectRefused(Generate(json.string(), out), "manifest.json: not valid JSON", out);
}

}  // namespace
}  // namespace reel
