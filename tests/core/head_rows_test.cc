// Token-strided head vectors (core/head_rows.h) on the CPU: which views have
// the layout, and the ops that take them (CopyHeads, Rope and RopeBackward,
// ScaledRmsNormalize(Rope) and their backwards, CausalAttention and its
// backward) give the bits they give on
// contiguous tensors of the same values, and write nothing outside their
// slice of the wider matrix (kept NaN here). Rope and RopeBackward give the
// same bits with RopeTable's table as without one.
#include "core/head_rows.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/same_bits.h"

namespace scalemoe {
namespace {

using testing::RandomTensor;
using testing::SameBits;

constexpr double kTheta = 10000.0;

TEST(HeadRowsTest, ContiguousTensorsAndSlicesOfAWiderMatrix) {
  const Tensor t = Tensor::Empty({2, 3, 10, 8}, DType::kF32);  // B, T, H + 2 KV, D
  const HeadRows whole = *HeadRowsOf(t);
  EXPECT_EQ(whole.tokens, 6);
  EXPECT_EQ(whole.heads, 10);
  EXPECT_EQ(whole.dim, 8);
  EXPECT_EQ(whole.stride, 80);
  EXPECT_TRUE(whole.contiguous());

  const HeadRows k = *HeadRowsOf(t.Narrow(2, 6, 2));  // heads 6, 7 of every token
  EXPECT_EQ(k.tokens, 6);
  EXPECT_EQ(k.heads, 2);
  EXPECT_EQ(k.stride, 80);
  EXPECT_FALSE(k.contiguous());
  EXPECT_EQ(k.offset(0), 0);
  EXPECT_EQ(k.offset(1), 8);
  EXPECT_EQ(k.offset(2), 80);
  EXPECT_EQ(k.offset(5), 2 * 80 + 8);

  const Tensor m = Tensor::Empty({6, 80}, DType::kF32);
  const HeadRows cols = *HeadRowsOf(m.Narrow(1, 16, 24));  // [R, D] rows of a wider matrix
  EXPECT_EQ(cols.tokens, 6);
  EXPECT_EQ(cols.heads, 1);
  EXPECT_EQ(cols.dim, 24);
  EXPECT_EQ(cols.stride, 80);

  // One position a sequence: the tokens are B, still W apart.
  const Tensor one_t = Tensor::Empty({2, 1, 10, 8}, DType::kF32).Narrow(2, 6, 2);
  const HeadRows last = *HeadRowsOf(one_t);
  EXPECT_EQ(last.tokens, 2);
  EXPECT_EQ(last.stride, 80);
  EXPECT_EQ(last.offset(2), 80);

  EXPECT_FALSE(HeadRowsOf(t.Narrow(3, 0, 4)).has_value()) << "a Narrow of D";
  EXPECT_FALSE(HeadRowsOf(t.Narrow(1, 0, 2)).has_value()) << "tokens of b not contiguous";
  EXPECT_FALSE(HeadRowsOf(Tensor::Empty({4}, DType::kF32)).has_value()) << "rank 1";
}

// A [B, T, W/D, D] buffer of NaN and the heads [first, first + h) of it.
struct Wide {
  Tensor buf, view;
};
Wide Slice(int64_t b, int64_t t, int64_t all_heads, int64_t first, int64_t h, int64_t d,
           DType dtype) {
  Wide w;
  w.buf = Tensor::Empty({b, t, all_heads, d}, DType::kF64);
  w.buf.Fill(std::numeric_limits<double>::quiet_NaN());
  if (dtype != DType::kF64) {
    Tensor nan = Tensor::Empty(w.buf.shape(), dtype);
    nan.CopyFrom(w.buf);
    w.buf = nan;
  }
  w.view = w.buf.Narrow(2, first, h);
  return w;
}

// Whether every element of buf outside heads [first, first + h) is NaN.
bool OutsideIsNaN(const Tensor& buf, int64_t first, int64_t h) {
  const int64_t heads = buf.dim(2), d = buf.dim(3);
  for (int64_t i = 0; i < buf.numel(); ++i) {
    const int64_t head = i / d % heads;
    if ((head < first || head >= first + h) && !std::isnan(buf.At(i))) return false;
  }
  return true;
}

// A contiguous copy of a (possibly strided) head tensor.
Tensor Dense(const ExecContext& ctx, const Tensor& t) {
  Tensor out = Tensor::Empty(t.shape(), t.dtype());
  ops::CopyHeads(ctx, t, out);
  return out;
}

const DType kDTypes[] = {DType::kF32, DType::kF64, DType::kBF16};

TEST(HeadRowsTest, CopyHeadsInAndOutOfASlice) {
  const ExecContext ctx;
  for (const DType dtype : kDTypes) {
    const Tensor x = RandomTensor({2, 3, 2, 6}, 1, 1.0, dtype);
    Wide w = Slice(2, 3, 7, 3, 2, 6, dtype);
    ops::CopyHeads(ctx, x, w.view);
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t token = i / 12, head = i / 6 % 2, j = i % 6;
      ASSERT_EQ(w.buf.At(token * 42 + (3 + head) * 6 + j), x.At(i)) << DTypeName(dtype) << " " << i;
    }
    EXPECT_TRUE(OutsideIsNaN(w.buf, 3, 2)) << DTypeName(dtype);
    EXPECT_TRUE(SameBits(Dense(ctx, w.view), x)) << DTypeName(dtype);
  }
}

// Rope and RopeBackward from a slice, into a slice and in place: the bits
// of the contiguous calls; and so with RopeTable's table (longer than the
// sequence), contiguous too.
TEST(HeadRowsTest, RopeReadsAndWritesSlicesWithAndWithoutATable) {
  const ExecContext ctx;
  for (const DType dtype : kDTypes) {
    const Tensor x = RandomTensor({2, 5, 3, 8}, 2, 1.0, dtype);
    Tensor ref = Tensor::Empty(x.shape(), dtype), d_ref = Tensor::Empty(x.shape(), dtype);
    ops::Rope(ctx, x, kTheta, ref);
    ops::RopeBackward(ctx, x, kTheta, d_ref);
    Tensor table = Tensor::Empty({2, 7, 4}, StatDType(dtype));
    ops::RopeTable(ctx, kTheta, table);
    for (const Tensor& by : {Tensor(), table}) {
      const std::string what = absl::StrCat(DTypeName(dtype), by.defined() ? ", table" : "");
      Tensor out = Tensor::Empty(x.shape(), dtype), d_x = Tensor::Empty(x.shape(), dtype);
      ops::Rope(ctx, x, kTheta, out, by);
      ops::RopeBackward(ctx, x, kTheta, d_x, by);
      EXPECT_TRUE(SameBits(out, ref)) << what;
      EXPECT_TRUE(SameBits(d_x, d_ref)) << what;

      Wide in = Slice(2, 5, 9, 4, 3, 8, dtype);
      ops::CopyHeads(ctx, x, in.view);
      ops::Rope(ctx, in.view, kTheta, out, by);  // slice in
      EXPECT_TRUE(SameBits(out, ref)) << what;
      Wide back = Slice(2, 5, 9, 1, 3, 8, dtype);
      ops::RopeBackward(ctx, x, kTheta, back.view, by);  // slice out
      EXPECT_TRUE(SameBits(Dense(ctx, back.view), d_ref)) << what;
      EXPECT_TRUE(OutsideIsNaN(back.buf, 1, 3)) << what;
      Wide across = Slice(2, 5, 9, 1, 3, 8, dtype);
      ops::RopeBackward(ctx, in.view, kTheta, across.view, by);  // slice to slice
      EXPECT_TRUE(SameBits(Dense(ctx, across.view), d_ref)) << what;
      EXPECT_TRUE(OutsideIsNaN(across.buf, 1, 3)) << what;
      ops::Rope(ctx, in.view, kTheta, in.view, by);  // in place
      EXPECT_TRUE(SameBits(Dense(ctx, in.view), ref)) << what;
      EXPECT_TRUE(OutsideIsNaN(in.buf, 4, 3)) << what;
    }
  }
}

struct NormCase {
  DType x, io;
};
constexpr NormCase kNormCases[] = {{DType::kF32, DType::kF32},
                                   {DType::kF64, DType::kF64},
                                   {DType::kBF16, DType::kBF16},
                                   {DType::kF32, DType::kBF16}};

TEST(HeadRowsTest, ScaledRmsNormalizeReadsXAndWritesDxInSlices) {
  const ExecContext ctx;
  uint64_t stream = 10;
  for (const NormCase& c : kNormCases) {
    for (const bool rope : {false, true}) {
      const DType stat = StatDType(c.x);
      const Shape shape = {2, 5, 3, 8};
      const int64_t rows = 30, d = 8;
      const std::string what =
          absl::StrCat(DTypeName(c.x), " x, ", DTypeName(c.io), " io", rope ? ", rope" : "");
      const Tensor x = RandomTensor(shape, ++stream, 1.5, c.x, 0.2);
      const Tensor gamma = RandomTensor({d}, ++stream, 0.5, stat, 1.0);
      const Tensor d_y = RandomTensor(shape, ++stream, 1.0, c.io);
      const Tensor d_gamma0 = RandomTensor({d}, ++stream, 0.1, stat);
      Tensor table = Tensor::Empty({2, 5, d / 2}, stat);
      ops::RopeTable(ctx, kTheta, table);
      auto forward = [&](const Tensor& xv, const Tensor& y, const Tensor& rstd) {
        if (rope) {
          ops::ScaledRmsNormalizeRope(ctx, xv, gamma, 1e-5, table, y, rstd);
        } else {
          ops::ScaledRmsNormalize(ctx, xv, gamma, 1e-5, y, rstd);
        }
      };
      auto backward = [&](const Tensor& xv, const Tensor& rstd, const Tensor& d_x,
                          const Tensor& d_gamma) {
        if (rope) {
          ops::ScaledRmsNormalizeRopeBackward(ctx, xv, rstd, gamma, table, d_y, d_x, d_gamma);
        } else {
          ops::ScaledRmsNormalizeBackward(ctx, xv, rstd, gamma, d_y, d_x, d_gamma);
        }
      };
      Tensor y_ref = Tensor::Empty(shape, c.io), rstd_ref = Tensor::Empty({rows}, stat);
      forward(x, y_ref, rstd_ref);
      Tensor d_x_ref = Tensor::Empty(shape, c.io), d_gamma_ref = d_gamma0.Clone();
      backward(x, rstd_ref, d_x_ref, d_gamma_ref);

      Wide in = Slice(2, 5, 7, 2, 3, 8, c.x);
      ops::CopyHeads(ctx, x, in.view);
      Tensor y = Tensor::Empty(shape, c.io), rstd = Tensor::Empty({rows}, stat);
      forward(in.view, y, rstd);
      EXPECT_TRUE(SameBits(y, y_ref)) << what;
      EXPECT_TRUE(SameBits(rstd, rstd_ref)) << what;
      Wide d_x = Slice(2, 5, 7, 4, 3, 8, c.io);
      Tensor d_gamma = d_gamma0.Clone();
      backward(in.view, rstd, d_x.view, d_gamma);
      EXPECT_TRUE(SameBits(Dense(ctx, d_x.view), d_x_ref)) << what;
      EXPECT_TRUE(SameBits(d_gamma, d_gamma_ref)) << what;
      EXPECT_TRUE(OutsideIsNaN(d_x.buf, 4, 3)) << what;
      EXPECT_TRUE(OutsideIsNaN(in.buf, 2, 3)) << what;
    }
  }
}

// CausalAttention on q, k and v as slices of one [B, T, H + 2·KV, D]
// buffer, and its backward writing d_q, d_k and d_v into slices of another:
// the bits of contiguous tensors, nothing outside the slices written.
TEST(HeadRowsTest, CausalAttentionReadsAndWritesSlices) {
  const ExecContext ctx;
  constexpr int64_t kB = 2, kT = 7, kH = 4, kKv = 2, kD = 8, kAll = kH + 2 * kKv;
  for (const DType dtype : kDTypes) {
    const std::string what = DTypeName(dtype);
    const Tensor q = RandomTensor({kB, kT, kH, kD}, 30, 1.0, dtype);
    const Tensor k = RandomTensor({kB, kT, kKv, kD}, 31, 1.0, dtype);
    const Tensor v = RandomTensor({kB, kT, kKv, kD}, 32, 1.0, dtype);
    const Tensor d_out = RandomTensor({kB, kT, kH, kD}, 33, 1.0, dtype);
    const DType stat = dtype == DType::kF64 ? DType::kF64 : DType::kF32;
    Tensor out = Tensor::Empty(q.shape(), dtype), lse = Tensor::Empty({kB, kH, kT}, stat);
    ops::CausalAttention(ctx, q, k, v, out, lse);
    Tensor d_q = Tensor::Empty(q.shape(), dtype), d_k = Tensor::Empty(k.shape(), dtype),
           d_v = Tensor::Empty(v.shape(), dtype);
    ops::CausalAttentionBackward(ctx, q, k, v, out, lse, d_out, d_q, d_k, d_v);

    Wide qkv = Slice(kB, kT, kAll, 0, kAll, kD, dtype);
    const Tensor qs = qkv.buf.Narrow(2, 0, kH), ks = qkv.buf.Narrow(2, kH, kKv),
                 vs = qkv.buf.Narrow(2, kH + kKv, kKv);
    ops::CopyHeads(ctx, q, qs);
    ops::CopyHeads(ctx, k, ks);
    ops::CopyHeads(ctx, v, vs);
    Tensor out2 = Tensor::Empty(q.shape(), dtype), lse2 = Tensor::Empty({kB, kH, kT}, stat);
    ops::CausalAttention(ctx, qs, ks, vs, out2, lse2);
    EXPECT_TRUE(SameBits(out2, out)) << what;
    EXPECT_TRUE(SameBits(lse2, lse)) << what;
    // The gradients into a wider buffer than the inputs: the slices leave
    // a head of NaN on either side.
    Wide grads = Slice(kB, kT, kAll + 2, 1, kAll, kD, dtype);
    const Tensor dqs = grads.buf.Narrow(2, 1, kH), dks = grads.buf.Narrow(2, 1 + kH, kKv),
                 dvs = grads.buf.Narrow(2, 1 + kH + kKv, kKv);
    ops::CausalAttentionBackward(ctx, qs, ks, vs, out2, lse2, d_out, dqs, dks, dvs);
    EXPECT_TRUE(SameBits(Dense(ctx, dqs), d_q)) << what;
    EXPECT_TRUE(SameBits(Dense(ctx, dks), d_k)) << what;
    EXPECT_TRUE(SameBits(Dense(ctx, dvs), d_v)) << what;
    EXPECT_TRUE(OutsideIsNaN(grads.buf, 1, kAll)) << what;
  }
}

TEST(HeadRowsDeathTest, OtherViewsAreRefusedByName) {
  const ExecContext ctx;
  const Tensor t = RandomTensor({2, 3, 4, 8}, 7, 1.0, DType::kF32);
  const Tensor half_d = t.Narrow(3, 0, 4);
  EXPECT_DEATH(ops::CopyHeads(ctx, half_d, Tensor::Empty(half_d.shape(), DType::kF32)),
               "CopyHeads x needs head rows");
  const Tensor tokens = t.Narrow(1, 0, 2);
  EXPECT_DEATH(ops::Rope(ctx, tokens, kTheta, Tensor::Empty(tokens.shape(), DType::kF32)),
               "Rope x needs head rows");
}

TEST(HeadRowsDeathTest, RopeRefusesATableNotForX) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({2, 3, 4, 8}, 7, 1.0, DType::kF32);
  const Tensor out = Tensor::Empty(x.shape(), DType::kF32);
  EXPECT_DEATH(ops::Rope(ctx, x, kTheta, out, Tensor::Empty({2, 2, 4}, DType::kF32)),
               "Rope rope_table f32\\[2, 2, 4\\].*want \\[2, >= 3, 4\\] f32");
  EXPECT_DEATH(ops::RopeBackward(ctx, x, kTheta, out, Tensor::Empty({2, 3, 4}, DType::kF64)),
               "RopeBackward rope_table f64\\[2, 3, 4\\].*want \\[2, >= 3, 4\\] f32");
}

}  // namespace
}  // namespace scalemoe
