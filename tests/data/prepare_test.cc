#include "data/prepare.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "data/shard_format.h"
#include "data/token_loader.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SplitCorpusDocumentsTest, SplitsOnSeparatorLines) {
  const std::string corpus =
      "first doc\nline two\n\x1e\nsecond\n\x1e\n\n  \n\x1e\nthird has \x1e inside\n\x1e\ntail";
  EXPECT_THAT(SplitCorpusDocuments(corpus),
              ElementsAre("first doc\nline two", "second", "third has \x1e inside", "tail"));
}

TEST(SplitCorpusDocumentsTest, HandlesEdgesOfTheFile) {
  EXPECT_THAT(SplitCorpusDocuments("\x1e\nonly\n\x1e"), ElementsAre("only"));
  EXPECT_THAT(SplitCorpusDocuments("no separator at all\n"), ElementsAre("no separator at all\n"));
  EXPECT_TRUE(SplitCorpusDocuments("").empty());
  EXPECT_TRUE(SplitCorpusDocuments(" \n\x1e\n\t\n").empty());
}

TEST(SampleDocumentsTest, TakesWholeDocumentsFromAllOverTheCorpus) {
  std::vector<std::string> storage;
  for (int i = 0; i < 100; ++i) {
    const std::string name = "document " + std::to_string(i) + " ";
    storage.push_back(name + std::string(99 - name.size(), 'x'));
  }
  std::vector<std::string_view> docs(storage.begin(), storage.end());
  const std::string sample = SampleDocuments(docs, 1000);
  EXPECT_EQ(sample.size() % 100, 0u) << "whole documents, newline-joined";
  EXPECT_GE(sample.size(), 1000u);
  EXPECT_LE(sample.size(), 1100u);
  EXPECT_EQ(sample.substr(0, 99), storage[0]);
  // Spread evenly: the last sampled document is from the last tenth.
  const std::string last = sample.substr(sample.size() - 100, 99);
  EXPECT_NE(std::find(storage.begin() + 90, storage.end(), last), storage.end());
  EXPECT_EQ(std::find(storage.begin(), storage.begin() + 80, last), storage.begin() + 80);
  EXPECT_EQ(SampleDocuments(docs, 1 << 20).size(), 100u * 100u);
}

TEST(IsValidationDocumentTest, DeterministicAndNearTheFraction) {
  int val = 0;
  for (int i = 0; i < 10000; ++i) {
    const bool v = IsValidationDocument(3, i, 0.1);
    EXPECT_EQ(v, IsValidationDocument(3, i, 0.1));
    val += v;
  }
  EXPECT_NEAR(val, 1000, 150);
  int same = 0;
  for (int i = 0; i < 1000; ++i)
    same += IsValidationDocument(3, i, 0.5) == IsValidationDocument(4, i, 0.5);
  EXPECT_LT(same, 600) << "another seed picks other documents";
}

class PrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("prepare_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const char* words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"};
    std::ofstream corpus(dir_ / "corpus.txt", std::ios::binary);
    for (int d = 0; d < 40; ++d) {
      std::string doc = "Document " + std::to_string(d) + ":";
      for (int w = 0; w < 30 + d; ++w) doc += std::string(" ") + words[(d * 7 + w * 3) % 10];
      docs_.push_back(doc + ".");
      corpus << docs_.back() << "\n\x1e\n";
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  PrepareOptions Options(const std::string& out) const {
    PrepareOptions o;
    o.input = (dir_ / "corpus.txt").string();
    o.out_dir = (dir_ / out).string();
    o.tokenizer_dir = (dir_ / out / "tokenizer").string();
    o.train_tokenizer_vocab = 300;
    o.val_fraction = 0.1;
    o.shard_tokens = 500;
    o.seed = 5;
    return o;
  }

  // The token stream of one split, read back through the shards.
  static std::vector<int32_t> ReadSplit(const std::string& dir, const SplitManifest& split,
                                        int64_t vocab) {
    std::vector<int32_t> all;
    for (const ShardEntry& e : split.shards) {
      auto shard = TokenShard::Open((fs::path(dir) / e.file).string(), vocab);
      EXPECT_TRUE(shard.ok()) << shard.status();
      std::vector<int32_t> part(shard->size());
      shard->Read(0, shard->size(), part.data());
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  }

  fs::path dir_;
  std::vector<std::string> docs_;
};

TEST_F(PrepareTest, WritesShardsManifestAndTokenizerThatRoundTripTheCorpus) {
  const PrepareOptions o = Options("out");
  auto summary = PrepareDataset(o);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->documents, 40);
  EXPECT_EQ(summary->train_documents + summary->val_documents, 40);
  EXPECT_GE(summary->val_documents, 1);

  auto m = DatasetManifest::Read(o.out_dir);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tokenizer_dir, "tokenizer") << "inside the dataset: stored relative";
  EXPECT_GT(m->train.shards.size(), 1u) << "500-token shards";
  auto tokenizer = BpeTokenizer::Load(o.tokenizer_dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ(m->vocab_size, tokenizer->vocab_size());
  EXPECT_EQ(m->eot_id, tokenizer->eot_id());

  // Every document comes back, in corpus order, in exactly one split.
  std::vector<std::string> expected_train, expected_val;
  for (size_t i = 0; i < docs_.size(); ++i) {
    (IsValidationDocument(o.seed, static_cast<int64_t>(i), o.val_fraction) ? expected_val
                                                                           : expected_train)
        .push_back(docs_[i]);
  }
  ASSERT_FALSE(expected_val.empty()) << "seed 5 draws at least one validation document";
  auto decode_docs = [&](const SplitManifest& split) {
    const std::vector<int32_t> stream = ReadSplit(o.out_dir, split, m->vocab_size);
    EXPECT_EQ(static_cast<int64_t>(stream.size()), split.tokens);
    std::vector<std::string> out;
    std::vector<int32_t> current;
    for (int32_t id : stream) {
      if (id == m->eot_id) {
        out.push_back(tokenizer->Decode(current));
        current.clear();
      } else {
        current.push_back(id);
      }
    }
    EXPECT_TRUE(current.empty()) << "every document ends with the end-of-text id";
    return out;
  };
  EXPECT_EQ(decode_docs(m->train), expected_train);
  EXPECT_EQ(decode_docs(m->val), expected_val);
}

TEST_F(PrepareTest, IsDeterministicAndFeedsTheLoader) {
  auto a = PrepareDataset(Options("a"));
  auto b = PrepareDataset(Options("b"));
  ASSERT_TRUE(a.ok() && b.ok());
  auto ma = DatasetManifest::Read((dir_ / "a").string());
  auto mb = DatasetManifest::Read((dir_ / "b").string());
  ASSERT_TRUE(ma.ok() && mb.ok());
  ASSERT_EQ(ma->train.shards.size(), mb->train.shards.size());
  for (size_t i = 0; i < ma->train.shards.size(); ++i) {
    EXPECT_EQ(ma->train.shards[i].crc32c, mb->train.shards[i].crc32c);
  }

  // Load the existing tokenizer instead of training: same tokens.
  PrepareOptions reuse = Options("c");
  reuse.tokenizer_dir = (dir_ / "a" / "tokenizer").string();
  reuse.train_tokenizer_vocab = 0;
  auto c = PrepareDataset(reuse);
  ASSERT_TRUE(c.ok()) << c.status();
  auto mc = DatasetManifest::Read((dir_ / "c").string());
  ASSERT_TRUE(mc.ok());
  EXPECT_EQ(mc->train.tokens, ma->train.tokens);
  EXPECT_EQ(mc->tokenizer_dir, fs::absolute(reuse.tokenizer_dir).lexically_normal().string());

  TokenLoaderOptions lo;
  lo.dataset_dir = (dir_ / "a").string();
  lo.seq_length = 16;
  lo.micro_batch_size = 2;
  auto loader = TokenLoader::Open(lo);
  ASSERT_TRUE(loader.ok()) << loader.status();
  EXPECT_EQ(loader->num_tokens(), ma->train.tokens);
  EXPECT_EQ(loader->eot_id(), ma->eot_id);
}

TEST_F(PrepareTest, BadInputsAreClearErrors) {
  PrepareOptions o = Options("bad");
  o.input = (dir_ / "missing.txt").string();
  auto missing = PrepareDataset(o);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("missing.txt"));
  EXPECT_THAT(missing.status().message(), HasSubstr("scripts/corpus.sh"));

  o = Options("bad");
  o.val_fraction = 1.0;
  EXPECT_THAT(PrepareDataset(o).status().message(), HasSubstr("--val-fraction"));

  // One document cannot give a train and a validation split: refused, not
  // written with an empty validation split that fails only at train time.
  {
    std::ofstream one(dir_ / "one_doc.txt", std::ios::binary);
    one << docs_[0] << "\n\x1e\n";
  }
  o = Options("bad_one_doc");
  o.input = (dir_ / "one_doc.txt").string();
  auto one_doc = PrepareDataset(o);
  ASSERT_FALSE(one_doc.ok());
  EXPECT_EQ(one_doc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one_doc.status().message(), HasSubstr("one_doc.txt holds 1 document"));
  EXPECT_FALSE(fs::exists(dir_ / "bad_one_doc" / kManifestFile));

  o = Options("bad");
  o.train_tokenizer_vocab = 0;
  o.tokenizer_dir = (dir_ / "no_tokenizer").string();
  auto no_tokenizer = PrepareDataset(o);
  ASSERT_FALSE(no_tokenizer.ok());
  EXPECT_THAT(no_tokenizer.status().message(), HasSubstr("no_tokenizer"));
}

}  // namespace
}  // namespace scalemoe
