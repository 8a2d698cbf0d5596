// GPU test: the scale-vector ops (Dot, MagnitudeDirection and its backward,
// core/ops.h) against the CPU reference on fresh Philox data, f32 and f64,
// the plain and the normalized form, sizes from one element to millions.
// Outputs start as NaN (Dot writes into a slice of a larger buffer); the
// backward accumulates into random gradients; Dot gives the same bits twice.
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

constexpr int64_t kSizes[] = {1, 7, 1000, 4099, (1 << 20) + 3};

class CudaScaleVectorOpsTest : public CudaOpTest {
 protected:
  void ExpectOk() {
    const Status st = ctx_.Synchronize();
    EXPECT_TRUE(st.ok()) << st;
  }
};

TEST_F(CudaScaleVectorOpsTest, DotMatchesCpuAndIsDeterministic) {
  uint64_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (int64_t n :
         {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{(1 << 20) + 3}, int64_t{5'000'011}}) {
      const std::string what = absl::StrCat(DTypeName(dtype), " n ", n);
      ++seed;
      const Tensor x = RandomHost({n}, dtype, seed, 1, 1.0, 0.2);
      const Tensor y = RandomHost({n}, dtype, seed, 2);
      const Tensor x_dev = Dev(x), y_dev = Dev(y);
      // Into element 2 of a 3-element buffer (the backward's dots[2]).
      Tensor first = Poisoned({3}, DType::kF64);
      Tensor second = Poisoned({3}, DType::kF64);
      ops::Dot(ctx_, x_dev, y_dev, first.Narrow(0, 2, 1));
      ops::Dot(ctx_, x_dev, y_dev, second.Narrow(0, 2, 1));
      Tensor ref = Tensor::Empty({1}, DType::kF64);
      ops::Dot(cpu_, x, y, ref);
      double abs_sum = 0;
      for (int64_t i = 0; i < n; ++i) abs_sum += std::abs(x.At(i) * y.At(i));
      const Tensor got = Host(first);
      ASSERT_TRUE(std::isfinite(got.At(2))) << what;
      EXPECT_NEAR(got.At(2), ref.At(0), 1e-12 * abs_sum) << what;
      EXPECT_TRUE(std::isnan(got.At(0)) && std::isnan(got.At(1))) << what << ": wrote outside out";
      EXPECT_TRUE(testing::BitwiseEqual(got, Host(second))) << what << ": two runs differ";
    }
  }
  // ‖α‖² with x and y the same tensor.
  const Tensor a = RandomHost({4099}, DType::kF32, 99, 1);
  Tensor got = Poisoned({1}, DType::kF64);
  ops::Dot(ctx_, Dev(a), Dev(a), got);
  Tensor ref = Tensor::Empty({1}, DType::kF64);
  ops::Dot(cpu_, a, a, ref);
  EXPECT_NEAR(Host(got).At(0), ref.At(0), 1e-12 * ref.At(0));
  ExpectOk();
}

TEST_F(CudaScaleVectorOpsTest, MagnitudeDirectionMatchesCpu) {
  uint64_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (int64_t n : kSizes) {
      for (bool normalized : {false, true}) {
        const std::string what =
            absl::StrCat(DTypeName(dtype), " n ", n, normalized ? " normalized" : " plain");
        ++seed;
        const Tensor alpha = RandomHost({n}, dtype, seed, 1, 1.0, 0.5);
        const Tensor beta = RandomHost({1}, dtype, seed, 2, 0.3, 1.0);
        // ‖α‖² of a whole vector α is a slice of (dim = 2n).
        const int64_t dim = 2 * n;
        Tensor norm_sq;
        if (normalized) {
          norm_sq = Tensor::FromVector({1}, {1.7 * static_cast<double>(n)}, DType::kF64);
        }
        Tensor gamma = Poisoned({n}, dtype);
        ops::MagnitudeDirection(ctx_, Dev(alpha), Dev(beta), Dev(norm_sq), dim, gamma);
        Tensor ref = Tensor::Empty({n}, ReferenceInput(alpha).dtype());
        ops::MagnitudeDirection(cpu_, ReferenceInput(alpha), ReferenceInput(beta), norm_sq, dim,
                                ref);
        ExpectParity(Host(gamma), ref, ParityTolerance(dtype), what);
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaScaleVectorOpsTest, MagnitudeDirectionBackwardAccumulatesLikeCpu) {
  uint64_t seed = 200;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (int64_t n : kSizes) {
      for (bool normalized : {false, true}) {
        const std::string what =
            absl::StrCat(DTypeName(dtype), " n ", n, normalized ? " normalized" : " plain");
        ++seed;
        const Tensor alpha = RandomHost({n}, dtype, seed, 1, 1.0, 0.5);
        const Tensor beta = RandomHost({1}, dtype, seed, 2, 0.3, 1.0);
        const Tensor d_gamma = RandomHost({n}, dtype, seed, 3);
        const Tensor d_alpha0 = RandomHost({n}, dtype, seed, 4);
        const Tensor d_beta0 = RandomHost({1}, dtype, seed, 5);
        // {‖α‖² whole, <α,dγ> whole, <α,dγ> this slice}, as the layer forms them.
        const Tensor dots = Tensor::FromVector(
            {3}, {1.3 * static_cast<double>(n), 0.4 * static_cast<double>(n), 0.25 * n},
            DType::kF64);
        const int64_t dim = normalized ? 2 * n : 0;
        Tensor d_alpha = Dev(d_alpha0), d_beta = Dev(d_beta0);
        ops::MagnitudeDirectionBackward(ctx_, Dev(alpha), Dev(beta), Dev(dots), dim, Dev(d_gamma),
                                        d_alpha, d_beta);
        Tensor ref_alpha = ReferenceInput(d_alpha0).Clone();
        Tensor ref_beta = ReferenceInput(d_beta0).Clone();
        ops::MagnitudeDirectionBackward(cpu_, ReferenceInput(alpha), ReferenceInput(beta), dots,
                                        dim, ReferenceInput(d_gamma), ref_alpha, ref_beta);
        ExpectParity(Host(d_alpha), ref_alpha, ParityTolerance(dtype), "d_alpha " + what);
        ExpectParity(Host(d_beta), ref_beta, ParityTolerance(dtype), "d_beta " + what);
      }
    }
  }
  // An empty slice still adds its (zero-length) share to dβ.
  const Tensor empty = Tensor::Empty({0}, DType::kF32);
  const Tensor beta = Tensor::FromVector({1}, {0.75}, DType::kF32);
  const Tensor dots = Tensor::FromVector({3}, {4.0, 1.0, 0.5}, DType::kF64);
  Tensor d_beta = Dev(Tensor::FromVector({1}, {1.0}, DType::kF32));
  ops::MagnitudeDirectionBackward(ctx_, Dev(empty), Dev(beta), Dev(dots), 16, Dev(empty),
                                  Dev(empty), d_beta);
  Tensor ref_beta = Tensor::FromVector({1}, {1.0}, DType::kF32);
  ops::MagnitudeDirectionBackward(cpu_, empty, beta, dots, 16, empty, empty.Clone(), ref_beta);
  EXPECT_EQ(Host(d_beta).At(0), ref_beta.At(0));
  EXPECT_EQ(ref_beta.At(0), 1.0 + 2.0 * 0.5);  // √(16/4)·0.5
  ExpectOk();
}

}  // namespace
}  // namespace scalemoe
