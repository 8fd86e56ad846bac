// The I2V conditioning image against diffusers itself: JPEGs with EXIF orientations 1-8 (made with PIL), read by
// Reel and by diffusers' load_image + CogVideoXImageToVideoPipeline's VideoProcessor (tests/image/reference.py).
// Orientation must agree exactly; the resize differs in implementation (FFmpeg's JPEG decoder and swscale's
// Lanczos against libjpeg and PIL's), within the tolerance below (docs/STAGE_PACKAGE.md, "The I2V image").
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/error.h"
#include "media/video_io.h"

namespace reel {
namespace {

namespace fs = std::filesystem;

constexpr int kHeight = 64, kWidth = 96;  // CogVideoX's 480 x 720 aspect, smaller
// Measured (tests/image/reference.py's picture, 200 x 150 JPEG to 96 x 64): see docs/STAGE_PACKAGE.md.
constexpr double kMinPsnr = 44.0;  // dB against diffusers' 8-bit pixels
constexpr double kMaxMean = 0.8;   // levels of 255, mean absolute difference

struct Diff {
  double max = 0, mean = 0, psnr = 0;
};

Diff Compare(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  Diff d;
  double sq = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::abs(double(a[i]) - double(b[i]));
    d.max = std::max(d.max, e);
    d.mean += e;
    sq += e * e;
  }
  d.mean /= double(a.size());
  d.psnr = 10 * std::log10(255.0 * 255.0 / std::max(sq / double(a.size()), 1e-12));
  return d;
}

TEST(ImageParity, ExifOrientationAndResizeMatchDiffusers) {
  const fs::path dir = fs::temp_directory_path() / ("reel-image-parity-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string cmd = std::string(REEL_PYTHON) + " " + REEL_SOURCE_DIR + "/tests/image/reference.py " +
                          dir.string() + " " + std::to_string(kHeight) + " " + std::to_string(kWidth) + " > " +
                          (dir / "reference.log").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "diffusers did not answer through " << REEL_PYTHON << "; see "
                                         << dir / "reference.log";
  std::vector<std::vector<uint8_t>> want(9), got(9);
  for (int o = 1; o <= 8; ++o) {
    std::ifstream in(dir / ("orientation_" + std::to_string(o) + ".rgb"), std::ios::binary);
    want[o].assign(std::istreambuf_iterator<char>(in), {});
    ASSERT_EQ(want[o].size(), size_t(kHeight) * kWidth * 3);
    const Image img = ReadImage(dir / ("orientation_" + std::to_string(o) + ".jpg"), kHeight, kWidth);
    ASSERT_EQ(img.height, kHeight);
    ASSERT_EQ(img.width, kWidth);
    got[o] = img.rgb;
  }
  for (int o = 1; o <= 8; ++o) {
    const Diff d = Compare(got[o], want[o]);
    std::printf("orientation %d: max %.0f, mean %.3f levels, PSNR %.1f dB against diffusers\n", o, d.max, d.mean,
                d.psnr);
    EXPECT_GE(d.psnr, kMinPsnr) << "orientation " << o;
    EXPECT_LE(d.mean, kMaxMean) << "orientation " << o;
    // Every other orientation's picture is far away: the orientation, not the tolerance, makes the match.
    for (int other = 1; other <= 8; ++other) {
      if (other == o) continue;
      EXPECT_LT(Compare(got[o], want[other]).psnr, kMinPsnr - 10) << o << " vs " << other;
    }
  }
  fs::remove_all(dir);
}

TEST(ImageParity, UprightFollowsPilTransposes) {
  // 2 x 3 pixels numbered 0..5 row by row (in the red channel); PIL's exif_transpose results, worked by hand.
  Image src{2, 3, {}};
  for (int i = 0; i < 6; ++i) src.rgb.insert(src.rgb.end(), {uint8_t(i), 0, 0});
  auto red = [](const Image& im) {
    std::vector<int> v;
    for (size_t i = 0; i < im.rgb.size(); i += 3) v.push_back(im.rgb[i]);
    return v;
  };
  EXPECT_EQ(red(Upright(src, 1)), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(red(Upright(src, 2)), (std::vector<int>{2, 1, 0, 5, 4, 3}));
  EXPECT_EQ(red(Upright(src, 3)), (std::vector<int>{5, 4, 3, 2, 1, 0}));
  EXPECT_EQ(red(Upright(src, 4)), (std::vector<int>{3, 4, 5, 0, 1, 2}));
  EXPECT_EQ(red(Upright(src, 5)), (std::vector<int>{0, 3, 1, 4, 2, 5}));  // 3 x 2 from here on
  EXPECT_EQ(red(Upright(src, 6)), (std::vector<int>{3, 0, 4, 1, 5, 2}));  // 90 degrees clockwise
  EXPECT_EQ(red(Upright(src, 7)), (std::vector<int>{5, 2, 4, 1, 3, 0}));
  EXPECT_EQ(red(Upright(src, 8)), (std::vector<int>{2, 5, 1, 4, 0, 3}));  // 90 degrees counter-clockwise
  EXPECT_EQ(Upright(src, 6).height, 3);
  EXPECT_THROW(Upright(src, 9), Error);
}

}  // namespace
}  // namespace reel
