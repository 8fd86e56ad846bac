// Media I/O against real FFmpeg: files Reel writes are checked with ffprobe/ffmpeg, and the image reader's
// error lines are checked for the one-line "--image <path>: ..." convention.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "media/video_io.h"

namespace reel {
namespace {
namespace fs = std::filesystem;

std::vector<uint8_t> Pattern(int frames, int height, int width) {
  std::vector<uint8_t> rgb(size_t(frames) * height * width * 3);
  size_t i = 0;
  for (int f = 0; f < frames; ++f)
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        rgb[i++] = uint8_t(x * 255 / std::max(1, width - 1));
        rgb[i++] = uint8_t(y * 255 / std::max(1, height - 1));
        rgb[i++] = uint8_t((f * 24 + (x + y) / 2) & 255);
      }
  return rgb;
}

std::string RunCommand(const std::string& cmd) {
  std::unique_ptr<FILE, decltype(&pclose)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) return "";
  std::string out;
  char buf[256];
  while (size_t n = fread(buf, 1, sizeof buf, pipe.get())) out.append(buf, n);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string Probe(const fs::path& file) {
  return RunCommand("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
             "stream=codec_name,width,height,nb_read_frames -of csv=p=0 '" + file.string() + "'");
}

std::vector<std::string> Listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class MediaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("reel_media_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Expects ReadImage to throw one InvalidArgument line that starts with "--image <path>: " and says `why`.
  void ExpectImageError(const fs::path& path, const std::string& why) {
    try {
      ReadImage(path, 64, 64);
      ADD_FAILURE() << "ReadImage(" << path << ") did not throw";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << msg;
      EXPECT_EQ(msg.rfind("--image " + path.string() + ": ", 0), 0u) << msg;
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }

  fs::path dir_;
};

TEST_F(MediaTest, Mp4HasEveryFrameAndFaststart) {
  const auto rgb = Pattern(9, 64, 64);
  const fs::path out = dir_ / "clip.mp4";
  WriteMp4(out, rgb.data(), 9, 64, 64, 8);
  EXPECT_EQ(Probe(out), "h264,64,64,9");
  EXPECT_EQ(Listing(dir_), std::vector<std::string>{"clip.mp4"});  // no temp file left behind
  std::ifstream in(out, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_LT(bytes.find("moov"), bytes.find("mdat"));  // +faststart moved the index to the front
  EXPECT_EQ(RunCommand("ffprobe -v error -select_streams v:0 -show_entries stream=r_frame_rate,pix_fmt -of csv=p=0 '" +
                out.string() + "'"),
            "yuv420p,8/1");
}

TEST_F(MediaTest, Mp4AtCogVideoXSize) {
  const auto rgb = Pattern(49, 480, 720);
  const fs::path out = dir_ / "cog.mp4";
  WriteMp4(out, rgb.data(), 49, 480, 720, 8);
  EXPECT_EQ(Probe(out), "h264,720,480,49");
}

TEST_F(MediaTest, Mp4IntoMissingDirectoryIsInvalidArgumentAndLeavesNothing) {
  const auto rgb = Pattern(2, 16, 16);
  const fs::path out = dir_ / "missing" / "clip.mp4";
  try {
    WriteMp4(out, rgb.data(), 2, 16, 16, 8);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()).rfind("--out ", 0), 0u) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(Listing(dir_).empty());
}

TEST_F(MediaTest, Mp4OddSizeIsInvalidArgumentAndLeavesNothing) {
  const auto rgb = Pattern(3, 64, 63);
  const fs::path out = dir_ / "odd.mp4";
  try {
    WriteMp4(out, rgb.data(), 3, 64, 63, 8);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("--out " + out.string() + ": ", 0), 0u) << e.what();
  }
  EXPECT_TRUE(Listing(dir_).empty());
}

TEST_F(MediaTest, Mp4FailureAfterEncodingLeavesNoFileOrTemp) {
  // A directory squatting on the target passes every up-front check, so the whole clip is encoded into the
  // temp file and only the final rename fails: the temp file must still be cleaned up.
  const fs::path out = dir_ / "clip.mp4";
  fs::create_directory(out);
  const auto rgb = Pattern(3, 32, 32);
  try {
    WriteMp4(out, rgb.data(), 3, 32, 32, 8);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  EXPECT_EQ(Listing(dir_), std::vector<std::string>{"clip.mp4"});
  EXPECT_TRUE(fs::is_empty(out));
}

TEST_F(MediaTest, PngFramesRoundTripExactly) {
  const auto rgb = Pattern(3, 40, 56);
  WritePngFrames(dir_, rgb.data(), 3, 40, 56);
  EXPECT_EQ(Listing(dir_), (std::vector<std::string>{"frame_0000.png", "frame_0001.png", "frame_0002.png"}));
  const Image img = ReadImage(dir_ / "frame_0002.png", 40, 56);
  EXPECT_EQ(img.height, 40);
  EXPECT_EQ(img.width, 56);
  const size_t frame_bytes = size_t(40) * 56 * 3;
  EXPECT_TRUE(std::equal(img.rgb.begin(), img.rgb.end(), rgb.begin() + 2 * frame_bytes));
  ASSERT_EQ(img.rgb.size(), frame_bytes);
}

TEST_F(MediaTest, PngFramesNeedAnExistingDirectory) {
  const auto rgb = Pattern(1, 8, 8);
  const fs::path missing = dir_ / "nope";
  try {
    WritePngFrames(missing, rgb.data(), 1, 8, 8);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()).rfind("--frames-dir " + missing.string() + ": ", 0), 0u) << e.what();
  }
  EXPECT_FALSE(fs::exists(missing));
}

TEST_F(MediaTest, ReadImageResizesToRequestedSize) {
  // Left half one colour, right half another: a resize must keep both halves where they were.
  const int h = 32, w = 48;
  std::vector<uint8_t> rgb(size_t(h) * w * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(size_t(y) * w + x) * 3];
      p[0] = x < w / 2 ? 200 : 20;
      p[1] = 100;
      p[2] = x < w / 2 ? 50 : 220;
    }
  WritePngFrames(dir_, rgb.data(), 1, h, w);
  const Image img = ReadImage(dir_ / "frame_0000.png", 64, 64);
  ASSERT_EQ(img.height, 64);
  ASSERT_EQ(img.width, 64);
  ASSERT_EQ(img.rgb.size(), size_t(64) * 64 * 3);
  for (int y = 0; y < 64; ++y)
    for (int x : {0, 10, 20, 43, 53, 63}) {
      const uint8_t* p = &img.rgb[(size_t(y) * 64 + x) * 3];
      EXPECT_NEAR(p[0], x < 32 ? 200 : 20, 2) << y << "," << x;
      EXPECT_NEAR(p[1], 100, 2) << y << "," << x;
      EXPECT_NEAR(p[2], x < 32 ? 50 : 220, 2) << y << "," << x;
    }
}

TEST_F(MediaTest, ReadImageDecodesJpeg) {
  const auto rgb = Pattern(1, 64, 96);
  WritePngFrames(dir_, rgb.data(), 1, 64, 96);
  const fs::path jpg = dir_ / "photo.jpg";
  ASSERT_EQ(std::system(("ffmpeg -v error -y -i '" + (dir_ / "frame_0000.png").string() + "' -q:v 2 '" +
                         jpg.string() + "'").c_str()),
            0);
  const Image img = ReadImage(jpg, 64, 96);
  ASSERT_EQ(img.rgb.size(), rgb.size());
  double total = 0;
  for (size_t i = 0; i < rgb.size(); ++i) total += std::abs(int(img.rgb[i]) - int(rgb[i]));
  EXPECT_LT(total / rgb.size(), 4.0);  // lossy, but a smooth gradient survives closely
}

TEST_F(MediaTest, ReadImageErrorsAreOneLineNamingThePath) {
  ExpectImageError(dir_ / "absent.png", "file does not exist");
  ExpectImageError(dir_, "directory");

  const fs::path empty = dir_ / "empty.png";
  std::ofstream(empty).close();
  ExpectImageError(empty, "not a PNG or JPEG image");

  const fs::path text = dir_ / "notes.txt";
  std::ofstream(text) << "a cat riding a skateboard\n";
  ExpectImageError(text, "not a PNG or JPEG image");
  const fs::path disguised = dir_ / "text.png";  // detection goes by content, not by extension
  fs::copy_file(text, disguised);
  ExpectImageError(disguised, "not a PNG or JPEG image");

  const auto rgb = Pattern(3, 32, 32);
  const fs::path video = dir_ / "clip.mp4";
  WriteMp4(video, rgb.data(), 3, 32, 32, 8);
  ExpectImageError(video, "not a still image");
}

// A small PNG whose header claims 16000x16000 made the decoder allocate ~1 GB before failing (found probing
// SubmitJob with the fuzz harness, fuzz/corpus/job_request/bad-image-claims-16000x16000): refused from the header.
TEST_F(MediaTest, ImageClaimingAHugeSizeIsRefusedBeforeDecoding) {
  const auto rgb = Pattern(1, 16, 24);
  WritePngFrames(dir_, rgb.data(), 1, 16, 24);
  std::ifstream in(dir_ / "frame_0000.png", std::ios::binary);
  std::string png((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(png.size(), 24u);
  for (int i : {16, 20}) png.replace(i, 4, std::string("\x00\x00\x3e\x80", 4));  // IHDR width, height: 16000
  try {
    DecodeImageBytes(png, "image big.png", 64, 64);
    FAIL() << "decoded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_STREQ(e.what(), "image big.png: 16000x16000 pixels, accepted at most 67108864 pixels (8192x8192)");
  }
}

TEST_F(MediaTest, ReadImageReportsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads every file";
  const auto rgb = Pattern(1, 8, 8);
  WritePngFrames(dir_, rgb.data(), 1, 8, 8);
  const fs::path png = dir_ / "frame_0000.png";
  fs::permissions(png, fs::perms::none);
  ExpectImageError(png, "cannot read (permission denied)");
}

}  // namespace
}  // namespace reel
