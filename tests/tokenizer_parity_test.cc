// Reel's SentencePiece tokenizer against transformers' T5 tokenizer itself (the project's Python environment),
// over a battery of prompts, for a SentencePiece model trained here and laid out as the Hub's checkpoints hold it
// and as transformers 5 saves it; the package's tokenizer part comes from tools/export (tests/tokenizer/reference.py).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "package/tokenizer.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> Battery() {
  std::vector<std::string> b = {
      "A golden retriever runs through a field of sunflowers at dawn.",
      "",
      " ",
      "\n",
      "  leading and trailing  ",
      "tabs\tand\nnewlines\r\n  runs   of   spaces\v\fend",
      // Unicode: accents, Greek, CJK, emoji (unknown to this vocabulary, one after another), combining marks
      "café naïve Ωmega 東京 😀😀 ☃☃ e\u0301 Straße İstanbul",
      // full-width and half-width forms, the ideographic space
      "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ１２３ ｶﾀｶﾅ",
      // ligatures and other compatibility characters
      "ﬁnance ﬂow ﬀ ﬃ ﬆ Ǆ ① ½ ㎏ ™ Ⅻ",
      // Unicode whitespace and format characters
      "nbsp\u00a0here ideo\u3000space nel\u0085x ogham\u1680x line\u2028para\u2029thin\u2009narrow\u202fmath\u205f"
      "zero\u200bwidth bom\ufeffx",
      // literal special-token text: one id each in transformers
      "</s> end",
      "a</s>b",
      "<pad><pad>",
      "x <extra_id_0> y <extra_id_99>",
      "<extra_id_0><extra_id_0>",
      "<unk>",
      "A <pad> B </s> C <unk> D",
      // near misses: not added tokens
      "<extra_id_100> <extra_id_1 </s <<pad>> <PAD> < /s>",
  };
  std::string words, specials;
  for (int i = 0; i < 300; ++i) words += "word ";
  for (int i = 0; i < 300; ++i) specials += "<extra_id_5></s>";
  b.push_back(words);     // truncated at 226 tokens, EOS kept
  b.push_back(specials);  // added tokens past the cut
  b.push_back(std::string(223, 'a') + " <extra_id_7> tail");
  return b;
}

TEST(TokenizerParity, IdsEqualTransformersT5Tokenizer) {
  const fs::path dir = fs::temp_directory_path() / ("reel-tokenizer-parity-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "work");
  const auto battery = Battery();
  std::ofstream(dir / "prompts.json") << json(battery).dump();
  const std::string cmd = std::string(REEL_PYTHON) + " " + REEL_SOURCE_DIR + "/tests/tokenizer/reference.py " +
                          (dir / "work").string() + " " + (dir / "prompts.json").string() + " > " +
                          (dir / "reference.json").string() + " 2> " + (dir / "reference.log").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "transformers did not answer through " << REEL_PYTHON << "; see "
                                         << dir / "reference.log";
  const json ref = json::parse(std::ifstream(dir / "reference.json"));
  ASSERT_EQ(ref.size(), 3u);  // hub-legacy-true, hub-legacy-false, saved
  for (const auto& [layout, r] : ref.items()) {
    SCOPED_TRACE(layout);
    // transformers 5's default: the tokenizers-backed class, whatever the checkpoint's files.
    EXPECT_EQ(r["class"], "transformers.models.t5.tokenization_t5.T5Tokenizer");
    const json& t = r["tokenizer"];
    TokenizerSpec spec;
    spec.kind = t["kind"];
    spec.file = t["file"];
    spec.max_length = t["max_length"];
    spec.vocab_size = t["vocab_size"];
    spec.pad_id = t["pad_id"];
    spec.eos_id = t["eos_id"];
    for (const auto& a : t["added_tokens"]) spec.added_tokens.push_back({a["content"], a["id"]});
    EXPECT_EQ(spec.added_tokens.size(), 103u);  // <pad>, </s>, <unk> and 100 <extra_id_N>
    const auto tok = MakeTokenizer(spec, r["package"].get<std::string>());
    ASSERT_EQ(r["ids"].size(), battery.size());
    for (size_t i = 0; i < battery.size(); ++i) {
      const auto want = r["ids"][i].get<std::vector<int64_t>>();
      ASSERT_EQ(want.size(), 226u);
      EXPECT_EQ(tok->Encode(battery[i]), want) << "prompt " << i << ": " << json(battery[i]).dump();
    }
  }
  // The layouts differ where transformers differs: the Hub's normalises with the model's charsmap (full-width
  // letters become ASCII) and numbers <extra_id_0> last; transformers 5's own files normalise nothing.
  EXPECT_EQ(ref["hub-legacy-true"]["normalizer"], "sentencepiece");
  EXPECT_EQ(ref["saved"]["normalizer"], "none");
  EXPECT_NE(ref["hub-legacy-true"]["ids"][7], ref["saved"]["ids"][7]);
  EXPECT_NE(ref["hub-legacy-true"]["ids"][13], ref["saved"]["ids"][13]);
  fs::remove_all(dir);
}

TEST(TokenizerParity, AddedTokensSplitLeftmostLongest) {
  const std::vector<AddedToken> added = {{"<a>", 5}, {"<a>b", 6}, {"</s>", 1}};
  EXPECT_EQ(SplitAtAddedTokens("x<a>by</s></s>", added),
            (std::vector<PromptPiece>{{"x"}, {"<a>b", 6}, {"y"}, {"</s>", 1}, {"</s>", 1}}));
  EXPECT_EQ(SplitAtAddedTokens("", added), std::vector<PromptPiece>{});
  EXPECT_EQ(SplitAtAddedTokens("plain", {}), std::vector<PromptPiece>{{"plain"}});
}

TEST(TokenizerParity, UnicodeWhitespaceBecomesSpaces) {
  EXPECT_EQ(SpacesForWhitespace("a\tb\u3000c\u00a0d\u2009e\u200bf"), "a b c d e\u200bf");  // U+200B is no space
}

}  // namespace
}  // namespace reel
