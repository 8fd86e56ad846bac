// Media I/O for Reel without LibTorch: encodes generated RGB frames to MP4/PNG and reads the I2V conditioning
// image. Everything goes through FFmpeg's libraries; failures surface as one-line reel::Error messages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace reel {

// Encodes frames x height x width x 3 interleaved RGB24 as H.264 (libx264, yuv420p, CRF 18) in an MP4 with
// +faststart. The file appears only once complete. Bad output directory or odd height/width (yuv420p cannot
// hold them): InvalidArgument naming --out; FFmpeg and file-system failures: IoError.
void WriteMp4(const std::filesystem::path& out, const uint8_t* rgb, int frames, int height, int width, int fps);

// Writes dir/frame_0000.png, frame_0001.png, ... losslessly. `dir` must already exist (InvalidArgument
// naming --frames-dir otherwise); each file appears only once complete.
void WritePngFrames(const std::filesystem::path& dir, const uint8_t* rgb, int frames, int height, int width);

struct Image {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> rgb;  // height x width x 3, interleaved RGB24
};

// Decodes a still image (PNG, JPEG, BMP, WebP, ... detected by content, not by extension), turns it upright by its
// EXIF orientation and resizes it to exactly height x width with Lanczos (no crop), as diffusers' load_image and
// CogVideoXImageToVideoPipeline's VideoProcessor do. Alpha is dropped. How close to diffusers' pixels:
// docs/STAGE_PACKAGE.md ("The I2V image").
// Throws InvalidArgument("--image <path>: ...") for a missing, unreadable, non-image or video file, and for an
// image over 8192 pixels a side (checked from its header, before decoding).
Image ReadImage(const std::filesystem::path& path, int height, int width);

// `src` turned upright by EXIF orientation 1-8 (the TIFF tag's values) as PIL's ImageOps.exif_transpose turns it.
Image Upright(const Image& src, int orientation);

// The same for an image file's bytes (sent with a job); errors name `what` (e.g. "image fox.png").
Image DecodeImageBytes(const std::string& bytes, const std::string& what, int height, int width);

}  // namespace reel
