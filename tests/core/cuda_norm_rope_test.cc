// GPU test: RmsNormalize, RmsNormalizeBackward, Rope and RopeBackward
// against the CPU reference on fresh Philox data: one row / one token, row
// lengths that are odd, below and above a warp's share, not a multiple of a
// 16-byte pack, and long rows (the block-per-row path); head dims 64 and
// 128 (and 2, 6, 18, 40 and 1024); f32, f64 and bf16 (against f64 math on
// the bf16 values, and the norms also against the CPU's own bf16 path).
// Outputs start as NaN; a NaN never passes.
// In-place calls (out aliasing the input) match too, and the row sums give
// the same bits on every run. Rope off a 16-byte boundary (one element at a
// time) gives the same bits as on aligned tensors (16-byte packs). The fused
// AddRmsNormalize and RmsNormalizeBackwardAdd give the same bits as the
// GPU's two-op sequences. ScaledRmsNormalize (the per-head norms) and its
// backward match the CPU, rerun to the same bits, aligned or not;
// ScaledRmsNormalizeRope gives the bits of ScaledRmsNormalize then Rope.
// On token-strided head vectors (core/head_rows.h: slices of a fused q|k|v
// buffer whose gaps hold NaN bits) Rope, RopeBackward, the scaled norms and
// their backwards give the bits of the same calls on contiguous copies and
// write nothing outside their slice. Rope and RopeBackward with RopeTable's
// table give the bits they give without one (and the CPU's on that table);
// a table of another shape, dtype or device is refused by name.
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/head_rows.h"
#include "tests/core/cuda_test_util.h"
#include "tests/core/head_rows_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::F64;
using testing::Misaligned;
using testing::ParityTolerance;
using testing::RandomHost;

constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

// Rope (sign > 0) or RopeBackward (sign < 0) of in into out, by table when
// it is defined.
void RotateBy(const ExecContext& ctx, double theta, double sign, const Tensor& in,
              const Tensor& out, const Tensor& table) {
  if (sign > 0) {
    ops::Rope(ctx, in, theta, out, table);
  } else {
    ops::RopeBackward(ctx, in, theta, out, table);
  }
}

// x shapes: rows of the last dim. One token; odd hidden sizes, shorter than
// a pack; per-head rows; not a multiple of a pack (warp path); the block
// path (rows over 1024), unpacked and packed.
// clang-format off
const std::vector<Shape> kNormShapes = {
    {1, 64}, {37, 5}, {3, 7, 128}, {129, 64}, {11, 33}, {300, 768}, {2, 1000},
    {5, 1030}, {17, 4096}, {1, 8192},
};
// clang-format on

class CudaNormRopeTest : public CudaOpTest {};

TEST_F(CudaNormRopeTest, RmsNormalizeMatchesCpu) {
  uint64_t seed = 1;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kNormShapes) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(shape));
      const Tensor x = RandomHost(shape, dtype, seed, 1, 2.0, 0.3);
      const int64_t rows = NumElements(shape) / shape.back();
      Tensor n = Poisoned(shape, dtype);
      Tensor rstd = Poisoned({rows}, StatDType(dtype));
      ops::RmsNormalize(ctx_, Dev(x), 1e-5, n, rstd);
      Tensor n_ref = Tensor::Empty(shape, DType::kF64);
      Tensor rstd_ref = Tensor::Empty({rows}, DType::kF64);
      ops::RmsNormalize(cpu_, F64(x), 1e-5, n_ref, rstd_ref);
      ExpectParity(Host(n), n_ref, ParityTolerance(dtype), "n " + what);
      ExpectParity(Host(rstd), rstd_ref, ParityTolerance(StatDType(dtype)), "rstd " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaNormRopeTest, RmsNormalizeBackwardMatchesCpu) {
  uint64_t seed = 500;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kNormShapes) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " n ", ShapeString(shape));
      const int64_t rows = NumElements(shape) / shape.back();
      const Tensor n = RandomHost(shape, dtype, seed, 1);
      const Tensor rstd = RandomHost({rows}, StatDType(dtype), seed, 2, 0.2, 1.0);
      const Tensor d_n = RandomHost(shape, dtype, seed, 3);
      Tensor d_x = Poisoned(shape, dtype);
      ops::RmsNormalizeBackward(ctx_, Dev(n), Dev(rstd), Dev(d_n), d_x);
      Tensor d_x_ref = Tensor::Empty(shape, DType::kF64);
      ops::RmsNormalizeBackward(cpu_, F64(n), F64(rstd), F64(d_n), d_x_ref);
      ExpectParity(Host(d_x), d_x_ref, ParityTolerance(dtype), "d_x " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// n overwrites x, d_x overwrites d_n.
TEST_F(CudaNormRopeTest, RmsNormalizeInPlaceMatchesCpu) {
  uint64_t seed = 900;
  for (DType dtype : kFloats) {
    for (const Shape& shape : {Shape{9, 64}, Shape{3, 2050}}) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " ", ShapeString(shape));
      const int64_t rows = NumElements(shape) / shape.back();
      const Tensor x = RandomHost(shape, dtype, seed, 1);
      Tensor xn = Dev(x);
      Tensor rstd = Poisoned({rows}, StatDType(dtype));
      ops::RmsNormalize(ctx_, xn, 1e-6, xn, rstd);
      Tensor n_ref = Tensor::Empty(shape, DType::kF64);
      Tensor rstd_ref = Tensor::Empty({rows}, DType::kF64);
      ops::RmsNormalize(cpu_, F64(x), 1e-6, n_ref, rstd_ref);
      ExpectParity(Host(xn), n_ref, ParityTolerance(dtype), "in-place n " + what);

      const Tensor d_n = RandomHost(shape, dtype, seed, 2);
      Tensor grad = Dev(d_n);
      ops::RmsNormalizeBackward(ctx_, xn, rstd, grad, grad);
      Tensor d_x_ref = Tensor::Empty(shape, DType::kF64);
      ops::RmsNormalizeBackward(cpu_, F64(Host(xn)), F64(Host(rstd)), F64(d_n), d_x_ref);
      ExpectParity(Host(grad), d_x_ref, ParityTolerance(dtype), "in-place d_x " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaNormRopeTest, RmsNormalizeIsTheSameBitsEveryRun) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const Shape& shape : {Shape{257, 1000}, Shape{33, 5000}}) {
      const int64_t rows = NumElements(shape) / shape.back();
      const Tensor x = Dev(RandomHost(shape, dtype, 31, 1));
      const Tensor d_n = Dev(RandomHost(shape, dtype, 31, 2));
      std::vector<Tensor> outs;
      for (int run = 0; run < 2; ++run) {
        Tensor n = Poisoned(shape, dtype), rstd = Poisoned({rows}, StatDType(dtype));
        Tensor d_x = Poisoned(shape, dtype);
        ops::RmsNormalize(ctx_, x, 1e-5, n, rstd);
        ops::RmsNormalizeBackward(ctx_, n, rstd, d_n, d_x);
        outs.push_back(Host(rstd));
        outs.push_back(Host(d_x));
      }
      EXPECT_TRUE(testing::BitwiseEqual(outs[0], outs[2])) << DTypeName(dtype);
      EXPECT_TRUE(testing::BitwiseEqual(outs[1], outs[3])) << DTypeName(dtype);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// AddRmsNormalize: the same bits as Axpy then RmsNormalize on the GPU (x,
// n and rstd), and the CPU reference's values (f64 on the same inputs);
// also with a residual that is not 16-byte aligned while x and n are.
TEST_F(CudaNormRopeTest, AddRmsNormalizeIsTheTwoOpsBitForBitAndMatchesCpu) {
  uint64_t seed = 1300;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kNormShapes) {
      for (bool aligned : {true, false}) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(shape),
                                              aligned ? "" : ", misaligned residual");
        const int64_t rows = NumElements(shape) / shape.back();
        const Tensor x = RandomHost(shape, dtype, seed, 1, 2.0, 0.3);
        const Tensor residual = RandomHost(shape, dtype, seed, 2, 1.5);
        const Tensor res = aligned ? Dev(residual) : Misaligned(ctx_, residual);
        Tensor x_seq = Dev(x), n_seq = Poisoned(shape, dtype);
        Tensor rstd_seq = Poisoned({rows}, StatDType(dtype));
        ops::Axpy(ctx_, 1.0, res, x_seq);
        ops::RmsNormalize(ctx_, x_seq, 1e-5, n_seq, rstd_seq);
        Tensor x_fused = Dev(x), n = Poisoned(shape, dtype);
        Tensor rstd = Poisoned({rows}, StatDType(dtype));
        ops::AddRmsNormalize(ctx_, res, x_fused, 1e-5, n, rstd);
        EXPECT_TRUE(testing::BitwiseEqual(Host(x_fused), Host(x_seq))) << "x " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(n), Host(n_seq))) << "n " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(rstd), Host(rstd_seq))) << "rstd " << what;

        // The CPU reference in f64; for bf16 the norm of the GPU's rounded
        // sum (what the op normalizes; the sum itself is checked first).
        Tensor x_ref = F64(x);
        Tensor n_ref = Tensor::Empty(shape, DType::kF64);
        Tensor rstd_ref = Tensor::Empty({rows}, DType::kF64);
        ops::AddRmsNormalize(cpu_, F64(residual), x_ref, 1e-5, n_ref, rstd_ref);
        if (dtype == DType::kBF16) {
          ops::RmsNormalize(cpu_, F64(Host(x_fused)), 1e-5, n_ref, rstd_ref);
        }
        ExpectParity(Host(x_fused), x_ref, ParityTolerance(dtype), "x " + what);
        ExpectParity(Host(n), n_ref, ParityTolerance(dtype), "n " + what);
        ExpectParity(Host(rstd), rstd_ref, ParityTolerance(StatDType(dtype)), "rstd " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// RmsNormalizeBackwardAdd: the same bits as RmsNormalizeBackward then Axpy
// on the GPU, also in place over d_res and over d_n and with a misaligned
// d_res, and the CPU reference's values.
TEST_F(CudaNormRopeTest, RmsNormalizeBackwardAddIsTheTwoOpsBitForBitAndMatchesCpu) {
  uint64_t seed = 1700;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kNormShapes) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " n ", ShapeString(shape));
      const int64_t rows = NumElements(shape) / shape.back();
      const Tensor n = Dev(RandomHost(shape, dtype, seed, 1));
      const Tensor rstd = Dev(RandomHost({rows}, StatDType(dtype), seed, 2, 0.2, 1.0));
      const Tensor d_n_host = RandomHost(shape, dtype, seed, 3);
      const Tensor d_res_host = RandomHost(shape, dtype, seed, 4, 0.5);
      const Tensor d_n = Dev(d_n_host), d_res = Dev(d_res_host);
      Tensor d_x_seq = Poisoned(shape, dtype);
      ops::RmsNormalizeBackward(ctx_, n, rstd, d_n, d_x_seq);
      ops::Axpy(ctx_, 1.0, d_res, d_x_seq);
      const Tensor want = Host(d_x_seq);

      Tensor d_x = Poisoned(shape, dtype);
      ops::RmsNormalizeBackwardAdd(ctx_, n, rstd, d_n, d_res, d_x);
      EXPECT_TRUE(testing::BitwiseEqual(Host(d_x), want)) << what;
      Tensor over_res = Dev(d_res_host);
      ops::RmsNormalizeBackwardAdd(ctx_, n, rstd, d_n, over_res, over_res);
      EXPECT_TRUE(testing::BitwiseEqual(Host(over_res), want)) << "d_x = d_res, " << what;
      Tensor over_dn = Dev(d_n_host);
      ops::RmsNormalizeBackwardAdd(ctx_, n, rstd, over_dn, d_res, over_dn);
      EXPECT_TRUE(testing::BitwiseEqual(Host(over_dn), want)) << "d_x = d_n, " << what;
      Tensor misaligned = Poisoned(shape, dtype);
      ops::RmsNormalizeBackwardAdd(ctx_, n, rstd, d_n, Misaligned(ctx_, d_res_host), misaligned);
      EXPECT_TRUE(testing::BitwiseEqual(Host(misaligned), want)) << "misaligned d_res, " << what;

      Tensor d_x_ref = Tensor::Empty(shape, DType::kF64);
      ops::RmsNormalizeBackwardAdd(cpu_, F64(Host(n)), F64(Host(rstd)), F64(d_n_host),
                                   F64(d_res_host), d_x_ref);
      ExpectParity(Host(d_x), d_x_ref, ParityTolerance(dtype), "d_x " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// ScaledRmsNormalize (the per-head norms: rows of up to 256) and its
// backward against the CPU's f64 run on the same values: f32, f64, bf16, and
// f32 x with bf16 outputs; one row, rows shorter than a pack, odd and not a
// multiple of a pack, 8/16/32 lanes per row, many blocks of d_gamma
// partials. Then the same bits twice (d_gamma's fixed order), and off a
// 16-byte boundary (one element at a time) within the same tolerance.
struct ScaledNormCase {
  DType x, io;
};
constexpr ScaledNormCase kScaledNormCases[] = {{DType::kF32, DType::kF32},
                                               {DType::kF64, DType::kF64},
                                               {DType::kBF16, DType::kBF16},
                                               {DType::kF32, DType::kBF16}};

TEST_F(CudaNormRopeTest, ScaledRmsNormalizeMatchesCpu) {
  const std::vector<Shape> shapes = {{1, 64},  {37, 5},  {3, 7, 128}, {129, 64},  {11, 33},
                                     {6, 256}, {2, 250}, {20000, 64}, {3000, 128}};
  uint64_t seed = 900;
  for (const ScaledNormCase& c : kScaledNormCases) {
    const DType stat = StatDType(c.x);
    for (const Shape& shape : shapes) {
      for (bool misaligned : {false, true}) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(c.x), " x, ", DTypeName(c.io), " out, ",
                                              ShapeString(shape), misaligned ? " misaligned" : "");
        const int64_t d = shape.back(), rows = NumElements(shape) / d;
        const Tensor x = RandomHost({rows, d}, c.x, seed, 1, 1.5, 0.2);
        const Tensor gamma = RandomHost({d}, stat, seed, 2, 0.5, 1.0);
        const Tensor d_y = RandomHost({rows, d}, c.io, seed, 3);
        const Tensor d_gamma0 = RandomHost({d}, stat, seed, 4, 0.1);
        const Tensor x_dev = misaligned ? Misaligned(ctx_, x) : Dev(x);
        const Tensor d_y_dev = misaligned ? Misaligned(ctx_, d_y) : Dev(d_y);
        Tensor y = Poisoned({rows, d}, c.io);
        Tensor rstd = Poisoned({rows}, stat);
        ops::ScaledRmsNormalize(ctx_, x_dev, Dev(gamma), 1e-5, y, rstd);
        Tensor d_x = Poisoned({rows, d}, c.io);
        Tensor d_gamma = Dev(d_gamma0);
        ops::ScaledRmsNormalizeBackward(ctx_, x_dev, rstd, Dev(gamma), d_y_dev, d_x, d_gamma);

        Tensor y_ref = Tensor::Empty({rows, d}, DType::kF64);
        Tensor rstd_ref = Tensor::Empty({rows}, DType::kF64);
        ops::ScaledRmsNormalize(cpu_, F64(x), F64(gamma), 1e-5, y_ref, rstd_ref);
        Tensor d_x_ref = Tensor::Empty({rows, d}, DType::kF64);
        Tensor d_gamma_ref = F64(d_gamma0).Clone();
        ops::ScaledRmsNormalizeBackward(cpu_, F64(x), rstd_ref, F64(gamma), F64(d_y), d_x_ref,
                                        d_gamma_ref);
        ExpectParity(Host(y), y_ref, ParityTolerance(c.io), "y " + what);
        ExpectParity(Host(rstd), rstd_ref, ParityTolerance(stat), "rstd " + what);
        ExpectParity(Host(d_x), d_x_ref, ParityTolerance(c.io), "d_x " + what);
        ExpectParity(Host(d_gamma), d_gamma_ref, ParityTolerance(stat), "d_gamma " + what);

        // Twice: the same bits.
        Tensor d_x2 = Poisoned({rows, d}, c.io);
        Tensor d_gamma2 = Dev(d_gamma0);
        ops::ScaledRmsNormalizeBackward(ctx_, x_dev, rstd, Dev(gamma), d_y_dev, d_x2, d_gamma2);
        EXPECT_TRUE(testing::BitwiseEqual(Host(d_x2), Host(d_x))) << "d_x rerun " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(d_gamma2), Host(d_gamma)))
            << "d_gamma rerun " << what;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// bf16 rows (f32 rstd) against the CPU's bf16 path on the same inputs (not
// f64 math): n, d_x within one bf16 rounding of the CPU's plus the f32 row
// sums' order (the CPU sums in f64, the GPU in f32); rstd, never rounded to
// bf16, within f32 tolerance; AddRmsNormalize's rounded sum the same bits.
TEST_F(CudaNormRopeTest, Bf16MatchesTheCpuBf16Path) {
  const DType bf = DType::kBF16, f32 = DType::kF32;
  constexpr double kSums = 1e-5;  // max|ref|'s share for the row sums' order
  uint64_t seed = 2500;
  for (const Shape& shape : kNormShapes) {
    ++seed;
    const std::string what = "bf16 " + ShapeString(shape);
    const int64_t rows = NumElements(shape) / shape.back();
    const Tensor x = RandomHost(shape, bf, seed, 1, 2.0, 0.3);
    Tensor n = Poisoned(shape, bf), rstd = Poisoned({rows}, f32);
    ops::RmsNormalize(ctx_, Dev(x), 1e-5, n, rstd);
    Tensor n_ref = Tensor::Empty(shape, bf), rstd_ref = Tensor::Empty({rows}, f32);
    ops::RmsNormalize(cpu_, x, 1e-5, n_ref, rstd_ref);
    testing::ExpectBf16Parity(Host(n), n_ref, kSums, "RmsNormalize n " + what);
    ExpectParity(Host(rstd), rstd_ref, ParityTolerance(f32), "RmsNormalize rstd " + what);

    // The backward on the CPU's n and rstd (both sides read the same values).
    const Tensor d_n = RandomHost(shape, bf, seed, 2);
    Tensor d_x = Poisoned(shape, bf);
    ops::RmsNormalizeBackward(ctx_, Dev(n_ref), Dev(rstd_ref), Dev(d_n), d_x);
    Tensor d_x_ref = Tensor::Empty(shape, bf);
    ops::RmsNormalizeBackward(cpu_, n_ref, rstd_ref, d_n, d_x_ref);
    testing::ExpectBf16Parity(Host(d_x), d_x_ref, kSums, "RmsNormalizeBackward d_x " + what);

    const Tensor residual = RandomHost(shape, bf, seed, 3, 1.5);
    Tensor x_sum = Dev(x);
    n = Poisoned(shape, bf);
    rstd = Poisoned({rows}, f32);
    ops::AddRmsNormalize(ctx_, Dev(residual), x_sum, 1e-5, n, rstd);
    Tensor x_sum_ref = x.Clone();
    ops::AddRmsNormalize(cpu_, residual, x_sum_ref, 1e-5, n_ref, rstd_ref);
    EXPECT_TRUE(testing::BitwiseEqual(Host(x_sum), x_sum_ref)) << "AddRmsNormalize x " << what;
    testing::ExpectBf16Parity(Host(n), n_ref, kSums, "AddRmsNormalize n " + what);
    ExpectParity(Host(rstd), rstd_ref, ParityTolerance(f32), "AddRmsNormalize rstd " + what);

    // The backward's rounding before the add may differ by an ulp of the
    // backward's value (the CPU's RmsNormalizeBackward above).
    const Tensor d_res = RandomHost(shape, bf, seed, 4, 0.5);
    d_x = Poisoned(shape, bf);
    ops::RmsNormalizeBackwardAdd(ctx_, Dev(n_ref), Dev(rstd_ref), Dev(d_n), Dev(d_res), d_x);
    Tensor back_ref = Tensor::Empty(shape, bf);
    ops::RmsNormalizeBackward(cpu_, n_ref, rstd_ref, d_n, back_ref);
    ops::RmsNormalizeBackwardAdd(cpu_, n_ref, rstd_ref, d_n, d_res, d_x_ref);
    testing::ExpectBf16Parity(Host(d_x), d_x_ref, kSums, "RmsNormalizeBackwardAdd d_x " + what,
                              back_ref);
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// [B, T, H, D]: one token; head dims 64 and 128; one pair per head; an
// odd half; T over a block; halves that are not a multiple of a bf16 pack
// (18: of no pack; 40: of the f32 and f64 ones only); more heads than one
// block takes (several head ranges); a half over one block's cos/sin tile
// (1024: two tiles).
// clang-format off
const std::vector<Shape> kRopeShapes = {
    {1, 1, 1, 64}, {1, 1, 4, 128}, {2, 37, 3, 64}, {1, 300, 2, 128}, {3, 5, 4, 128},
    {1, 13, 7, 2}, {2, 9, 5, 6}, {1, 129, 1, 64}, {2, 5, 3, 18}, {1, 7, 5, 40},
    {2, 3, 40, 128}, {1, 2, 3, 1024},
};
// clang-format on

TEST_F(CudaNormRopeTest, RopeAndBackwardMatchCpu) {
  uint64_t seed = 2000;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kRopeShapes) {
      for (double theta : {10000.0, 500000.0}) {
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " x ", ShapeString(shape), " theta ", theta);
        const Tensor x = RandomHost(shape, dtype, seed, 1);
        Tensor out = Poisoned(shape, dtype);
        ops::Rope(ctx_, Dev(x), theta, out);
        Tensor ref = Tensor::Empty(shape, DType::kF64);
        ops::Rope(cpu_, F64(x), theta, ref);
        ExpectParity(Host(out), ref, ParityTolerance(dtype), "Rope " + what);

        const Tensor d_out = RandomHost(shape, dtype, seed, 2);
        Tensor d_x = Poisoned(shape, dtype);
        ops::RopeBackward(ctx_, Dev(d_out), theta, d_x);
        Tensor d_ref = Tensor::Empty(shape, DType::kF64);
        ops::RopeBackward(cpu_, F64(d_out), theta, d_ref);
        ExpectParity(Host(d_x), d_ref, ParityTolerance(dtype), "RopeBackward " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaNormRopeTest, RopeInPlaceMatchesCpu) {
  uint64_t seed = 3000;
  for (DType dtype : kFloats) {
    const Shape shape{2, 33, 3, 128};
    ++seed;
    const Tensor x = RandomHost(shape, dtype, seed, 1);
    Tensor y = Dev(x);
    ops::Rope(ctx_, y, 10000.0, y);
    Tensor ref = Tensor::Empty(shape, DType::kF64);
    ops::Rope(cpu_, F64(x), 10000.0, ref);
    ExpectParity(Host(y), ref, ParityTolerance(dtype), absl::StrCat("Rope ", DTypeName(dtype)));
    ops::RopeBackward(ctx_, y, 10000.0, y);  // Rᵀ R = I: back to x
    ExpectParity(Host(y), F64(x), ParityTolerance(dtype) * 2,
                 absl::StrCat("RopeBackward(Rope(x)) ", DTypeName(dtype)));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// x and out one element past a 16-byte boundary take the one-element path;
// it gives the same bits as the 16-byte packs on aligned tensors, out of
// place and in place (an odd D/2 takes the one-element path either way).
TEST_F(CudaNormRopeTest, RopeUnalignedIsThePackedPathBitForBit) {
  uint64_t seed = 4000;
  for (DType dtype : kFloats) {
    for (const Shape& shape : {Shape{2, 33, 3, 128}, Shape{3, 4, 40, 64}, Shape{1, 5, 2, 18}}) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(shape));
      const Tensor x = RandomHost(shape, dtype, seed, 1);
      for (double sign : {1.0, -1.0}) {
        const auto rotate = [&](const Tensor& in, const Tensor& out) {
          if (sign > 0) {
            ops::Rope(ctx_, in, 500000.0, out);
          } else {
            ops::RopeBackward(ctx_, in, 500000.0, out);
          }
        };
        Tensor packed = Poisoned(shape, dtype);
        rotate(Dev(x), packed);
        Tensor unaligned = Misaligned(ctx_, Host(Poisoned(shape, dtype)));
        rotate(Misaligned(ctx_, x), unaligned);
        Tensor in_place = Misaligned(ctx_, x);
        rotate(in_place, in_place);
        EXPECT_TRUE(testing::BitwiseEqual(Host(packed), Host(unaligned))) << what << " " << sign;
        EXPECT_TRUE(testing::BitwiseEqual(Host(packed), Host(in_place))) << what << " " << sign;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// ScaledRmsNormalizeRope and its backward give the bits of the GPU's two-op
// sequences (ScaledRmsNormalize then Rope; RopeBackward then
// ScaledRmsNormalizeBackward), both where the norm's lanes rotate in
// registers (head dims 64 and 128, 96 with its pairs 12 lanes apart, bf16
// x's packs of 8) and where a second pass rotates (256: several packs a
// lane; 6: no 16-byte pack; tensors off a 16-byte boundary), with a table
// longer than the sequence; and match the CPU's. RopeTable holds the cos
// and sin that Rope rotates by (a unit vector rotated gives them exactly).
TEST_F(CudaNormRopeTest, ScaledRmsNormalizeRopeIsTheTwoOpsBitForBit) {
  // [B, T, H, D]
  const std::vector<Shape> shapes = {{2, 37, 3, 64}, {1, 300, 2, 128}, {2, 9, 5, 96},
                                     {1, 7, 2, 256}, {2, 5, 3, 6},     {8, 64, 12, 64}};
  constexpr double kTheta = 10000.0;
  uint64_t seed = 5000;
  for (const ScaledNormCase& c : kScaledNormCases) {
    const DType stat = StatDType(c.x);
    for (const Shape& shape : shapes) {
      for (bool misaligned : {false, true}) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(c.x), " x, ", DTypeName(c.io), " out, ",
                                              ShapeString(shape), misaligned ? " misaligned" : "");
        const int64_t d = shape[3], rows = NumElements(shape) / d;
        const Tensor x = RandomHost(shape, c.x, seed, 1, 1.5, 0.2);
        const Tensor gamma = RandomHost({d}, stat, seed, 2, 0.5, 1.0);
        const Tensor d_y = RandomHost(shape, c.io, seed, 3);
        const Tensor d_gamma0 = RandomHost({d}, stat, seed, 4, 0.1);
        const Tensor x_dev = misaligned ? Misaligned(ctx_, x) : Dev(x);
        const Tensor d_y_dev = misaligned ? Misaligned(ctx_, d_y) : Dev(d_y);
        Tensor table = Poisoned({2, shape[1] + 3, d / 2}, stat);
        ops::RopeTable(ctx_, kTheta, table);

        Tensor y = Poisoned(shape, c.io), rstd = Poisoned({rows}, stat);
        ops::ScaledRmsNormalizeRope(ctx_, x_dev, Dev(gamma), 1e-5, table, y, rstd);
        Tensor y_seq = Poisoned(shape, c.io), rstd_seq = Poisoned({rows}, stat);
        ops::ScaledRmsNormalize(ctx_, x_dev, Dev(gamma), 1e-5, y_seq, rstd_seq);
        ops::Rope(ctx_, y_seq, kTheta, y_seq);
        EXPECT_TRUE(testing::BitwiseEqual(Host(y), Host(y_seq))) << "y " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(rstd), Host(rstd_seq))) << "rstd " << what;

        Tensor d_x = Poisoned(shape, c.io), d_gamma = Dev(d_gamma0);
        ops::ScaledRmsNormalizeRopeBackward(ctx_, x_dev, rstd, Dev(gamma), table, d_y_dev, d_x,
                                            d_gamma);
        EXPECT_TRUE(testing::BitwiseEqual(Host(d_y_dev), d_y)) << "d_y kept " << what;
        Tensor d_n = Dev(d_y), d_x_seq = Poisoned(shape, c.io), d_gamma_seq = Dev(d_gamma0);
        ops::RopeBackward(ctx_, d_n, kTheta, d_n);
        ops::ScaledRmsNormalizeBackward(ctx_, x_dev, rstd, Dev(gamma), d_n, d_x_seq, d_gamma_seq);
        EXPECT_TRUE(testing::BitwiseEqual(Host(d_x), Host(d_x_seq))) << "d_x " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(d_gamma), Host(d_gamma_seq))) << "d_gamma " << what;

        // The CPU's fused op, on its own table.
        Tensor table_ref = Tensor::Empty({2, shape[1], d / 2}, DType::kF64);
        ops::RopeTable(cpu_, kTheta, table_ref);
        ExpectParity(Host(table).Narrow(1, 0, shape[1]).Clone(), table_ref, ParityTolerance(stat),
                     "table " + what);
        Tensor y_ref = Tensor::Empty(shape, DType::kF64),
               rstd_ref = Tensor::Empty({rows}, DType::kF64);
        ops::ScaledRmsNormalizeRope(cpu_, F64(x), F64(gamma), 1e-5, table_ref, y_ref, rstd_ref);
        ExpectParity(Host(y), y_ref, ParityTolerance(c.io) * 2, "y vs CPU " + what);
        Tensor d_x_ref = Tensor::Empty(shape, DType::kF64), d_gamma_ref = F64(d_gamma0).Clone();
        ops::ScaledRmsNormalizeRopeBackward(cpu_, F64(x), rstd_ref, F64(gamma), table_ref, F64(d_y),
                                            d_x_ref, d_gamma_ref);
        ExpectParity(Host(d_x), d_x_ref, ParityTolerance(c.io) * 2, "d_x vs CPU " + what);
        // The rotated d_y is rounded to its dtype (bf16 too) before the sums.
        ExpectParity(Host(d_gamma), d_gamma_ref, ParityTolerance(c.io) * 2,
                     "d_gamma vs CPU " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaNormRopeTest, RopeTableIsWhatRopeRotatesBy) {
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const int64_t t = 300, half = 64;
    // x1 = 1, x2 = 0 in every pair: Rope gives (cos, sin) exactly.
    std::vector<double> ones(t * 2 * half, 0.0);
    for (int64_t pos = 0; pos < t; ++pos) {
      for (int64_t i = 0; i < half; ++i) ones[pos * 2 * half + i] = 1.0;
    }
    const Tensor unit = Tensor::FromVector({1, t, 1, 2 * half}, ones, dtype);
    Tensor rotated = Dev(unit);
    ops::Rope(ctx_, rotated, 500000.0, rotated);
    Tensor table = Poisoned({2, t, half}, dtype);
    ops::RopeTable(ctx_, 500000.0, table);
    const Tensor r = Host(rotated).View({t, 2, half});
    const Tensor tab = Host(table);
    for (int part : {0, 1}) {  // cos, then sin
      EXPECT_TRUE(testing::BitwiseEqual(r.Narrow(1, part, 1).Clone().View({t, half}),
                                        tab.Narrow(0, part, 1).Clone().View({t, half})))
          << (part == 0 ? "cos " : "sin ") << DTypeName(dtype);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// With RopeTable's table (longer than the sequence): the bits of the
// table-less kernel, out of place, in place and off a 16-byte boundary (one
// element at a time, as are D = 2, 6 and 18 of kRopeShapes), and the CPU's
// bits on the same table (the same products and roundings).
TEST_F(CudaNormRopeTest, RopeWithATableIsTheTablelessBits) {
  constexpr double kTheta = 500000.0;
  uint64_t seed = 8000;
  for (DType dtype : kFloats) {
    for (const Shape& shape : kRopeShapes) {
      ++seed;
      const Tensor x = RandomHost(shape, dtype, seed, 1);
      Tensor table = Poisoned({2, shape[1] + 3, shape[3] / 2}, StatDType(dtype));
      ops::RopeTable(ctx_, kTheta, table);
      for (double sign : {1.0, -1.0}) {
        const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(shape),
                                              sign > 0 ? " Rope" : " RopeBackward");
        const auto rotate = [&](const ExecContext& ctx, const Tensor& in, const Tensor& out,
                                const Tensor& table) {
          RotateBy(ctx, kTheta, sign, in, out, table);
        };
        Tensor computed = Poisoned(shape, dtype);
        rotate(ctx_, Dev(x), computed, Tensor());
        const Tensor want = Host(computed);
        Tensor got = Poisoned(shape, dtype);
        rotate(ctx_, Dev(x), got, table);
        EXPECT_TRUE(testing::BitwiseEqual(Host(got), want)) << what;
        Tensor in_place = Dev(x);
        rotate(ctx_, in_place, in_place, table);
        EXPECT_TRUE(testing::BitwiseEqual(Host(in_place), want)) << "in place, " << what;
        Tensor unaligned = Misaligned(ctx_, Host(Poisoned(shape, dtype)));
        rotate(ctx_, Misaligned(ctx_, x), unaligned, table);
        EXPECT_TRUE(testing::BitwiseEqual(Host(unaligned), want)) << "off 16 bytes, " << what;
        Tensor cpu = Tensor::Empty(shape, dtype);
        rotate(cpu_, x, cpu, Host(table));
        EXPECT_TRUE(testing::BitwiseEqual(cpu, want)) << "CPU, " << what;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// A table that is not RopeTable's for x fails the check, naming the op, the
// table and what it must be: too few positions, another D/2, another dtype
// (bf16 x computes in f32), on the host.
using CudaNormRopeDeathTest = CudaNormRopeTest;

TEST_F(CudaNormRopeDeathTest, RopeRefusesAnotherTable) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the CUDA runtime's threads
  const Shape shape{2, 5, 3, 64};
  const Tensor x = Dev(RandomHost(shape, DType::kF32, 1, 1));
  const Tensor out = Poisoned(shape, DType::kF32);
  EXPECT_DEATH(ops::Rope(ctx_, x, 1e4, out, Poisoned({2, 4, 32}, DType::kF32)),
               "Rope rope_table f32\\[2, 4, 32\\].*want \\[2, >= 5, 32\\] f32");
  EXPECT_DEATH(ops::RopeBackward(ctx_, x, 1e4, out, Poisoned({2, 5, 64}, DType::kF32)),
               "RopeBackward rope_table f32\\[2, 5, 64\\].*want \\[2, >= 5, 32\\] f32");
  EXPECT_DEATH(ops::Rope(ctx_, x, 1e4, out, Poisoned({2, 5, 32}, DType::kF64)),
               "Rope rope_table f64\\[2, 5, 32\\].*want .* f32");
  const Tensor xb = Dev(RandomHost(shape, DType::kBF16, 1, 1));
  EXPECT_DEATH(ops::Rope(ctx_, xb, 1e4, xb, Poisoned({2, 5, 32}, DType::kBF16)),
               "Rope rope_table bf16\\[2, 5, 32\\].*want .* f32");
  EXPECT_DEATH(ops::Rope(ctx_, x, 1e4, out, Tensor::Zeros({2, 5, 32}, DType::kF32)),
               "Rope rope_table needs a contiguous CUDA tensor");
}

// ---------------------------------------------------------------- token-strided heads

// Slices of wider buffers: tests/core/head_rows_test_util.h.
using testing::Columns;
using testing::Heads;
using testing::HostBuffer;
using testing::Layout;
using testing::Rank3Heads;
using testing::SliceOf;
using testing::SliceShape;
using testing::Wider;

// Whether the kernels' 16-byte packs fit every row of `view`: its start,
// its rows and its token stride on 16 bytes.
bool RowsOnPacks(const Tensor& view) {
  const HeadRows rows = *HeadRowsOf(view);
  const auto size = static_cast<int64_t>(DTypeSize(view.dtype()));
  return reinterpret_cast<uintptr_t>(view.raw_data()) % 16 == 0 && rows.dim * size % 16 == 0 &&
         rows.stride * size % 16 == 0;
}

// Rope and RopeBackward with token-strided x, out or both (q or k a slice
// of a fused q|k|v buffer, out at a stride of its own), and in place on a
// slice, without and with RopeTable's table: the bits of the contiguous
// call without one on the same values, every other element of both buffers
// untouched (NaN bits), and the CPU's values (f64 on the same inputs).
// Packed (aligned, D = 64 and 128) and one element at a time (off a 16-byte
// boundary; D = 6 and 18); three heads; one token.
TEST_F(CudaNormRopeTest, RopeOnTokenStridedHeadsIsTheContiguousBits) {
  const std::vector<Layout> layouts = {Heads(2, 5, 8, 4, 2, 64),    Heads(1, 37, 8, 0, 4, 128),
                                       Heads(2, 9, 8, 4, 2, 64, 1), Heads(2, 3, 12, 6, 3, 6),
                                       Heads(3, 4, 5, 2, 1, 18, 1), Heads(1, 1, 8, 4, 2, 64)};
  constexpr double kTheta = 500000.0;
  uint64_t seed = 6000;
  for (DType dtype : kFloats) {
    for (const Layout& in : layouts) {
      for (double sign : {1.0, -1.0}) {
        ++seed;
        const Layout out = Wider(in, 3);
        const Shape shape = SliceShape(in);
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", ShapeString(shape), " of ", ShapeString(in.wide),
                         in.skip ? " off 16 bytes" : "", sign > 0 ? " Rope" : " RopeBackward");
        const auto rotate = [&](const ExecContext& ctx, const Tensor& in, const Tensor& out,
                                const Tensor& table) {
          RotateBy(ctx, kTheta, sign, in, out, table);
        };
        const Tensor x = RandomHost(shape, dtype, seed, 1);
        Tensor contiguous = Poisoned(shape, dtype);
        rotate(ctx_, Dev(x), contiguous, Tensor());
        const Tensor want = Host(contiguous);
        Tensor ref = Tensor::Empty(shape, DType::kF64);
        rotate(cpu_, F64(x), ref, Tensor());
        ExpectParity(want, ref, ParityTolerance(dtype), what);

        const Tensor src = HostBuffer(in, dtype, x), dst = HostBuffer(out, dtype);
        Tensor src_want = src.Clone(), dst_want = dst.Clone();
        SliceOf(in, src_want).CopyFrom(want);
        SliceOf(out, dst_want).CopyFrom(want);
        Tensor table = Poisoned({2, shape[1], shape[3] / 2}, StatDType(dtype));
        ops::RopeTable(ctx_, kTheta, table);
        for (const Tensor& tab : {Tensor(), table}) {
          const std::string how = absl::StrCat(what, tab.defined() ? " with a table" : "");
          const Tensor src_dev = Dev(src);
          Tensor got = Poisoned(shape, dtype);
          rotate(ctx_, SliceOf(in, src_dev), got, tab);
          EXPECT_TRUE(testing::BitwiseEqual(Host(got), want)) << "strided x, " << how;
          Tensor dst_dev = Dev(dst);
          rotate(ctx_, Dev(x), SliceOf(out, dst_dev), tab);
          EXPECT_TRUE(testing::BitwiseEqual(Host(dst_dev), dst_want)) << "strided out, " << how;
          dst_dev = Dev(dst);
          rotate(ctx_, SliceOf(in, src_dev), SliceOf(out, dst_dev), tab);
          EXPECT_TRUE(testing::BitwiseEqual(Host(dst_dev), dst_want)) << "both strided, " << how;
          EXPECT_TRUE(testing::BitwiseEqual(Host(src_dev), src)) << "x's buffer kept, " << how;
          rotate(ctx_, SliceOf(in, src_dev), SliceOf(in, src_dev), tab);
          EXPECT_TRUE(testing::BitwiseEqual(Host(src_dev), src_want)) << "in place, " << how;
        }
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// ScaledRmsNormalize, ScaledRmsNormalizeRope and their backwards with x and
// d_x token-strided (slices of buffers of two widths; y, rstd and d_y
// contiguous): the bits of the same calls on contiguous copies that take
// the same path (16-byte packs, or one element at a time: off a 16-byte
// boundary, D = 6, a stride off the pack), every other element of both
// buffers untouched (NaN bits), and the CPU's values (f64 on the same
// inputs, the tolerances of the contiguous tests above). Rank 4 with and
// without the rotation (in registers: D = 64, 128; a second pass: D = 6,
// 256, one element at a time), rank 2 (columns of an [R, W] matrix) and
// rank 3 without it.
TEST_F(CudaNormRopeTest, ScaledRmsNormalizeOnTokenStridedRowsIsTheContiguousBits) {
  const std::vector<Layout> layouts = {
      Heads(2, 37, 8, 4, 2, 64),    // k of H = 4, KV = 2
      Heads(1, 20, 8, 0, 4, 128),   // q
      Heads(2, 9, 12, 6, 3, 6),     // three heads of six
      Heads(2, 5, 8, 4, 2, 64, 1),  // off a 16-byte boundary
      Heads(1, 7, 4, 2, 1, 256),    // several packs a lane
      Heads(4, 512, 8, 4, 2, 64),   // many blocks of d_gamma partials
      Columns(300, 71, 5, 64),      // [R, D] at a stride off the pack
      Columns(300, 192, 64, 64),    // ... and on it
      Rank3Heads(6, 8, 2, 3, 64),   // [tokens, H, D]
  };
  constexpr double kTheta = 10000.0;
  uint64_t seed = 7000;
  for (const ScaledNormCase& c : kScaledNormCases) {
    const DType stat = StatDType(c.x);
    for (const Layout& xl : layouts) {
      for (bool rope : {false, true}) {
        if (rope && xl.wide.size() != 4) continue;
        ++seed;
        const Layout dxl = Wider(xl, 8);
        const Shape shape = SliceShape(xl);
        const int64_t d = shape.back(), rows = NumElements(shape) / d;
        const std::string what = absl::StrCat(
            DTypeName(c.x), " x, ", DTypeName(c.io), " out, ", ShapeString(shape), " of ",
            ShapeString(xl.wide), xl.skip ? " off 16 bytes" : "", rope ? " with Rope" : "");
        const Tensor x = RandomHost(shape, c.x, seed, 1, 1.5, 0.2);
        const Tensor gamma = RandomHost({d}, stat, seed, 2, 0.5, 1.0);
        const Tensor d_y = RandomHost(shape, c.io, seed, 3);
        const Tensor d_gamma0 = RandomHost({d}, stat, seed, 4, 0.1);
        const Tensor x_host = HostBuffer(xl, c.x, x), dx_host = HostBuffer(dxl, c.io);
        const Tensor x_dev = Dev(x_host), dx_dev = Dev(dx_host);
        const Tensor xs = SliceOf(xl, x_dev), dxs = SliceOf(dxl, dx_dev);
        const bool packed = RowsOnPacks(xs);
        ASSERT_EQ(RowsOnPacks(dxs), packed) << "the test's layouts, " << what;
        const Tensor x_c = packed ? Dev(x) : Misaligned(ctx_, x);
        const Tensor d_y_c = packed ? Dev(d_y) : Misaligned(ctx_, d_y);
        Tensor table;
        if (rope) {
          table = Poisoned({2, shape[1] + 3, d / 2}, stat);
          ops::RopeTable(ctx_, kTheta, table);
        }
        const auto forward = [&](const Tensor& in, const Tensor& y, const Tensor& rstd) {
          if (rope) {
            ops::ScaledRmsNormalizeRope(ctx_, in, Dev(gamma), 1e-5, table, y, rstd);
          } else {
            ops::ScaledRmsNormalize(ctx_, in, Dev(gamma), 1e-5, y, rstd);
          }
        };
        const auto backward = [&](const Tensor& in, const Tensor& rstd, const Tensor& dy,
                                  const Tensor& dx, const Tensor& dg) {
          if (rope) {
            ops::ScaledRmsNormalizeRopeBackward(ctx_, in, rstd, Dev(gamma), table, dy, dx, dg);
          } else {
            ops::ScaledRmsNormalizeBackward(ctx_, in, rstd, Dev(gamma), dy, dx, dg);
          }
        };
        Tensor y = Poisoned(shape, c.io), rstd = Poisoned({rows}, stat);
        forward(xs, y, rstd);
        Tensor y_c = Poisoned(shape, c.io), rstd_c = Poisoned({rows}, stat);
        forward(x_c, y_c, rstd_c);
        const Tensor y_host = Host(y), rstd_host = Host(rstd);
        EXPECT_TRUE(testing::BitwiseEqual(y_host, Host(y_c))) << "y " << what;
        EXPECT_TRUE(testing::BitwiseEqual(rstd_host, Host(rstd_c))) << "rstd " << what;

        Tensor d_gamma = Dev(d_gamma0);
        backward(xs, rstd, Dev(d_y), dxs, d_gamma);
        Tensor d_x_c = Poisoned(shape, c.io), d_gamma_c = Dev(d_gamma0);
        backward(x_c, rstd_c, d_y_c, d_x_c, d_gamma_c);
        const Tensor d_x_want = Host(d_x_c), d_gamma_host = Host(d_gamma);
        Tensor dx_buffer_want = dx_host.Clone();
        SliceOf(dxl, dx_buffer_want).CopyFrom(d_x_want);
        EXPECT_TRUE(testing::BitwiseEqual(Host(dx_dev), dx_buffer_want)) << "d_x " << what;
        EXPECT_TRUE(testing::BitwiseEqual(d_gamma_host, Host(d_gamma_c))) << "d_gamma " << what;
        EXPECT_TRUE(testing::BitwiseEqual(Host(x_dev), x_host)) << "x's buffer kept, " << what;

        // The CPU in f64 on the same values.
        Tensor y_ref = Tensor::Empty(shape, DType::kF64);
        Tensor rstd_ref = Tensor::Empty({rows}, DType::kF64);
        Tensor d_x_ref = Tensor::Empty(shape, DType::kF64), d_gamma_ref = F64(d_gamma0).Clone();
        if (rope) {
          Tensor table_ref = Tensor::Empty({2, shape[1], d / 2}, DType::kF64);
          ops::RopeTable(cpu_, kTheta, table_ref);
          ops::ScaledRmsNormalizeRope(cpu_, F64(x), F64(gamma), 1e-5, table_ref, y_ref, rstd_ref);
          ops::ScaledRmsNormalizeRopeBackward(cpu_, F64(x), rstd_ref, F64(gamma), table_ref,
                                              F64(d_y), d_x_ref, d_gamma_ref);
        } else {
          ops::ScaledRmsNormalize(cpu_, F64(x), F64(gamma), 1e-5, y_ref, rstd_ref);
          ops::ScaledRmsNormalizeBackward(cpu_, F64(x), rstd_ref, F64(gamma), F64(d_y), d_x_ref,
                                          d_gamma_ref);
        }
        // As the contiguous tests above: the rotation doubles the outputs'
        // tolerance, and its rounded d_y puts d_gamma's at the io dtype's.
        const double io_tol = ParityTolerance(c.io) * (rope ? 2 : 1);
        ExpectParity(y_host, y_ref, io_tol, "y vs CPU " + what);
        ExpectParity(rstd_host, rstd_ref, ParityTolerance(stat), "rstd vs CPU " + what);
        ExpectParity(d_x_want, d_x_ref, io_tol, "d_x vs CPU " + what);
        ExpectParity(d_gamma_host, d_gamma_ref, rope ? io_tol : ParityTolerance(stat),
                     "d_gamma vs CPU " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
