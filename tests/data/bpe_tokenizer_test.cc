// BpeTokenizer and the GPT-2 pre-tokeniser on small trained vocabularies:
// splitting rules, training, round trips, save/load, and bad input.
#include "data/bpe_tokenizer.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/pretokenize.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<std::string> Pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : Pretokenize(text)) out.emplace_back(p);
  return out;
}

std::string Corpus() {
  std::string text;
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog.\n",
      "It's the dog's toy, and they're playing in the garden again!\n",
      "Numbers like 1234 and 56789 appear; so do   spaces\tand tabs.\n",
      "Café, naïve, Привет мир, 你好世界, and emoji 😀 too.\n"};
  for (int i = 0; i < 40; ++i) text += lines[i % 4];
  // Many distinct made-up words, so that training never runs out of pairs.
  const char* syllables[] = {"ka", "ro", "mi", "sen", "tu", "bel", "og", "rin", "da", "vex"};
  for (int i = 0; i < 600; ++i) {
    text += ' ';
    for (int k = i; k > 0; k /= 7) text += syllables[(k * 3 + i) % 10];
  }
  return text;
}

std::string RandomBytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

std::string TempDir(const std::string& name) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("bpe_" + name);
  std::filesystem::remove_all(dir);
  return dir.string();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(PretokenizeTest, SplitsLikeGpt2Regex) {
  EXPECT_THAT(Pieces("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Pieces("I'm don't"), ElementsAre("I", "'m", " don", "'t"));
  EXPECT_THAT(Pieces("'sa"), ElementsAre("'s", "a"));
  EXPECT_THAT(Pieces("a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Pieces("x   "), ElementsAre("x", "   "));
  EXPECT_THAT(Pieces("abc123 45"), ElementsAre("abc", "123", " 45"));
  EXPECT_THAT(Pieces("!!! ?x"), ElementsAre("!!!", " ?", "x"));
  EXPECT_THAT(Pieces("Привет мир"), ElementsAre("Привет", " мир"));
  EXPECT_THAT(Pieces("a\u00a0b"), ElementsAre("a", "\u00a0", "b"));
}

TEST(PretokenizeTest, WhitespaceRunBeforeWordKeepsLastSpaceForTheWord) {
  EXPECT_THAT(Pieces("\n\nx"), ElementsAre("\n", "\n", "x"));
  EXPECT_THAT(Pieces("  \t x"), ElementsAre("  \t", " x"));
}

TEST(PretokenizeTest, ClassifiesUnicode) {
  EXPECT_EQ(ClassifyCodePoint(U'é'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodePoint(U'Ж'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodePoint(U'中'), CharClass::kLetter);
  EXPECT_EQ(ClassifyCodePoint(U'½'), CharClass::kNumber);
  EXPECT_EQ(ClassifyCodePoint(U'Ⅻ'), CharClass::kNumber);
  EXPECT_EQ(ClassifyCodePoint(U'٣'), CharClass::kNumber);
  EXPECT_EQ(ClassifyCodePoint(0x3000), CharClass::kSpace);
  EXPECT_EQ(ClassifyCodePoint(0xFEFF), CharClass::kSpace);
  EXPECT_EQ(ClassifyCodePoint(0x85), CharClass::kOther);
  EXPECT_EQ(ClassifyCodePoint(0x1F600), CharClass::kOther);
  EXPECT_EQ(ClassifyCodePoint(0x0301), CharClass::kOther);
}

TEST(PretokenizeTest, PiecesConcatenateToArbitraryBytes) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string text = RandomBytes(rng, 1 + rng() % 64);
    std::string joined;
    for (std::string_view p : Pretokenize(text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST(BpeTrainTest, FirstMergeIsMostFrequentPair) {
  // Pieces "ab", " ab" x3, " cd": (a,b) occurs 4 times, (' ',a) 3 times.
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train("ab ab ab ab cd", 258);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 258);
  EXPECT_EQ(t->eot_id(), 257);
  EXPECT_THAT(t->Encode("ab"), ElementsAre(256));
  EXPECT_EQ(t->Decode({256}), "ab");
  EXPECT_EQ(t->Decode({t->eot_id()}), "<|endoftext|>");
}

TEST(BpeTrainTest, RespectsVocabSizeAndCompresses) {
  const std::string corpus = Corpus();
  for (int size : {257, 300, 400}) {
    StatusOr<BpeTokenizer> t = BpeTokenizer::Train(corpus, size);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->vocab_size(), size);
    EXPECT_EQ(t->eot_id(), size - 1);
    for (int32_t id : t->Encode(corpus)) EXPECT_LT(id, size - 1);
  }
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train(corpus, 400);
  ASSERT_TRUE(t.ok());
  EXPECT_LT(t->Encode(corpus).size(), corpus.size() / 3);
  EXPECT_THAT(t->Encode(" the"), ElementsAre(::testing::Gt(255)));
}

TEST(BpeTrainTest, StopsWhenNoPairsAreLeft) {
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train("abc", 1000);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 256 + 2 + 1);  // "ab" then "abc", then <|endoftext|>
  EXPECT_THAT(t->Encode("abc"), ElementsAre(257));
}

TEST(BpeTrainTest, RejectsTooSmallVocab) {
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train("abc", 256);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("at least 257"));
}

TEST(BpeTokenizerTest, RoundTripsArbitraryBytesIncludingInvalidUtf8) {
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train(Corpus(), 400);
  ASSERT_TRUE(t.ok());
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = RandomBytes(rng, rng() % 200);
    EXPECT_EQ(t->Decode(t->Encode(text)), text);
  }
  const std::string corpus = Corpus();
  EXPECT_EQ(t->Decode(t->Encode(corpus)), corpus);
  EXPECT_EQ(t->Decode(t->Encode("\xC3\x28 \xE2\x82 \xF0\x9F\x98 \xFF\xFE")),
            "\xC3\x28 \xE2\x82 \xF0\x9F\x98 \xFF\xFE");
}

// GPT-2's bpe() on byte strings, written the slow obvious way, with merges read
// back from a saved vocab.bpe-equivalent list.
std::vector<std::string> NaiveBpe(const std::string& word,
                                  const std::vector<std::pair<std::string, std::string>>& merges) {
  std::vector<std::string> s;
  for (char c : word) s.emplace_back(1, c);
  while (s.size() > 1) {
    size_t best = merges.size();
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      for (size_t r = 0; r < best; ++r) {
        if (merges[r].first == s[i] && merges[r].second == s[i + 1]) best = r;
      }
    }
    if (best == merges.size()) break;
    std::vector<std::string> merged;
    for (size_t i = 0; i < s.size();) {
      if (i + 1 < s.size() && s[i] == merges[best].first && s[i + 1] == merges[best].second) {
        merged.push_back(s[i] + s[i + 1]), i += 2;
      } else {
        merged.push_back(s[i]), i += 1;
      }
    }
    s = merged;
  }
  return s;
}

TEST(BpeTokenizerTest, LongAndShortWordsMergeLikeGpt2) {
  // Few letters so that long words hold many repeated and overlapping pairs.
  std::mt19937 rng(5);
  std::string corpus;
  for (int i = 0; i < 3000; ++i) {
    if (i < 600 && i % 7 == 0) corpus += ' ';  // short words, then one long one
    corpus += static_cast<char>('a' + rng() % 3);
  }
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train(corpus, 320);
  ASSERT_TRUE(t.ok());
  std::vector<std::pair<std::string, std::string>> merges;
  const std::string dir = TempDir("merges");
  ASSERT_TRUE(t->Save(dir).ok());
  std::ifstream in(dir + "/vocab.bpe");
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    const size_t space = line.find(' ');
    // Tokens here are letters/space only: 'Ġ' (U+0120) spells ' '.
    auto unspell = [](const std::string& s) {
      std::string bytes;
      for (size_t i = 0; i < s.size(); ++i) {
        const bool space = s.compare(i, 2, "\xC4\xA0") == 0;
        bytes += space ? ' ' : s[i];
        i += space ? 1 : 0;
      }
      return bytes;
    };
    merges.emplace_back(unspell(line.substr(0, space)), unspell(line.substr(space + 1)));
  }
  for (int trial = 0; trial < 60; ++trial) {
    std::string word;
    const size_t n = 2 + rng() % 120;  // both sides of the short/long split
    for (size_t i = 0; i < n; ++i) word += static_cast<char>('a' + rng() % 3);
    std::string ours;
    for (int32_t id : t->Encode(word)) ours += t->Decode({id}) + "|";
    std::string expected;
    for (const std::string& piece : NaiveBpe(word, merges)) expected += piece + "|";
    EXPECT_EQ(ours, expected) << word;
  }
}

TEST(BpeTokenizerTest, SaveLoadRoundTrip) {
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train(Corpus(), 350);
  ASSERT_TRUE(t.ok());
  const std::string dir = TempDir("roundtrip");
  ASSERT_TRUE(t->Save(dir).ok());
  StatusOr<BpeTokenizer> loaded = BpeTokenizer::Load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->vocab_size(), t->vocab_size());
  EXPECT_EQ(loaded->eot_id(), t->eot_id());
  std::mt19937 rng(3);
  for (const std::string& text : {Corpus(), std::string("Naïve café 😀 1234!!"), RandomBytes(rng, 500)}) {
    EXPECT_EQ(loaded->Encode(text), t->Encode(text));
  }
  for (int32_t id = 0; id < t->vocab_size(); ++id) EXPECT_EQ(loaded->Decode({id}), t->Decode({id}));
}

TEST(BpeTokenizerTest, EncodesConcurrently) {
  StatusOr<BpeTokenizer> t = BpeTokenizer::Train(Corpus(), 350);
  ASSERT_TRUE(t.ok());
  const std::string text = Corpus();
  const std::vector<int32_t> expected = t->Encode(text);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&] { r = t->Encode(text); });
  for (auto& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

class BadTokenizerFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    StatusOr<BpeTokenizer> t = BpeTokenizer::Train("ab ab ab", 258);
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(t->Save(dir_).ok());
  }
  Status LoadStatus() { return BpeTokenizer::Load(dir_).status(); }
  std::string dir_;
};

TEST_F(BadTokenizerFilesTest, MissingDirectory) {
  const Status s = BpeTokenizer::Load(dir_ + "/nope").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir_ + "/nope"));
}

TEST_F(BadTokenizerFilesTest, MissingVocabFile) {
  std::filesystem::remove(dir_ + "/vocab.bpe");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(LoadStatus().message(), HasSubstr("vocab.bpe"));
}

TEST_F(BadTokenizerFilesTest, MalformedEncoderJson) {
  WriteText(dir_ + "/encoder.json", "{\"a\": 0, ");
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(LoadStatus().message(), HasSubstr("encoder.json"));
  WriteText(dir_ + "/encoder.json", "{\"a\": \"zero\"}");
  EXPECT_THAT(LoadStatus().message(), HasSubstr("encoder.json: token 'a'"));
}

TEST_F(BadTokenizerFilesTest, EncoderMissingAByteToken) {
  std::ifstream in(dir_ + "/encoder.json");
  std::stringstream text;
  text << in.rdbuf();
  std::string json = text.str();
  // Respell byte 'z' (id 89 in GPT-2's byte order) as "zz": ids stay dense.
  json.replace(json.find("\"z\":89,"), 7, "\"zz\":89,");
  WriteText(dir_ + "/encoder.json", json);
  EXPECT_THAT(LoadStatus().message(), HasSubstr("encoder.json: no token for byte 0x7A"));
  EXPECT_EQ(LoadStatus().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BadTokenizerFilesTest, MergeReferencingUnknownToken) {
  WriteText(dir_ + "/vocab.bpe", "#version: 0.2\na b\nq zz\n");
  const Status s = LoadStatus();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("vocab.bpe line 3"));
  EXPECT_THAT(s.message(), HasSubstr("'zz'"));
}

TEST_F(BadTokenizerFilesTest, MergeLineWithOneToken) {
  WriteText(dir_ + "/vocab.bpe", "#version: 0.2\nab\n");
  EXPECT_THAT(LoadStatus().message(), HasSubstr("vocab.bpe line 2"));
}

TEST_F(BadTokenizerFilesTest, MissingVersionHeader) {
  WriteText(dir_ + "/vocab.bpe", "a b\n");
  EXPECT_THAT(LoadStatus().message(), HasSubstr("#version"));
}

}  // namespace
}  // namespace scalemoe
