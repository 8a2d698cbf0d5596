// GPU test: the elementwise ops (Copy, Axpy, Scale, Zero, Sum, SwiGlu,
// SwiGluBackward and their packed forms, SplitBf16, AddParts) against the CPU reference on fresh
// Philox data, for f32, f64 and bf16, sizes that do and do not fill whole 16-byte packs, and views
// one element into their buffer (the unpacked path). Outputs that must be overwritten start as NaN.
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};
constexpr int64_t kSizes[] = {1, 7, 64, 1000, 4099, 1 << 20};

class CudaElementwiseTest : public CudaOpTest {
 protected:
  // A device tensor of n elements holding `host`, starting `offset`
  // elements into its buffer (offset 1: not 16-byte aligned).
  Tensor DevAt(const Tensor& host, int64_t offset) {
    Tensor padded = Tensor::Empty({host.numel() + offset}, host.dtype());
    padded.Narrow(0, offset, host.numel()).CopyFrom(host.View({-1}));
    return Dev(padded).Narrow(0, offset, host.numel()).View(host.shape());
  }
  Tensor PoisonedAt(const Shape& shape, DType dtype, int64_t offset) {
    return Poisoned({NumElements(shape) + offset}, dtype).Narrow(0, offset, NumElements(shape)).View(shape);
  }
};

TEST_F(CudaElementwiseTest, CopyConvertsLikeTheCpuBitForBit) {
  uint64_t seed = 1;
  for (DType from : kFloats) {
    for (DType to : kFloats) {
      for (int64_t n : kSizes) {
        for (int64_t offset : {0, 1}) {
          const Tensor x = RandomHost({n}, from, ++seed, 1, 3.0);
          Tensor y = PoisonedAt({n}, to, offset);
          ops::Copy(ctx_, DevAt(x, offset), y);
          Tensor ref = Tensor::Empty({n}, to);
          ops::Copy(cpu_, x, ref);
          const Tensor got = Host(y);
          EXPECT_TRUE(testing::BitwiseEqual(got, ref))
              << DTypeName(from) << " -> " << DTypeName(to) << " n " << n << " offset " << offset;
        }
      }
    }
  }
  // Same dtype, any dtype: a device-to-device copy.
  Tensor ids = Tensor::Empty({5}, DType::kI32);
  for (int i = 0; i < 5; ++i) ids.data<int32_t>()[i] = 3 * i - 4;
  Tensor ids_dev = ctx_.Empty({5}, DType::kI32);
  ops::Copy(ctx_, Dev(ids), ids_dev);
  EXPECT_TRUE(testing::BitwiseEqual(Host(ids_dev), ids));
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, AxpyMatchesCpu) {
  uint64_t seed = 100;
  for (DType dtype : kFloats) {
    for (int64_t n : kSizes) {
      for (int64_t offset : {0, 1}) {
        ++seed;
        const Tensor x = RandomHost({n}, dtype, seed, 1);
        const Tensor y = RandomHost({n}, dtype, seed, 2);
        Tensor y_dev = DevAt(y, offset);
        ops::Axpy(ctx_, -0.625, DevAt(x, offset), y_dev);
        Tensor ref = ReferenceInput(y).Clone();
        ops::Axpy(cpu_, -0.625, ReferenceInput(x), ref);
        ExpectParity(Host(y_dev), ref, ParityTolerance(dtype),
                     absl::StrCat("Axpy ", DTypeName(dtype), " n ", n, " offset ", offset));
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, ScaleMatchesCpuAndZeroAlphaClearsNaN) {
  uint64_t seed = 200;
  for (DType dtype : kFloats) {
    for (int64_t n : kSizes) {
      for (int64_t offset : {0, 1}) {
        ++seed;
        const Tensor x = RandomHost({n}, dtype, seed, 1);
        Tensor x_dev = DevAt(x, offset);
        ops::Scale(ctx_, 1.75, x_dev);
        Tensor ref = ReferenceInput(x).Clone();
        ops::Scale(cpu_, 1.75, ref);
        ExpectParity(Host(x_dev), ref, ParityTolerance(dtype),
                     absl::StrCat("Scale ", DTypeName(dtype), " n ", n, " offset ", offset));
        Tensor nan = PoisonedAt({n}, dtype, offset);
        ops::Scale(ctx_, 0.0, nan);
        const Tensor zeros = Host(nan);
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(zeros.At(i), 0.0) << DTypeName(dtype) << " " << i;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, ZeroWritesZeros) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
    Tensor t = Poisoned({3, 333}, dtype);
    ops::Zero(ctx_, t);
    const Tensor host = Host(t);
    for (int64_t i = 0; i < host.numel(); ++i) ASSERT_EQ(host.At(i), 0.0) << i;
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, SumMatchesCpuAndIsDeterministic) {
  uint64_t seed = 300;
  for (DType dtype : kFloats) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 3},
                      int64_t{5'000'011}}) {
      ++seed;
      const Tensor x = RandomHost({n}, dtype, seed, 1, 1.0, 0.1);
      Tensor sum_ref = Tensor::Empty({1}, DType::kF64);
      ops::Sum(cpu_, x, sum_ref);
      double abs_sum = 0;
      for (int64_t i = 0; i < n; ++i) abs_sum += std::abs(x.At(i));
      const Tensor x_dev = Dev(x);
      for (DType out : {DType::kF64, DType::kF32}) {
        Tensor first = Poisoned({1}, out);
        Tensor second = Poisoned({1}, out);
        ops::Sum(ctx_, x_dev, first);
        ops::Sum(ctx_, x_dev, second);
        const Tensor got = Host(first);
        const double want = sum_ref.At(0);
        // f64 accumulation in another order; an f32 result rounds once more.
        const double tol = 1e-12 * abs_sum + (out == DType::kF32 ? std::abs(want) * 1e-7 : 0.0);
        ASSERT_TRUE(std::isfinite(got.At(0))) << DTypeName(dtype) << " n " << n;
        EXPECT_NEAR(got.At(0), want, tol) << DTypeName(dtype) << " -> " << DTypeName(out) << " n " << n;
        EXPECT_TRUE(testing::BitwiseEqual(got, Host(second)))
            << "two sums of the same tensor differ: " << DTypeName(dtype) << " n " << n;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, SwiGluMatchesCpu) {
  uint64_t seed = 400;
  for (DType dtype : kFloats) {
    for (int64_t n : kSizes) {
      for (int64_t offset : {0, 1}) {
        ++seed;
        const Tensor g = RandomHost({n}, dtype, seed, 1, 3.0);
        const Tensor u = RandomHost({n}, dtype, seed, 2);
        Tensor h = PoisonedAt({n}, dtype, offset);
        ops::SwiGlu(ctx_, DevAt(g, offset), DevAt(u, offset), h);
        Tensor ref = Tensor::Empty({n}, ReferenceInput(g).dtype());
        ops::SwiGlu(cpu_, ReferenceInput(g), ReferenceInput(u), ref);
        ExpectParity(Host(h), ref, ParityTolerance(dtype),
                     absl::StrCat("SwiGlu ", DTypeName(dtype), " n ", n, " offset ", offset));
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaElementwiseTest, SwiGluBackwardMatchesCpu) {
  uint64_t seed = 500;
  for (DType dtype : kFloats) {
    for (int64_t n : kSizes) {
      for (int64_t offset : {0, 1}) {
        ++seed;
        const Tensor g = RandomHost({n}, dtype, seed, 1, 3.0);
        const Tensor u = RandomHost({n}, dtype, seed, 2);
        const Tensor dh = RandomHost({n}, dtype, seed, 3);
        Tensor dg = PoisonedAt({n}, dtype, offset);
        Tensor du = PoisonedAt({n}, dtype, offset);
        ops::SwiGluBackward(ctx_, DevAt(g, offset), DevAt(u, offset), DevAt(dh, offset), dg, du);
        const DType ref_dtype = ReferenceInput(g).dtype();
        Tensor dg_ref = Tensor::Empty({n}, ref_dtype);
        Tensor du_ref = Tensor::Empty({n}, ref_dtype);
        ops::SwiGluBackward(cpu_, ReferenceInput(g), ReferenceInput(u), ReferenceInput(dh), dg_ref,
                            du_ref);
        const std::string what = absl::StrCat(DTypeName(dtype), " n ", n, " offset ", offset);
        ExpectParity(Host(dg), dg_ref, ParityTolerance(dtype), "d_gate " + what);
        ExpectParity(Host(du), du_ref, ParityTolerance(dtype), "d_up " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// The packed forms (gate_up [N, 2F]) against the CPU, and the same bits as
// the unpacked kernels on the two halves; F that does and does not fill
// whole packs, views one element in (the unpacked path).
TEST_F(CudaElementwiseTest, SwiGluPackedMatchesCpuAndHalves) {
  uint64_t seed = 600;
  for (DType dtype : kFloats) {
    for (const auto& [n, f] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {64, 128}, {37, 1280}}) {
      for (int64_t offset : {0, 1}) {
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " n ", n, " f ", f, " offset ", offset);
        const Tensor gu = RandomHost({n, 2 * f}, dtype, seed, 1, 3.0);
        const Tensor dh = RandomHost({n, f}, dtype, seed, 2);
        const Tensor g = gu.Narrow(1, 0, f).Clone(), u = gu.Narrow(1, f, f).Clone();
        Tensor h = PoisonedAt({n, f}, dtype, offset);
        Tensor d_gu = PoisonedAt({n, 2 * f}, dtype, offset);
        ops::SwiGluPacked(ctx_, DevAt(gu, offset), h);
        ops::SwiGluPackedBackward(ctx_, DevAt(gu, offset), DevAt(dh, offset), d_gu);
        const DType ref_dtype = ReferenceInput(gu).dtype();
        Tensor h_ref = Tensor::Empty({n, f}, ref_dtype);
        Tensor d_gu_ref = Tensor::Empty({n, 2 * f}, ref_dtype);
        ops::SwiGluPacked(cpu_, ReferenceInput(gu), h_ref);
        ops::SwiGluPackedBackward(cpu_, ReferenceInput(gu), ReferenceInput(dh), d_gu_ref);
        ExpectParity(Host(h), h_ref, ParityTolerance(dtype), "h " + what);
        ExpectParity(Host(d_gu), d_gu_ref, ParityTolerance(dtype), "d_gate_up " + what);
        Tensor h_halves = PoisonedAt({n, f}, dtype, 0);
        Tensor dg = PoisonedAt({n, f}, dtype, 0), du = PoisonedAt({n, f}, dtype, 0);
        ops::SwiGlu(ctx_, Dev(g), Dev(u), h_halves);
        ops::SwiGluBackward(ctx_, Dev(g), Dev(u), Dev(dh), dg, du);
        const Tensor d_gu_host = Host(d_gu);
        EXPECT_EQ(Host(h).ToVector(), Host(h_halves).ToVector()) << what;
        EXPECT_EQ(d_gu_host.Narrow(1, 0, f).Clone().ToVector(), Host(dg).ToVector()) << what;
        EXPECT_EQ(d_gu_host.Narrow(1, f, f).Clone().ToVector(), Host(du).ToVector()) << what;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// SplitBf16 and AddParts: the CPU's bits (exact splits, sums in order),
// on a router's shapes and on odd ones.
TEST_F(CudaElementwiseTest, SplitBf16AndAddPartsAreTheCpuBits) {
  uint64_t seed = 900;
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {7, 13}, {16, 768}, {4099, 64}}) {
    for (int64_t reps : {1, 3}) {
      const std::string what = absl::StrCat(rows, " x ", cols, " reps ", reps);
      const Tensor x = RandomHost({rows, cols}, DType::kF32, ++seed, 1, 0.02);
      Tensor parts = Poisoned({rows, 3 * reps * cols}, DType::kBF16);
      ops::SplitBf16(ctx_, Dev(x), reps, parts);
      Tensor parts_ref = Tensor::Empty({rows, 3 * reps * cols}, DType::kBF16);
      ops::SplitBf16(cpu_, x, reps, parts_ref);
      EXPECT_TRUE(testing::BitwiseEqual(Host(parts), parts_ref)) << "SplitBf16 " << what;
      for (double beta : {0.0, 1.0}) {
        const Tensor sums = RandomHost({rows, 3 * reps * cols}, DType::kF32, seed, 2);
        const Tensor out = RandomHost({rows, cols}, DType::kF32, seed, 3);
        Tensor out_dev = beta == 0 ? Poisoned({rows, cols}, DType::kF32) : Dev(out);
        ops::AddParts(ctx_, Dev(sums), beta, out_dev);
        Tensor out_ref = out.Clone();
        ops::AddParts(cpu_, sums, beta, out_ref);
        EXPECT_TRUE(testing::BitwiseEqual(Host(out_dev), out_ref))
            << "AddParts " << what << " beta " << beta;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
