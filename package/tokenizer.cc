#include "package/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <array>
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

// Runs Debian's `spm_encode` (package sentencepiece) on the text between added tokens, one line each. Debian 12's
// libsentencepiece cannot be linked instead: it exports its own copy of protobuf-lite 3.14, and a process that also
// loads Debian's libprotobuf 3.21 (every Reel binary with gRPC) aborts at start-up on the version check or crashes;
// with PyTorch's LibTorch it also deadlocks unless linked first (docs/STAGE_PACKAGE.md, "Tokenizer").
// The model's normalizer is the one transformers applies (the export sets it), so spm_encode normalises, splits at
// spaces, puts '▁' before each word and runs the same Unigram model over the same pieces.
class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(TokenizerSpec spec, std::filesystem::path file) : spec_(std::move(spec)), file_(std::move(file)) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file_, ec))
      throw BadPackage("tokenizer " + file_.string() + ": file is missing");
  }
  std::vector<int64_t> Encode(const std::string& text) const override {
    const auto pieces = SplitAtAddedTokens(text, spec_.added_tokens);
    std::string lines;
    for (const auto& p : pieces)
      if (p.id < 0) lines += SpacesForWhitespace(p.text) + '\n';  // newlines included: one line per piece
    std::istringstream out(lines.empty() ? std::string() : RunSpmEncode(lines));
    std::vector<int64_t> ids;
    for (const auto& p : pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
        continue;
      }
      std::string line;
      if (!std::getline(out, line))
        throw BadPackage("tokenizer " + file_.string() + ": spm_encode answered fewer lines than it was given");
      std::istringstream words(line);
      for (int64_t id; words >> id;) ids.push_back(id);
    }
    return Finish(std::move(ids), spec_);
  }

 private:
  std::string RunSpmEncode(const std::string& lines) const {
    char path[] = "/tmp/reel-prompt-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) throw IoError("cannot create a temporary file for the prompt");
    const bool wrote = ::write(fd, lines.data(), lines.size()) == static_cast<ssize_t>(lines.size());
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
    return out;
  }

  TokenizerSpec spec_;
  std::filesystem::path file_;
};

}  // namespace

std::vector<PromptPiece> SplitAtAddedTokens(std::string_view text, const std::vector<AddedToken>& added) {
  std::vector<PromptPiece> out;
  size_t start = 0;  // of the text not yet emitted
  for (size_t at = 0; at < text.size();) {
    const AddedToken* best = nullptr;
    for (const auto& a : added)
      if (text.substr(at, a.content.size()) == a.content && (!best || a.content.size() > best->content.size()))
        best = &a;
    if (!best) {
      ++at;
      continue;
    }
    if (at > start) out.push_back({std::string(text.substr(start, at - start))});
    out.push_back({best->content, best->id});
    at += best->content.size();
    start = at;
  }
  if (start < text.size()) out.push_back({std::string(text.substr(start))});
  return out;
}

std::string SpacesForWhitespace(std::string_view text) {
  // UTF-8 of White_Space beyond ASCII: U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F,
  // U+3000. In valid UTF-8 a match can only start at a character's first byte.
  static const std::array<std::string_view, 19> kWide = {
      "\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006",
      "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const char c = text[i];
    if (c == ' ' || (c >= '\t' && c <= '\r')) {
      out += ' ';
      ++i;
      continue;
    }
    size_t len = 0;
    for (std::string_view w : kWide)
      if (text.substr(i, w.size()) == w) len = w.size();
    if (len) {
      out += ' ';
      i += len;
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

std::unique_ptr<Tokenizer> MakeTokenizer(const TokenizerSpec& spec, const std::filesystem::path& package_dir) {
  if (spec.kind == "sentencepiece") return std::make_unique<SentencePieceTokenizer>(spec, package_dir / spec.file);
  return std::make_unique<ByteTokenizer>(spec);
}

}  // namespace reel
