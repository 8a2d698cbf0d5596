#include "data/token_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/shard_format.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int64_t kVocab = 5000;

// A synthetic dataset whose token at stream position p is p itself, so every
// served window tells where in the stream it came from. The train split
// spans three shards of uneven size so windows cross shard boundaries.
class TokenLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("token_loader_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    WriteDataset({1000, 777, 1224}, 300);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void WriteDataset(const std::vector<int64_t>& train_shards, int64_t val_tokens) {
    DatasetManifest m;
    m.vocab_size = kVocab;
    m.eot_id = kVocab - 1;
    m.tokenizer_dir = "tokenizer";
    m.source = "synthetic";
    int64_t next = 0;
    auto add = [&](SplitManifest& split, const std::string& name, int64_t n) {
      std::vector<int32_t> tokens(n);
      for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>(next++ % kVocab);
      auto info = WriteShard((dir_ / name).string(), tokens, kVocab);
      ASSERT_TRUE(info.ok()) << info.status();
      split.shards.push_back({name, n, info->checksum});
      split.tokens += n;
      split.documents += 1;
    };
    for (size_t s = 0; s < train_shards.size(); ++s) {
      add(m.train, "train_00000" + std::to_string(s) + ".bin", train_shards[s]);
    }
    next = 0;
    add(m.val, "val_000000.bin", val_tokens);
    ASSERT_TRUE(m.Write(dir_.string()).ok());
  }

  TokenLoaderOptions Options(int64_t t, int64_t b, int rank = 0, int size = 1,
                             uint64_t seed = 7) const {
    TokenLoaderOptions o;
    o.dataset_dir = dir_.string();
    o.seq_length = t;
    o.micro_batch_size = b;
    o.dp_rank = rank;
    o.dp_size = size;
    o.seed = seed;
    return o;
  }

  static TokenLoader MustOpen(const TokenLoaderOptions& o) {
    auto loader = TokenLoader::Open(o);
    EXPECT_TRUE(loader.ok()) << loader.status();
    return std::move(loader).value();
  }

  // Window index of row `b` (its first input token is w * T).
  static int64_t WindowOf(const MicroBatch& batch, int64_t b) {
    return batch.inputs[b * batch.seq] / batch.seq;
  }

  fs::path dir_;
};

TEST_F(TokenLoaderTest, WindowsAreContiguousAndTargetsAreShiftedInputs) {
  TokenLoader loader = MustOpen(Options(16, 4));
  EXPECT_EQ(loader.num_tokens(), 3001);
  EXPECT_EQ(loader.num_windows(), 3000 / 16);
  for (int step = 0; step < 60; ++step) {  // more than one epoch
    const MicroBatch batch = loader.Next();
    ASSERT_EQ(batch.inputs.size(), 64u);
    for (int64_t b = 0; b < 4; ++b) {
      const int32_t first = batch.inputs[b * 16];
      EXPECT_EQ(first % 16, 0) << "windows start at multiples of T";
      for (int64_t t = 0; t < 16; ++t) {
        EXPECT_EQ(batch.inputs[b * 16 + t], first + t);
        EXPECT_EQ(batch.targets[b * 16 + t], first + t + 1);
      }
    }
  }
}

TEST_F(TokenLoaderTest, EachEpochServesEveryWindowAtMostOnceInANewOrder) {
  TokenLoader loader = MustOpen(Options(10, 3));
  const int64_t per_epoch = loader.micro_batches_per_epoch();
  ASSERT_EQ(per_epoch, (3000 / 10) / 3);
  std::vector<int64_t> epoch0, epoch1;
  for (int64_t i = 0; i < 2 * per_epoch; ++i) {
    const MicroBatch batch = loader.Next();
    EXPECT_EQ(batch.epoch, i / per_epoch);
    for (int64_t b = 0; b < 3; ++b) (i < per_epoch ? epoch0 : epoch1).push_back(WindowOf(batch, b));
  }
  EXPECT_EQ(std::set<int64_t>(epoch0.begin(), epoch0.end()).size(), epoch0.size());
  EXPECT_EQ(std::set<int64_t>(epoch1.begin(), epoch1.end()).size(), epoch1.size());
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(loader.state().epoch, 1);
}

TEST_F(TokenLoaderTest, ResumingFromSavedStateIsBitIdentical) {
  const TokenLoaderOptions o = Options(12, 5);
  TokenLoader straight = MustOpen(o);
  const int n = 70, k = 23;  // n crosses an epoch boundary (50 per epoch)
  ASSERT_LT(straight.micro_batches_per_epoch(), n);
  std::vector<MicroBatch> expected;
  for (int i = 0; i < n; ++i) expected.push_back(straight.Next());

  TokenLoader first = MustOpen(o);
  for (int i = 0; i < k; ++i) first.Next();
  const std::string saved = first.state().ToJson();

  auto state = LoaderState::FromJson(saved);
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(*state, first.state());
  TokenLoader resumed = MustOpen(o);
  ASSERT_TRUE(resumed.Restore(*state).ok());
  for (int i = k; i < n; ++i) {
    const MicroBatch batch = resumed.Next();
    ASSERT_EQ(batch.inputs, expected[i].inputs) << "micro-batch " << i;
    ASSERT_EQ(batch.targets, expected[i].targets) << "micro-batch " << i;
  }
  EXPECT_EQ(resumed.state(), straight.state());
}

TEST_F(TokenLoaderTest, AtMatchesSequentialNext) {
  TokenLoader sequential = MustOpen(Options(8, 2, 1, 3));
  TokenLoader random_access = MustOpen(Options(8, 2, 1, 3));
  std::vector<MicroBatch> batches;
  for (int i = 0; i < 150; ++i) batches.push_back(sequential.Next());
  for (int i : {149, 0, 63, 62, 64, 1, 100}) {
    EXPECT_EQ(random_access.At(i).inputs, batches[i].inputs) << "index " << i;
  }
  EXPECT_EQ(random_access.state().position, 0) << "At leaves the state alone";
}

TEST_F(TokenLoaderTest, DataParallelRanksAreDisjointAndMakeTheGlobalBatch) {
  const int dp = 3;
  const int64_t b = 4;
  TokenLoader global = MustOpen(Options(16, dp * b));
  std::vector<TokenLoader> ranks;
  for (int r = 0; r < dp; ++r) ranks.push_back(MustOpen(Options(16, b, r, dp)));
  for (int step = 0; step < 20; ++step) {  // > one epoch (15 global batches)
    const MicroBatch whole = global.Next();
    std::vector<int32_t> joined;
    std::set<int64_t> windows;
    for (int r = 0; r < dp; ++r) {
      const MicroBatch part = ranks[r].Next();
      joined.insert(joined.end(), part.inputs.begin(), part.inputs.end());
      for (int64_t row = 0; row < b; ++row) windows.insert(WindowOf(part, row));
    }
    EXPECT_EQ(windows.size(), static_cast<size_t>(dp * b)) << "ranks overlap at step " << step;
    EXPECT_EQ(joined, whole.inputs) << "step " << step;
  }
}

TEST_F(TokenLoaderTest, DifferentSeedsGiveDifferentOrders) {
  TokenLoader a = MustOpen(Options(16, 4, 0, 1, 1));
  TokenLoader b = MustOpen(Options(16, 4, 0, 1, 2));
  TokenLoader a_again = MustOpen(Options(16, 4, 0, 1, 1));
  const MicroBatch first_a = a.Next();
  EXPECT_NE(first_a.inputs, b.Next().inputs);
  EXPECT_EQ(first_a.inputs, a_again.Next().inputs);
}

TEST_F(TokenLoaderTest, ValidationSplitIsServedFromItsOwnShards) {
  TokenLoaderOptions o = Options(10, 2);
  o.split = "val";
  TokenLoader loader = MustOpen(o);
  EXPECT_EQ(loader.num_tokens(), 300);
  EXPECT_EQ(loader.num_windows(), 29);
  o.split = "test";
  auto bad = TokenLoader::Open(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("\"train\" or \"val\""));
}

TEST_F(TokenLoaderTest, RestoreRefusesAStateOfAnotherRun) {
  TokenLoader loader = MustOpen(Options(16, 4));
  LoaderState state = loader.state();
  state.seed = 99;
  Status s = loader.Restore(state);
  EXPECT_THAT(s.message(), HasSubstr("shuffle seed 99"));
  state = loader.state();
  state.seq_length = 32;
  EXPECT_THAT(loader.Restore(state).message(), HasSubstr("seq_length"));
  state = loader.state();
  state.position = loader.num_windows() + 1;
  EXPECT_FALSE(loader.Restore(state).ok());
  EXPECT_FALSE(LoaderState::FromJson("{\"epoch\": 1}").ok());
}

TEST_F(TokenLoaderTest, MissingDatasetNamesTheManifest) {
  TokenLoaderOptions o = Options(16, 4);
  o.dataset_dir = (dir_ / "absent").string();
  auto loader = TokenLoader::Open(o);
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(loader.status().message(), HasSubstr("manifest.json"));
  EXPECT_THAT(loader.status().message(), HasSubstr("scalemoe prepare"));
}

TEST_F(TokenLoaderTest, CorruptShardIsReportedByName) {
  const std::string path = (dir_ / "train_000001.bin").string();
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(kShardHeaderBytes + 10));
  f.put('\x7f');
  f.close();
  auto loader = TokenLoader::Open(Options(16, 4));
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(loader.status().message(), HasSubstr("train_000001.bin"));
  EXPECT_THAT(loader.status().message(), HasSubstr("checksum"));
}

TEST_F(TokenLoaderTest, ShardReplacedBehindTheManifestIsRefused) {
  ASSERT_TRUE(
      WriteShard((dir_ / "train_000002.bin").string(), std::vector<int32_t>(1224, 3), kVocab).ok());
  auto loader = TokenLoader::Open(Options(16, 4));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr("manifest lists"));
}

// A manifest naming a shard outside the dataset directory is refused when
// read, before the file is opened: here a valid copy of the first shard,
// which would otherwise load.
TEST_F(TokenLoaderTest, ShardOutsideTheDatasetDirectoryIsRefused) {
  const fs::path outside = dir_.string() + "_outside";
  fs::create_directories(outside);
  fs::copy_file(dir_ / "train_000000.bin", outside / "train_000000.bin",
                fs::copy_options::overwrite_existing);
  StatusOr<DatasetManifest> m = DatasetManifest::Read(dir_.string());
  ASSERT_TRUE(m.ok()) << m.status();
  for (const std::string& file :
       {"../" + outside.filename().string() + "/train_000000.bin",
        (outside / "train_000000.bin").string(), std::string("..")}) {
    SCOPED_TRACE(file);
    DatasetManifest bad = *m;
    bad.train.shards[0].file = file;
    ASSERT_TRUE(bad.Write(dir_.string()).ok());
    auto loader = TokenLoader::Open(Options(16, 2));
    ASSERT_FALSE(loader.ok());
    EXPECT_EQ(loader.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(loader.status().message(), HasSubstr("shard file '" + file + "'"));
    EXPECT_THAT(loader.status().message(), HasSubstr("manifest.json"));
  }
  fs::remove_all(outside);
}

TEST_F(TokenLoaderTest, BadLayoutIsRefused) {
  EXPECT_THAT(TokenLoader::Open(Options(0, 4)).status().message(), HasSubstr("seq_length"));
  EXPECT_THAT(TokenLoader::Open(Options(16, 0)).status().message(), HasSubstr("micro_batch_size"));
  EXPECT_THAT(TokenLoader::Open(Options(16, 4, 2, 2)).status().message(), HasSubstr("dp_rank"));
  // 3001 tokens hold 2 windows of 1024 + 1; a global batch of 4 does not fit.
  auto too_small = TokenLoader::Open(Options(1024, 2, 0, 2));
  ASSERT_FALSE(too_small.ok());
  EXPECT_THAT(too_small.status().message(), HasSubstr("needs dp_size * micro_batch_size = 4"));
}

}  // namespace
}  // namespace scalemoe
