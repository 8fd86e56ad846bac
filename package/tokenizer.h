// Prompt tokenizers: byte-level for synthetic packages, SentencePiece for real T5 exports.
// Both follow CogVideoX: ids, then EOS, truncated and padded to the manifest's max_length.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
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

}  // namespace reel
