#include "checkpoint/xxhash64.h"

#include <string>

#include "gtest/gtest.h"

namespace scalemoe::checkpoint {
namespace {

uint64_t Hash(const std::string& s) { return XxHash64::Hash(s.data(), s.size()); }

// Reference values of XXH64 with seed 0 (xxHash's own test vectors).
TEST(XxHash64, MatchesReferenceVectors) {
  EXPECT_EQ(Hash(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(Hash("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(Hash("abc"), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(Hash("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ULL);
}

TEST(XxHash64, StreamingEqualsOneShotForEverySplit) {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 37 + 11));
  const uint64_t expected = Hash(data);
  for (size_t split = 0; split <= data.size(); split += 7) {
    XxHash64 h;
    h.Update(data.data(), split);
    h.Update(data.data() + split, data.size() - split);
    EXPECT_EQ(h.Digest(), expected) << "split at " << split;
  }
}

TEST(XxHash64, OneFlippedBitChangesTheHash) {
  std::string data(1000, 'x');
  const uint64_t before = Hash(data);
  data[500] ^= 1;
  EXPECT_NE(Hash(data), before);
}

TEST(XxHash64, ChecksumStringIsPrefixedFixedWidthHex) {
  EXPECT_EQ(ChecksumString(0x1ULL), "xxh64:0000000000000001");
}

}  // namespace
}  // namespace scalemoe::checkpoint
