// FFmpeg-backed implementation of Reel's media I/O. Every FFmpeg object lives in a unique_ptr so that each
// early throw frees it, and every output goes through AtomicFile so a failure never leaves a partial file.
#include "media/video_io.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <system_error>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include "common/atomic_file.h"
#include "common/error.h"

namespace reel {
namespace {
namespace fs = std::filesystem;

using CodecPtr = std::unique_ptr<AVCodecContext, decltype([](AVCodecContext* p) { avcodec_free_context(&p); })>;
using FramePtr = std::unique_ptr<AVFrame, decltype([](AVFrame* p) { av_frame_free(&p); })>;
using PacketPtr = std::unique_ptr<AVPacket, decltype([](AVPacket* p) { av_packet_free(&p); })>;
using SwsPtr = std::unique_ptr<SwsContext, decltype([](SwsContext* p) { sws_freeContext(p); })>;
using AvioPtr = std::unique_ptr<AVIOContext, decltype([](AVIOContext* p) { avio_closep(&p); })>;
using InputPtr = std::unique_ptr<AVFormatContext, decltype([](AVFormatContext* p) { avformat_close_input(&p); })>;
using OutputPtr = std::unique_ptr<AVFormatContext, decltype([](AVFormatContext* p) {
                                    if (p->pb && !(p->oformat->flags & AVFMT_NOFILE)) avio_closep(&p->pb);
                                    avformat_free_context(p);
                                  })>;

// FFmpeg would print its own diagnostics to stderr; users should see only Reel's one line, so the last error
// line is kept (per thread, as concurrent calls must not mix) and folded into the thrown message.
thread_local std::string t_last_log;

void LogToLastError(void* avcl, int level, const char* fmt, va_list vl) {
  if (level > AV_LOG_ERROR) return;
  char line[512];
  int print_prefix = 0;  // no "[libx264 @ 0x...]" prefix: the pointer means nothing to users
  av_log_format_line2(avcl, level, fmt, vl, line, sizeof line, &print_prefix);
  std::string_view s(line);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  if (!s.empty()) t_last_log = s;
}

void BeginFfmpegCall() {
  static std::once_flag once;
  std::call_once(once, [] { av_log_set_callback(LogToLastError); });
  t_last_log.clear();
}

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof buf);
  std::string msg = buf;
  if (!t_last_log.empty()) msg += ": " + t_last_log;
  t_last_log.clear();
  return msg;
}

void Check(int ret, const std::string& where, const char* doing) {
  if (ret < 0) throw IoError(where + ": " + doing + ": " + AvError(ret));
}

template <typename T>
T* NotNull(T* p) {
  if (!p) throw std::bad_alloc();
  return p;
}

// "file:" keeps FFmpeg from reading a colon in a path (e.g. "take:2.mp4") as a protocol name.
std::string FileUrl(const fs::path& p) { return "file:" + p.string(); }

FramePtr AllocFrame(AVPixelFormat format, int width, int height, const std::string& where) {
  FramePtr frame(NotNull(av_frame_alloc()));
  frame->format = format;
  frame->width = width;
  frame->height = height;
  Check(av_frame_get_buffer(frame.get(), 0), where, "cannot allocate a frame");
  return frame;
}

void RequireFrames(const uint8_t* rgb, int frames, int height, int width, const std::string& where) {
  if (!rgb || frames < 1 || height < 1 || width < 1)
    throw InvalidArgument(where + ": needs at least one frame of positive height and width (got " +
                          std::to_string(frames) + " frames of " + std::to_string(height) + "x" +
                          std::to_string(width) + ")");
}

// Converts (and resizes, with Lanczos) an image in any pixel format to RGB24 of exactly height x width.
Image Resize(const uint8_t* const data[], const int linesize[], AVPixelFormat format, int src_height, int src_width,
             int height, int width, const std::string& where) {
  SwsPtr sws(sws_getContext(src_width, src_height, format, width, height, AV_PIX_FMT_RGB24,
                            SWS_LANCZOS | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr));
  if (!sws) {
    const char* name = av_get_pix_fmt_name(format);
    throw InvalidArgument(where + ": cannot convert its pixel format (" + (name ? name : "unknown") + ") to RGB");
  }
  // swscale writes into a padded frame: its SIMD paths may overrun an exactly sized buffer.
  FramePtr rgb = AllocFrame(AV_PIX_FMT_RGB24, width, height, where);
  Check(sws_scale(sws.get(), data, linesize, 0, src_height, rgb->data, rgb->linesize), where, "resizing failed");
  Image image{height, width, std::vector<uint8_t>(size_t(height) * size_t(width) * 3)};
  av_image_copy_plane(image.rgb.data(), width * 3, rgb->data[0], rgb->linesize[0], width * 3, height);
  return image;
}

}  // namespace

void WriteMp4(const fs::path& out, const uint8_t* rgb, int frames, int height, int width, int fps) {
  BeginFfmpegCall();
  const std::string where = "--out " + out.string();
  RequireFrames(rgb, frames, height, width, where);
  if (fps < 1) throw InvalidArgument(where + ": fps must be positive (got " + std::to_string(fps) + ")");
  // libx264 would refuse odd sizes too, but only after opening the file and with a vaguer message.
  if (height % 2 || width % 2)
    throw InvalidArgument(where + ": H.264 (yuv420p) needs an even height and width (got " + std::to_string(height) +
                          "x" + std::to_string(width) + ")");
  AtomicFile file(out, "--out");
  const std::string url = FileUrl(file.temp_path());

  // The temp file's name has no .mp4 extension, so the muxer is named rather than guessed.
  AVFormatContext* raw = nullptr;
  Check(avformat_alloc_output_context2(&raw, nullptr, "mp4", url.c_str()), where, "cannot set up the MP4 muxer");
  OutputPtr oc(raw);
  Check(avio_open(&oc->pb, url.c_str(), AVIO_FLAG_WRITE), where, "cannot create the file");
  // The moov atom first lets players and browsers start before the whole file has arrived.
  Check(av_opt_set(oc->priv_data, "movflags", "+faststart", 0), where, "cannot set movflags");

  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) throw IoError(where + ": this FFmpeg build has no libx264 encoder");
  CodecPtr enc(NotNull(avcodec_alloc_context3(codec)));
  enc->width = width;
  enc->height = height;
  enc->pix_fmt = AV_PIX_FMT_YUV420P;  // the only 4:2:0 layout every browser and phone decodes
  enc->time_base = {1, fps};
  enc->framerate = {fps, 1};
  // swscale's default RGB->YUV matrix is BT.601 limited range; tagging it keeps players from guessing BT.709.
  enc->color_range = AVCOL_RANGE_MPEG;
  enc->colorspace = AVCOL_SPC_SMPTE170M;
  enc->color_primaries = AVCOL_PRI_SMPTE170M;
  enc->color_trc = AVCOL_TRC_SMPTE170M;
  if (oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  av_opt_set(enc->priv_data, "crf", "18", 0);  // visually lossless for generated clips at modest size
  av_opt_set(enc->priv_data, "preset", "medium", 0);
  // libx264's AVX-512 kernels made different bitstreams from the same frames from run to run (x264 core 164 on
  // an AMD EPYC): the same job must give the same file wherever it runs. Every AVX-512 CPU has the AVX2 set.
  if (__builtin_cpu_supports("avx512f"))
    av_opt_set(enc->priv_data, "x264-params", "asm=MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,FMA3,AVX2,LZCNT,BMI1,BMI2",
               0);
  Check(avcodec_open2(enc.get(), codec, nullptr), where, "cannot open the H.264 encoder");

  AVStream* stream = NotNull(avformat_new_stream(oc.get(), nullptr));
  stream->time_base = enc->time_base;
  Check(avcodec_parameters_from_context(stream->codecpar, enc.get()), where, "cannot configure the stream");
  Check(avformat_write_header(oc.get(), nullptr), where, "cannot write the MP4 header");

  SwsPtr sws(sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P,
                            SWS_BICUBIC | SWS_ACCURATE_RND, nullptr, nullptr, nullptr));
  if (!sws) throw IoError(where + ": cannot set up the RGB to YUV conversion");
  FramePtr frame = AllocFrame(AV_PIX_FMT_YUV420P, width, height, where);
  PacketPtr pkt(NotNull(av_packet_alloc()));

  auto write_ready_packets = [&] {
    for (;;) {
      const int ret = avcodec_receive_packet(enc.get(), pkt.get());
      if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return;
      Check(ret, where, "H.264 encoding failed");
      // libx264 leaves durations at 0; the MP4 edit list then ends at the last frame's start and drops it.
      if (pkt->duration == 0) pkt->duration = 1;
      av_packet_rescale_ts(pkt.get(), enc->time_base, stream->time_base);  // the muxer may pick its own
      pkt->stream_index = stream->index;
      Check(av_interleaved_write_frame(oc.get(), pkt.get()), where, "cannot write a packet");
    }
  };
  const size_t frame_bytes = size_t(height) * size_t(width) * 3;
  const int src_stride[] = {width * 3};
  for (int i = 0; i < frames; ++i) {
    Check(av_frame_make_writable(frame.get()), where, "cannot reuse the frame");  // encoder may still hold it
    const uint8_t* src[] = {rgb + size_t(i) * frame_bytes};
    Check(sws_scale(sws.get(), src, src_stride, 0, height, frame->data, frame->linesize), where,
          "RGB to YUV conversion failed");
    frame->pts = i;
    Check(avcodec_send_frame(enc.get(), frame.get()), where, "H.264 encoding failed");
    write_ready_packets();
  }
  // libx264 holds back lookahead frames; without this drain the clip would lose its tail.
  Check(avcodec_send_frame(enc.get(), nullptr), where, "cannot flush the H.264 encoder");
  write_ready_packets();
  Check(av_write_trailer(oc.get()), where, "cannot finish the MP4");
  Check(avio_closep(&oc->pb), where, "cannot close the file");
  file.Commit();
}

void WritePngFrames(const fs::path& dir, const uint8_t* rgb, int frames, int height, int width) {
  BeginFfmpegCall();
  RequireWritableDirectory(dir, "--frames-dir");  // before any encoding, so the message names the directory
  const std::string where = "--frames-dir " + dir.string();
  RequireFrames(rgb, frames, height, width, where);

  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
  if (!codec) throw IoError(where + ": this FFmpeg build has no PNG encoder");
  CodecPtr enc(NotNull(avcodec_alloc_context3(codec)));
  enc->width = width;
  enc->height = height;
  enc->pix_fmt = AV_PIX_FMT_RGB24;
  enc->time_base = {1, 1};  // unused by PNG, but FFmpeg refuses to open a video encoder without one
  Check(avcodec_open2(enc.get(), codec, nullptr), where, "cannot open the PNG encoder");
  FramePtr frame = AllocFrame(AV_PIX_FMT_RGB24, width, height, where);
  PacketPtr pkt(NotNull(av_packet_alloc()));

  const size_t frame_bytes = size_t(height) * size_t(width) * 3;
  for (int i = 0; i < frames; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%04d.png", i);
    AtomicFile file(dir / name, "--frames-dir");
    const std::string file_where = "--frames-dir " + file.target().string();
    Check(av_frame_make_writable(frame.get()), file_where, "cannot reuse the frame");
    av_image_copy_plane(frame->data[0], frame->linesize[0], rgb + size_t(i) * frame_bytes, width * 3, width * 3,
                        height);
    frame->pts = i;
    Check(avcodec_send_frame(enc.get(), frame.get()), file_where, "PNG encoding failed");
    Check(avcodec_receive_packet(enc.get(), pkt.get()), file_where, "PNG encoding failed");
    std::ofstream os(file.temp_path(), std::ios::binary);
    os.write(reinterpret_cast<const char*>(pkt->data), pkt->size);
    os.close();
    av_packet_unref(pkt.get());
    if (!os) throw IoError(file_where + ": cannot write: " + std::strerror(errno));
    file.Commit();
  }
}

Image ReadImage(const fs::path& path, int height, int width) {
  BeginFfmpegCall();
  const std::string where = "--image " + path.string();
  if (height < 1 || width < 1)
    throw InvalidArgument(where + ": target size must be positive (got " + std::to_string(height) + "x" +
                          std::to_string(width) + ")");
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory)
    throw InvalidArgument(where + ": cannot read (" + ec.message() + ")");
  if (!fs::exists(st)) throw InvalidArgument(where + ": file does not exist");
  if (fs::is_directory(st)) throw InvalidArgument(where + ": is a directory, not an image file");
  if (fs::is_regular_file(st) && fs::file_size(path, ec) == 0)
    throw InvalidArgument(where + ": not a PNG or JPEG image (the file is empty)");

  AVIOContext* raw_pb = nullptr;
  const std::string url = FileUrl(path);
  if (const int ret = avio_open(&raw_pb, url.c_str(), AVIO_FLAG_READ); ret < 0)
    throw InvalidArgument(where + ": cannot read (" +
                          (ret == AVERROR(EACCES) ? std::string("permission denied") : AvError(ret)) + ")");
  AvioPtr pb(raw_pb);  // declared before `in`, so it outlives the demuxer that reads from it

  // Opening through our own AVIOContext with an empty URL makes FFmpeg detect the format from the bytes
  // alone: the image2 demuxer would otherwise trust the extension and read '%d' or '*' in a name as a pattern.
  AVFormatContext* raw_in = NotNull(avformat_alloc_context());
  raw_in->pb = pb.get();
  raw_in->flags |= AVFMT_FLAG_CUSTOM_IO;
  if (const int ret = avformat_open_input(&raw_in, "", nullptr, nullptr); ret < 0)  // frees raw_in on failure
    throw InvalidArgument(where + ": not a PNG or JPEG image (" + AvError(ret) + ")");
  InputPtr in(raw_in);
  // Still images probe as the "<codec>_pipe" demuxers; anything else (MP4, GIF, ...) has a time axis.
  const std::string_view format = in->iformat->name;
  if (!format.ends_with("_pipe") && format.find("image2") == std::string_view::npos)
    throw InvalidArgument(where + ": not a still image (detected " + in->iformat->long_name +
                          "); expected a PNG or JPEG image");

  const AVCodec* decoder = nullptr;
  const int index = av_find_best_stream(in.get(), AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
  if (index < 0) throw InvalidArgument(where + ": not a PNG or JPEG image (" + AvError(index) + ")");
  CodecPtr dec(NotNull(avcodec_alloc_context3(decoder)));
  // The decoder refuses a size over max_pixels from the image's header, before it allocates a frame of it: a
  // 200-byte PNG claiming 16000x16000 cost a coordinator validating a submitted image ~1 GB and 3 s.
  constexpr int64_t kMaxPixels = int64_t{8192} * 8192;
  auto bad = [&](int ret) {
    std::string why = AvError(ret);
    // FFmpeg's own text for it names its option ("see the documentation ..."): say what Reel accepts instead.
    const size_t at = why.find("Picture size ");
    if (at != std::string::npos && why.find("max pixel count") != std::string::npos) {
      const std::string size = why.substr(at + 13, why.find(' ', at + 13) - (at + 13));
      return InvalidArgument(where + ": " + size + " pixels, accepted at most " + std::to_string(kMaxPixels) +
                             " pixels (8192x8192)");
    }
    return InvalidArgument(where + ": cannot decode the image (" + why + ")");
  };
  if (int ret = avcodec_parameters_to_context(dec.get(), in->streams[index]->codecpar); ret < 0) throw bad(ret);
  dec->max_pixels = kMaxPixels;
  if (int ret = avcodec_open2(dec.get(), decoder, nullptr); ret < 0) throw bad(ret);

  FramePtr frame(NotNull(av_frame_alloc()));
  PacketPtr pkt(NotNull(av_packet_alloc()));
  for (bool eof = false;;) {
    if (!eof) {
      int ret = av_read_frame(in.get(), pkt.get());
      if (ret == AVERROR_EOF) {
        eof = true;
        ret = avcodec_send_packet(dec.get(), nullptr);
      } else if (ret >= 0) {
        if (pkt->stream_index == index) ret = avcodec_send_packet(dec.get(), pkt.get());
        av_packet_unref(pkt.get());
      }
      if (ret < 0 && ret != AVERROR(EAGAIN)) throw bad(ret);
    }
    const int ret = avcodec_receive_frame(dec.get(), frame.get());
    if (ret >= 0) break;
    if (ret != AVERROR(EAGAIN) || eof) throw bad(ret);
  }
  if (frame->width < 1 || frame->height < 1) throw bad(AVERROR_INVALIDDATA);

  // As diffusers: load_image turns the image upright (PIL's ImageOps.exif_transpose), then the VideoProcessor
  // resizes it to exactly height x width (no crop) with Lanczos. FFmpeg's decoders report the EXIF orientation.
  const AVDictionaryEntry* tag = av_dict_get(frame->metadata, "Orientation", nullptr, 0);
  const int orientation = tag ? std::atoi(tag->value) : 1;
  // RGB at the decoded size first, then the resize in RGB as PIL's: closer to diffusers' pixels than resizing
  // while converting from YUV (measured: 0.54 against 0.69 levels mean, docs/STAGE_PACKAGE.md).
  const Image decoded = Resize(frame->data, frame->linesize, AVPixelFormat(frame->format), frame->height,
                               frame->width, frame->height, frame->width, where);
  const Image upright = orientation >= 2 && orientation <= 8 ? Upright(decoded, orientation) : decoded;
  const uint8_t* planes[4] = {upright.rgb.data(), nullptr, nullptr, nullptr};
  const int strides[4] = {upright.width * 3, 0, 0, 0};
  return Resize(planes, strides, AV_PIX_FMT_RGB24, upright.height, upright.width, height, width, where);
}

Image Upright(const Image& src, int orientation) {
  if (orientation < 1 || orientation > 8)
    throw InvalidArgument("EXIF orientation " + std::to_string(orientation) + ": accepted 1 to 8");
  const bool swap = orientation >= 5;  // transposed, rotated by 90 or 270 degrees: width and height trade places
  Image out{swap ? src.width : src.height, swap ? src.height : src.width, std::vector<uint8_t>(src.rgb.size())};
  const int H = src.height, W = src.width;
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      int sy = y, sx = x;  // PIL's transposes: the source pixel of output (y, x)
      switch (orientation) {
        case 2: sx = W - 1 - x; break;                   // FLIP_LEFT_RIGHT
        case 3: sy = H - 1 - y; sx = W - 1 - x; break;   // ROTATE_180
        case 4: sy = H - 1 - y; break;                   // FLIP_TOP_BOTTOM
        case 5: sy = x; sx = y; break;                   // TRANSPOSE
        case 6: sy = H - 1 - x; sx = y; break;           // ROTATE_270 (90 degrees clockwise)
        case 7: sy = H - 1 - x; sx = W - 1 - y; break;   // TRANSVERSE
        case 8: sy = x; sx = W - 1 - y; break;           // ROTATE_90 (90 degrees counter-clockwise)
        default: break;
      }
      std::memcpy(&out.rgb[(size_t(y) * out.width + x) * 3], &src.rgb[(size_t(sy) * W + sx) * 3], 3);
    }
  return out;
}

Image DecodeImageBytes(const std::string& bytes, const std::string& what, int height, int width) {
  // FFmpeg probes files by content; a private temporary file keeps one decoding path for both.
  std::string tmpl = (fs::temp_directory_path() / "reel-image-XXXXXX").string();
  const int fd = ::mkstemp(tmpl.data());
  if (fd < 0) throw IoError(what + ": cannot create a temporary file");
  const fs::path tmp(tmpl);
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  try {
    if (off != bytes.size()) throw IoError(what + ": cannot write a temporary file");
    Image img = ReadImage(tmp, height, width);
    fs::remove(tmp);
    return img;
  } catch (const Error& e) {
    std::error_code ec;
    fs::remove(tmp, ec);
    std::string msg = e.what();
    const std::string prefix = "--image " + tmp.string();
    if (msg.rfind(prefix, 0) == 0) msg = what + msg.substr(prefix.size());
    throw Error(e.kind(), msg);
  }
}

}  // namespace reel
