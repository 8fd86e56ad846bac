#include "package/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "common/error.h"

namespace reel {
namespace {

std::vector<int64_t> Finish(std::vector<int64_t> ids, const TokenizerSpec& spec) {
  ids.resize(std::min<size_t>(ids.size(), spec.max_length - 1));
  ids.push_back(spec.eos_id);
  ids.resize(spec.max_length, spec.pad_id);
  return ids;
}

class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(TokenizerSpec spec) : spec_(std::move(spec)) {}
  std::vector<int64_t> Encode(const std::string& text) const override {
    std::vector<int64_t> ids;
    for (unsigned char c : text) ids.push_back(c + kByteTokenOffset);
    return Finish(std::move(ids), spec_);
  }

 private:
  TokenizerSpec spec_;
};

// Runs Debian's `spm_encode` (package sentencepiece). Linking libsentencepiece into a process that also loads
// LibTorch crashes at start-up on Debian 12 (both register protobuf descriptors), so the tool runs apart.
class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(TokenizerSpec spec, std::filesystem::path file) : spec_(std::move(spec)), file_(std::move(file)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file_, ec))
      throw BadPackage("tokenizer " + file_.string() + ": file is missing");
  }
  std::vector<int64_t> Encode(const std::string& text) const override {
    char path[] = "/tmp/reel-prompt-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) throw IoError("cannot create a temporary file for the prompt");
    std::string line = text;
    std::replace(line.begin(), line.end(), '\n', ' ');
    line += '\n';
    const bool wrote = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ::close(fd);
    std::string out;
    int status = -1;
    if (wrote) {
      const std::string cmd = "spm_encode --output_format=id --model='" + file_.string() + "' < " + path + " 2>/dev/null";
      if (FILE* p = ::popen(cmd.c_str(), "r")) {
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
        status = ::pclose(p);
      }
    }
    ::unlink(path);
    if (status != 0)
      throw BadPackage("tokenizer " + file_.string() + ": spm_encode failed (is the sentencepiece package "
                       "installed and the model valid?)");
    std::vector<int64_t> ids;
    std::istringstream in(out);
    for (int64_t id; in >> id;) ids.push_back(id);
    return Finish(std::move(ids), spec_);
  }

 private:
  TokenizerSpec spec_;
  std::filesystem::path file_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeTokenizer(const TokenizerSpec& spec, const std::filesystem::path& package_dir) {
  if (spec.kind == "sentencepiece") return std::make_unique<SentencePieceTokenizer>(spec, package_dir / spec.file);
  return std::make_unique<ByteTokenizer>(spec);
}

}  // namespace reel
