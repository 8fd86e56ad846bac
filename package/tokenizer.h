// Prompt tokenizers: byte-level for synthetic packages, SentencePiece for real T5 exports, the latter giving the ids
// transformers' T5 tokenizer gives (tools/export/exporter/tokenizer.py). Both follow CogVideoX: ids, then EOS,
// truncated and padded to the manifest's max_length.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "package/manifest.h"

namespace reel {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Returns exactly max_length ids.
  virtual std::vector<int64_t> Encode(const std::string& text) const = 0;
};

// `package_dir` locates a SentencePiece model file named by the spec.
std::unique_ptr<Tokenizer> MakeTokenizer(const TokenizerSpec& spec, const std::filesystem::path& package_dir);

// Byte-level ids: byte b becomes b + 3 (ids 0, 1, 2 are pad, EOS and unknown as in T5).
inline constexpr int kByteTokenOffset = 3;

// The steps transformers takes before its Unigram model, here for tests.
// A prompt cut at added tokens: text pieces (id < 0) and added tokens (their id). Like the tokenizers library, the
// leftmost match wins, and the longest of those starting there.
struct PromptPiece {
  std::string text;
  int id = -1;
  bool operator==(const PromptPiece&) const = default;
};
std::vector<PromptPiece> SplitAtAddedTokens(std::string_view text, const std::vector<AddedToken>& added);
// Every Unicode White_Space character (what the tokenizers library's WhitespaceSplit splits at) as an ASCII space,
// the only whitespace SentencePiece splits at.
std::string SpacesForWhitespace(std::string_view text);

}  // namespace reel
