#include "core/philox.h"

#include <cmath>

#include "gtest/gtest.h"

namespace scalemoe {
namespace {

// Known-answer vectors of Philox4x32-10 from the Random123 distribution.
TEST(PhiloxTest, MatchesRandom123KnownAnswers) {
  Philox4x32 zero = Philox4x32_10({{0, 0, 0, 0}}, 0, 0);
  EXPECT_EQ(zero.v[0], 0x6627e8d5u);
  EXPECT_EQ(zero.v[1], 0xe169c58du);
  EXPECT_EQ(zero.v[2], 0xbc57ac4cu);
  EXPECT_EQ(zero.v[3], 0x9b00dbd8u);
  Philox4x32 ones = Philox4x32_10({{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u);
  EXPECT_EQ(ones.v[0], 0x408f276du);
  EXPECT_EQ(ones.v[1], 0x41c83b0eu);
  EXPECT_EQ(ones.v[2], 0xa20bc7c6u);
  EXPECT_EQ(ones.v[3], 0x6d5451fdu);
  Philox4x32 pi = Philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(pi.v[0], 0xd16cfe09u);
  EXPECT_EQ(pi.v[1], 0x94fdccebu);
  EXPECT_EQ(pi.v[2], 0x5001e420u);
  EXPECT_EQ(pi.v[3], 0x24126ea1u);
}

TEST(PhiloxTest, NameHashIsStableFnv1a) {
  EXPECT_EQ(HashName(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(HashName("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_NE(HashName("layers.0.w_q"), HashName("layers.0.w_k"));
}

TEST(PhiloxTest, NormalHasUnitMomentsAndDependsOnAllInputs) {
  const int n = 200000;
  double sum = 0, sq = 0;
  for (int i = 0; i < n; ++i) {
    double x = PhiloxNormal(7, 99, i);
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.02);
  EXPECT_NE(PhiloxNormal(7, 99, 5), PhiloxNormal(8, 99, 5));
  EXPECT_NE(PhiloxNormal(7, 99, 5), PhiloxNormal(7, 98, 5));
  EXPECT_NE(PhiloxNormal(7, 99, 5), PhiloxNormal(7, 99, 6));
  EXPECT_EQ(PhiloxNormal(7, 99, 5), PhiloxNormal(7, 99, 5));
}

TEST(PhiloxTest, UniformIsInOpenUnitInterval) {
  for (uint64_t i = 0; i < 10000; ++i) {
    double u = PhiloxUniform(1, 2, i);
    EXPECT_GT(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace scalemoe
