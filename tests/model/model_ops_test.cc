// Forward semantics and f64 finite-difference checks of the model ops
// (core/cpu/rms_normalize.cc, rope.cc, causal_attention.cc, embedding.cc,
// cross_entropy.cc).
#include <algorithm>
#include <cmath>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using testing::GradError;
using testing::kGradTolerance;
using testing::RandomTensor;
using testing::WeightedSum;

Tensor Ids(const Shape& shape, const std::vector<double>& values) {
  return Tensor::FromVector(shape, values, DType::kI32);
}

TEST(RmsNormalizeTest, RowsHaveUnitRms) {
  const ExecContext ctx;
  Tensor x = RandomTensor({3, 8}, 1, 3.0);
  Tensor n = Tensor::Empty({3, 8}, DType::kF64);
  Tensor rstd = Tensor::Empty({3}, DType::kF64);
  ops::RmsNormalize(ctx, x, 0.0, n, rstd);
  for (int r = 0; r < 3; ++r) {
    double sq = 0;
    for (int j = 0; j < 8; ++j) sq += n.At(r * 8 + j) * n.At(r * 8 + j);
    EXPECT_NEAR(sq / 8, 1.0, 1e-12);
    EXPECT_NEAR(n.At(r * 8) , x.At(r * 8) * rstd.At(r), 1e-15);
  }
}

TEST(RmsNormalizeTest, BackwardMatchesFiniteDifferences) {
  const ExecContext ctx;
  Tensor x = RandomTensor({4, 6}, 2);
  Tensor w = RandomTensor({4, 6}, 3);
  Tensor n = Tensor::Empty({4, 6}, DType::kF64);
  Tensor rstd = Tensor::Empty({4}, DType::kF64);
  auto loss = [&] {
    ops::RmsNormalize(ctx, x, 1e-6, n, rstd);
    return WeightedSum(n, w);
  };
  loss();
  Tensor dx = Tensor::Empty({4, 6}, DType::kF64);
  ops::RmsNormalizeBackward(ctx, n, rstd, w, dx);
  EXPECT_LT(GradError(loss, x, dx), kGradTolerance);
}

TEST(RopeTest, PositionZeroIsIdentityAndNormIsKept) {
  const ExecContext ctx;
  Tensor x = RandomTensor({2, 5, 3, 8}, 4);
  Tensor y = Tensor::Empty(x.shape(), DType::kF64);
  ops::Rope(ctx, x, 10000.0, y);
  for (int h = 0; h < 3; ++h) {
    for (int c = 0; c < 8; ++c) EXPECT_EQ(y.At(h * 8 + c), x.At(h * 8 + c));
  }
  // Rotations keep each pair's norm.
  for (int64_t base = 0; base < x.numel(); base += 8) {
    for (int i = 0; i < 4; ++i) {
      const double a = std::hypot(x.At(base + i), x.At(base + i + 4));
      const double b = std::hypot(y.At(base + i), y.At(base + i + 4));
      EXPECT_NEAR(a, b, 1e-12);
    }
  }
  // Position 1, pair 0 rotates by exactly 1 radian.
  const int64_t p1 = 3 * 8;
  EXPECT_NEAR(y.At(p1), x.At(p1) * std::cos(1.0) - x.At(p1 + 4) * std::sin(1.0), 1e-14);
}

TEST(RopeTest, BackwardMatchesFiniteDifferencesAndAliasingWorks) {
  const ExecContext ctx;
  Tensor x = RandomTensor({2, 4, 2, 6}, 5);
  Tensor w = RandomTensor(x.shape(), 6);
  auto loss = [&] {
    Tensor y = Tensor::Empty(x.shape(), DType::kF64);
    ops::Rope(ctx, x, 500.0, y);
    return WeightedSum(y, w);
  };
  Tensor dx = w.Clone();
  ops::RopeBackward(ctx, dx, 500.0, dx);  // in place
  EXPECT_LT(GradError(loss, x, dx), kGradTolerance);
}

// bf16 is rotated in f32 and rounded once on store: the f32 result of the
// same (bf16-valued) input, rounded to bf16, bit for bit; forward then
// backward returns the input to within bf16 rounding.
TEST(RopeTest, Bf16IsTheF32RotationRounded) {
  const ExecContext ctx;
  const Shape shape{2, 7, 3, 8};
  Tensor x32 = Tensor::Empty(shape, DType::kF32);
  Tensor x = Tensor::Empty(shape, DType::kBF16);
  ops::Copy(ctx, RandomTensor(shape, 11), x);  // bf16 values
  ops::Copy(ctx, x, x32);                      // exactly representable in f32
  Tensor y = Tensor::Empty(shape, DType::kBF16);
  Tensor y32 = Tensor::Empty(shape, DType::kF32);
  ops::Rope(ctx, x, 10000.0, y);
  ops::Rope(ctx, x32, 10000.0, y32);
  Tensor y32_rounded = Tensor::Empty(shape, DType::kBF16);
  ops::Copy(ctx, y32, y32_rounded);
  for (int64_t i = 0; i < y.numel(); ++i) ASSERT_EQ(y.At(i), y32_rounded.At(i)) << i;
  Tensor back = Tensor::Empty(shape, DType::kBF16);
  ops::RopeBackward(ctx, y, 10000.0, back);  // the inverse rotation
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_NEAR(back.At(i), x.At(i), 1.6e-2 * std::max(1.0, std::abs(x.At(i)))) << i;
  }
}

TEST(CausalAttentionTest, FirstPositionCopiesItsValueAndLseNormalizesEachRow) {
  const ExecContext ctx;
  const int64_t b = 2, t = 4, h = 4, kv = 2, d = 3;
  Tensor q = RandomTensor({b, t, h, d}, 7);
  Tensor k = RandomTensor({b, t, kv, d}, 8);
  Tensor v = RandomTensor({b, t, kv, d}, 9);
  Tensor out = Tensor::Empty(q.shape(), DType::kF64);
  Tensor lse = Tensor::Empty({b, h, t}, DType::kF64);
  ops::CausalAttention(ctx, q, k, v, out, lse);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      for (int64_t c = 0; c < d; ++c) {  // position 0 attends only to itself
        EXPECT_NEAR(out.At(((bi * t) * h + hi) * d + c), v.At(((bi * t) * kv + hi / 2) * d + c),
                    1e-14);
      }
      // exp(score − lse) over the keys ≤ t sums to one.
      for (int64_t ti = 0; ti < t; ++ti) {
        double sum = 0;
        for (int64_t j = 0; j <= ti; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < d; ++c) {
            dot +=
                q.At(((bi * t + ti) * h + hi) * d + c) * k.At(((bi * t + j) * kv + hi / 2) * d + c);
          }
          sum += std::exp(dot * scale - lse.At((bi * h + hi) * t + ti));
        }
        EXPECT_NEAR(sum, 1.0, 1e-14);
      }
    }
  }
}

TEST(CausalAttentionTest, BackwardMatchesFiniteDifferencesWithGqa) {
  const ExecContext ctx;
  const int64_t b = 2, t = 5, h = 4, kv = 2, d = 3;
  Tensor q = RandomTensor({b, t, h, d}, 10);
  Tensor k = RandomTensor({b, t, kv, d}, 11);
  Tensor v = RandomTensor({b, t, kv, d}, 12);
  Tensor w = RandomTensor(q.shape(), 13);
  Tensor out = Tensor::Empty(q.shape(), DType::kF64);
  Tensor lse = Tensor::Empty({b, h, t}, DType::kF64);
  auto loss = [&] {
    ops::CausalAttention(ctx, q, k, v, out, lse);
    return WeightedSum(out, w);
  };
  loss();
  Tensor dq = Tensor::Empty(q.shape(), DType::kF64);
  Tensor dk = Tensor::Empty(k.shape(), DType::kF64);
  Tensor dv = Tensor::Empty(v.shape(), DType::kF64);
  ops::CausalAttentionBackward(ctx, q, k, v, out, lse, w, dq, dk, dv);
  EXPECT_LT(GradError(loss, q, dq), kGradTolerance);
  EXPECT_LT(GradError(loss, k, dk), kGradTolerance);
  EXPECT_LT(GradError(loss, v, dv), kGradTolerance);
}

TEST(EmbeddingTest, LookupCopiesRowsAndBackwardAccumulatesRepeats) {
  const ExecContext ctx;
  Tensor weight = RandomTensor({5, 3}, 14);
  Tensor ids = Ids({4}, {2, 0, 2, 4});
  Tensor out = Tensor::Empty({4, 3}, DType::kF64);
  ops::EmbeddingLookup(ctx, ids, weight, out);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(out.At(c), weight.At(2 * 3 + c));
    EXPECT_EQ(out.At(9 + c), weight.At(4 * 3 + c));
  }
  Tensor w = RandomTensor({4, 3}, 15);
  auto loss = [&] {
    ops::EmbeddingLookup(ctx, ids, weight, out);
    return WeightedSum(out, w);
  };
  Tensor dw = Tensor::Zeros({5, 3}, DType::kF64);
  dw.Fill(0.5);  // accumulates into what is there
  ops::EmbeddingBackward(ctx, ids, w, dw);
  Tensor expected = Tensor::Zeros({5, 3}, DType::kF64);
  ops::EmbeddingBackward(ctx, ids, w, expected);
  for (int i = 0; i < 15; ++i) EXPECT_DOUBLE_EQ(dw.At(i), expected.At(i) + 0.5);
  EXPECT_LT(GradError(loss, weight, expected), kGradTolerance);
}

// ops::CrossEntropy's device scalar, read back.
double MeanCrossEntropy(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                        const Tensor& d_logits) {
  Tensor loss = ctx.Empty({1}, DType::kF64);
  ops::CrossEntropy(ctx, logits, targets, d_logits, loss);
  return ctx.ToHost(loss).At(0);
}

TEST(CrossEntropyTest, MatchesLogSoftmaxAndGradient) {
  const ExecContext ctx;
  Tensor logits = RandomTensor({3, 7}, 16, 2.0);
  Tensor targets = Ids({3}, {6, 0, 3});
  double expected = 0;
  for (int r = 0; r < 3; ++r) {
    double z = 0;
    for (int j = 0; j < 7; ++j) z += std::exp(logits.At(r * 7 + j));
    expected += std::log(z) - logits.At(r * 7 + static_cast<int>(targets.At(r)));
  }
  Tensor d = Tensor::Empty({3, 7}, DType::kF64);
  EXPECT_NEAR(MeanCrossEntropy(ctx, logits, targets, d), expected / 3, 1e-14);
  auto loss = [&] { return MeanCrossEntropy(ctx, logits, targets, Tensor()); };
  EXPECT_LT(GradError(loss, logits, d), kGradTolerance);
}

// A bf16 d_logits (what the LM head's GEMMs read under BF16) holds the
// gradient computed in the logits' dtype rounded once to bf16, to nearest
// even, bit for bit: the bits ops::Copy of the f32 gradient gives (f64
// through f32, as Copy converts). The loss does not change.
TEST(CrossEntropyTest, Bf16GradientIsTheRoundedGradientBitForBit) {
  const ExecContext ctx;
  const int64_t n = 6, v = 37;
  const Tensor targets = Ids({n}, {0, 36, 3, 17, 36, 5});
  for (DType dtype : {DType::kF32, DType::kF64}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Tensor logits = RandomTensor({n, v}, 18, 3.0, dtype);
    Tensor d_ref = Tensor::Empty({n, v}, dtype);
    const double loss_ref = MeanCrossEntropy(ctx, logits, targets, d_ref);
    Tensor copied = Tensor::Empty({n, v}, DType::kBF16);
    ops::Copy(ctx, d_ref, copied);
    Tensor d = Tensor::Empty({n, v}, DType::kBF16);
    EXPECT_EQ(MeanCrossEntropy(ctx, logits, targets, d), loss_ref);
    int rounded = 0;  // values bf16 cannot hold: the rounding is exercised
    for (int64_t i = 0; i < n * v; ++i) {
      const float f = static_cast<float>(d_ref.At(i));
      const uint16_t want = bf16::FromFloat(f);
      EXPECT_EQ(d.data<bf16>()[i].bits, want) << "element " << i << " of " << f;
      EXPECT_EQ(copied.data<bf16>()[i].bits, want) << "element " << i;
      rounded += static_cast<float>(bf16(f)) != f;
    }
    EXPECT_GT(rounded, n * v / 2);
  }
}

// bf16 logits (the LM head's under train.fp32_logits off) are computed on
// in f32, as their f32 widening is: the same loss bits (the statistics are
// f64 either way) and the f32 widening's gradient rounded once to bf16.
TEST(CrossEntropyTest, Bf16LogitsAreTheirF32WideningsLoss) {
  const ExecContext ctx;
  const int64_t n = 5, v = 41;
  const Tensor targets = Ids({n}, {40, 0, 7, 7, 21});
  Tensor logits = Tensor::Empty({n, v}, DType::kBF16);
  ops::Copy(ctx, RandomTensor({n, v}, 20, 4.0, DType::kF32), logits);
  Tensor widened = Tensor::Empty({n, v}, DType::kF32);
  ops::Copy(ctx, logits, widened);
  Tensor d_ref = Tensor::Empty({n, v}, DType::kF32);
  const double loss_ref = MeanCrossEntropy(ctx, widened, targets, d_ref);
  Tensor d = Tensor::Empty({n, v}, DType::kBF16);
  EXPECT_EQ(MeanCrossEntropy(ctx, logits, targets, d), loss_ref);
  EXPECT_EQ(MeanCrossEntropy(ctx, logits, targets, Tensor()), loss_ref);
  for (int64_t i = 0; i < n * v; ++i) {
    EXPECT_EQ(d.data<bf16>()[i].bits, bf16::FromFloat(static_cast<float>(d_ref.At(i))))
        << "element " << i;
  }
}

// Only the logits' dtype or bf16 takes the gradient; the message names
// d_logits and the rule.
TEST(CrossEntropyDeathTest, GradientInAnotherDtypeIsRefused) {
  const ExecContext ctx;
  const Tensor logits = RandomTensor({2, 5}, 19, 1.0, DType::kF64);
  Tensor loss = Tensor::Empty({1}, DType::kF64);
  EXPECT_DEATH(
      ops::CrossEntropy(ctx, logits, Ids({2}, {1, 4}), Tensor::Empty({2, 5}, DType::kF32), loss),
      "d_logits .* must be in the logits' dtype or bf16");
}

TEST(CrossEntropyTest, LargeLogitsStayFinite) {
  const ExecContext ctx;
  Tensor logits = Tensor::FromVector({1, 3}, {1000.0, 0.0, -1000.0}, DType::kF32);
  Tensor targets = Ids({1}, {0});
  const double loss = MeanCrossEntropy(ctx, logits, targets, Tensor());
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, 0.0, 1e-6);
}

}  // namespace
}  // namespace scalemoe
