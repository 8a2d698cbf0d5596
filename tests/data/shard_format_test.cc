#include "data/shard_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ShardFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("shard_format_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a shard of `n` tokens (i * 7 mod vocab) and returns its path.
  std::string WriteExample(int64_t n, int64_t vocab) {
    std::vector<int32_t> tokens(n);
    for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<int32_t>((i * 7) % vocab);
    const std::string path = Path("example.bin");
    EXPECT_TRUE(WriteShard(path, tokens, vocab).ok());
    return path;
  }

  static std::vector<char> ReadBytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  }
  static void WriteBytes(const std::string& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  fs::path dir_;
};

TEST(Crc32cTest, MatchesTheStandardCheckValue) {
  // RFC 3720 / iSCSI check value of "123456789".
  const char* text = "123456789";
  EXPECT_EQ(Crc32c(text, 9), 0xE3069283u);
  // Incremental use gives the same result as one call.
  EXPECT_EQ(Crc32c(text + 4, 5, Crc32c(text, 4)), 0xE3069283u);
  EXPECT_EQ(Crc32c(text, 0), 0u);
}

TEST(TokenDtypeTest, NarrowestDtypeThatHoldsEveryId) {
  EXPECT_EQ(TokenDtypeForVocab(50257), TokenDtype::kUint16);
  EXPECT_EQ(TokenDtypeForVocab(65536), TokenDtype::kUint16);
  EXPECT_EQ(TokenDtypeForVocab(65537), TokenDtype::kUint32);
}

TEST_F(ShardFormatTest, RoundTripsUint16) {
  std::vector<int32_t> tokens(1001);
  std::iota(tokens.begin(), tokens.end(), 0);
  tokens[5] = 4095;
  auto info = WriteShard(Path("a.bin"), tokens, 4096);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->dtype, TokenDtype::kUint16);
  EXPECT_EQ(fs::file_size(Path("a.bin")), kShardHeaderBytes + 2 * tokens.size());

  auto shard = TokenShard::Open(Path("a.bin"), 4096);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ(shard->size(), 1001);
  EXPECT_EQ(shard->info().checksum, info->checksum);
  std::vector<int32_t> back(tokens.size());
  shard->Read(0, shard->size(), back.data());
  EXPECT_EQ(back, tokens);
  std::vector<int32_t> middle(3);
  shard->Read(4, 3, middle.data());
  EXPECT_THAT(middle, ::testing::ElementsAre(4, 4095, 6));
}

TEST_F(ShardFormatTest, RoundTripsUint32ForLargeVocabularies) {
  const std::vector<int32_t> tokens = {0, 65535, 65536, 99999, 7};
  auto info = WriteShard(Path("b.bin"), tokens, 100000);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->dtype, TokenDtype::kUint32);
  auto shard = TokenShard::Open(Path("b.bin"), 0);
  ASSERT_TRUE(shard.ok()) << shard.status();
  std::vector<int32_t> back(tokens.size());
  shard->Read(0, 5, back.data());
  EXPECT_EQ(back, tokens);
}

TEST_F(ShardFormatTest, EmptyShardIsValid) {
  ASSERT_TRUE(WriteShard(Path("e.bin"), {}, 10).ok());
  auto shard = TokenShard::Open(Path("e.bin"), 10);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ(shard->size(), 0);
}

TEST_F(ShardFormatTest, WriterRefusesIdsOutsideTheVocabulary) {
  auto info = WriteShard(Path("c.bin"), std::vector<int32_t>{1, 2, 10}, 10);
  ASSERT_FALSE(info.ok());
  EXPECT_THAT(info.status().message(), HasSubstr("token 2 has id 10"));
  EXPECT_FALSE(fs::exists(Path("c.bin")));
}

TEST_F(ShardFormatTest, MissingFileIsNotFound) {
  auto shard = TokenShard::Open(Path("nope.bin"), 0);
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(shard.status().message(), HasSubstr("nope.bin"));
}

TEST_F(ShardFormatTest, CorruptPayloadFailsTheChecksum) {
  const std::string path = WriteExample(500, 1000);
  std::vector<char> bytes = ReadBytes(path);
  bytes[kShardHeaderBytes + 123] ^= 0x10;
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(shard.status().message(), HasSubstr("checksum"));
  EXPECT_THAT(shard.status().message(), HasSubstr(path));
}

TEST_F(ShardFormatTest, TruncatedPayloadIsDetected) {
  const std::string path = WriteExample(500, 1000);
  std::vector<char> bytes = ReadBytes(path);
  bytes.resize(bytes.size() - 3);
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_THAT(shard.status().message(), HasSubstr("truncated"));
  EXPECT_THAT(shard.status().message(), HasSubstr(path));
}

TEST_F(ShardFormatTest, TruncatedHeaderIsDetected) {
  const std::string path = WriteExample(10, 1000);
  std::vector<char> bytes = ReadBytes(path);
  bytes.resize(20);
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_THAT(shard.status().message(), HasSubstr("shorter than the 64-byte header"));
}

TEST_F(ShardFormatTest, TrailingBytesAreDetected) {
  const std::string path = WriteExample(10, 1000);
  std::vector<char> bytes = ReadBytes(path);
  bytes.push_back(0);
  bytes.push_back(0);
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_THAT(shard.status().message(), HasSubstr("trailing bytes"));
}

TEST_F(ShardFormatTest, WrongMagicIsRefused) {
  const std::string path = WriteExample(10, 1000);
  std::vector<char> bytes = ReadBytes(path);
  bytes[0] = 'X';
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_THAT(shard.status().message(), HasSubstr("wrong magic"));
}

TEST_F(ShardFormatTest, UnknownVersionIsRefused) {
  const std::string path = WriteExample(10, 1000);
  std::vector<char> bytes = ReadBytes(path);
  const uint32_t version = 99;
  std::memcpy(&bytes[8], &version, 4);
  WriteBytes(path, bytes);
  auto shard = TokenShard::Open(path, 1000);
  ASSERT_FALSE(shard.ok());
  EXPECT_THAT(shard.status().message(), HasSubstr("format version 99 is not supported"));
}

TEST_F(ShardFormatTest, VocabMismatchIsRefused) {
  const std::string path = WriteExample(10, 1000);
  auto shard = TokenShard::Open(path, 50257);
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(shard.status().message(), HasSubstr("vocab size 1000"));
  EXPECT_THAT(shard.status().message(), HasSubstr("50257"));
}

// A shard written by anything but WriteShard: `ids` stored as-is (no range
// check) with a correct header and checksum.
std::string WriteRawShard(const std::string& path, TokenDtype dtype, uint64_t vocab_size,
                          const std::vector<uint32_t>& ids) {
  std::vector<unsigned char> payload;
  for (uint32_t id : ids) {
    if (dtype == TokenDtype::kUint16) {
      const uint16_t v = static_cast<uint16_t>(id);
      payload.insert(payload.end(), reinterpret_cast<const unsigned char*>(&v),
                     reinterpret_cast<const unsigned char*>(&v) + 2);
    } else {
      payload.insert(payload.end(), reinterpret_cast<const unsigned char*>(&id),
                     reinterpret_cast<const unsigned char*>(&id) + 4);
    }
  }
  unsigned char header[kShardHeaderBytes] = {};
  const uint32_t version = kShardFormatVersion, code = static_cast<uint32_t>(dtype);
  const uint64_t count = ids.size();
  const uint32_t crc = Crc32c(payload.data(), payload.size());
  std::memcpy(header, kShardMagic, 8);
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &code, 4);
  std::memcpy(header + 16, &count, 8);
  std::memcpy(header + 24, &vocab_size, 8);
  std::memcpy(header + 32, &crc, 4);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(header), kShardHeaderBytes);
  out.write(reinterpret_cast<const char*>(payload.data()),
            static_cast<std::streamsize>(payload.size()));
  return path;
}

// The checksum is right, the ids are not: refused when the shard is opened,
// naming the file and the token's position (ids near 65535 crashed the
// embedding; an id equal to the vocab size wrote past the unigram table).
TEST_F(ShardFormatTest, IdOutsideTheVocabularyIsRefusedNamingThePosition) {
  struct Case {
    TokenDtype dtype;
    uint64_t vocab;
    uint32_t bad;
  };
  for (const Case& c : {Case{TokenDtype::kUint16, 320, 320}, Case{TokenDtype::kUint16, 320, 65535},
                        Case{TokenDtype::kUint32, 70000, 70000}}) {
    SCOPED_TRACE(c.bad);
    const std::string path =
        WriteRawShard(Path("bad_ids.bin"), c.dtype, c.vocab, {1, 2, 0, c.bad, 5});
    auto shard = TokenShard::Open(path, static_cast<int64_t>(c.vocab));
    ASSERT_FALSE(shard.ok());
    EXPECT_EQ(shard.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(shard.status().message(), HasSubstr(path));
    EXPECT_THAT(shard.status().message(), HasSubstr("token 3 "));
    EXPECT_THAT(shard.status().message(), HasSubstr("has id " + std::to_string(c.bad)));
  }
  // The same ids below the vocabulary open fine.
  EXPECT_TRUE(TokenShard::Open(WriteRawShard(Path("good.bin"), TokenDtype::kUint16, 320,
                                             {1, 2, 0, 319, 5}),
                               320)
                  .ok());
}

}  // namespace
}  // namespace scalemoe
