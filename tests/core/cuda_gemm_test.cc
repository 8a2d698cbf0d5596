// GPU test: ops::Gemm through cuBLASLt against the CPU reference, on fresh
// Philox data for every case: 2-D and batched (each operand batched or
// shared), every transpose combination, alpha/beta (beta = 0 on a
// NaN-poisoned c), 1-row and 1-column products, K not a multiple of 8,
// empty dimensions, unaligned views; f32 (exact, no TF32), f64, bf16 -> bf16
// and bf16 -> f32; the f32 products with a side of at most 64 that
// core/cuda/skinny_gemm.cu takes (the binary is registered again as
// core_cuda_gemm_skinny_test with SCALEMOE_SKINNY_GEMM=1: every case it
// takes then runs on its kernels). References: f64 math on the same inputs
// for f32, f64 and bf16 -> f32 outputs; the CPU bf16 path for bf16 outputs.
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cuda/cuda_libraries.h"
#include "core/cuda/skinny_gemm.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::RandomHost;

struct GemmCase {
  int64_t batch;  // 0: a 2-D product
  int64_t m, n, k;
  bool a_shared = false, b_shared = false;  // a 2-D operand in a batched product
};

using DTypes = testing::GemmDTypes;
using testing::kGemmDTypes;

Tensor AsF64(const Tensor& host) {
  Tensor out = Tensor::Empty(host.shape(), DType::kF64);
  out.CopyFrom(host);
  return out;
}

class CudaGemmTest : public CudaOpTest {
 protected:
  // Runs one case on the GPU and on the CPU and compares them.
  void Check(const GemmCase& g, DTypes d, ops::Trans ta, ops::Trans tb, double alpha, double beta,
             uint64_t seed) {
    const bool batched = g.batch > 0;
    auto with_batch = [&](Shape s, bool shared) {
      if (batched && !shared) s.insert(s.begin(), g.batch);
      return s;
    };
    const Shape sa = with_batch(ta == ops::Trans::kYes ? Shape{g.k, g.m} : Shape{g.m, g.k}, g.a_shared);
    const Shape sb = with_batch(tb == ops::Trans::kYes ? Shape{g.n, g.k} : Shape{g.k, g.n}, g.b_shared);
    const Shape sc = with_batch({g.m, g.n}, false);
    const std::string what = absl::StrCat(
        DTypeName(d.in), "->", DTypeName(d.out), " a", ShapeString(sa),
        ta == ops::Trans::kYes ? "T" : "", " b", ShapeString(sb), tb == ops::Trans::kYes ? "T" : "",
        " c", ShapeString(sc), " alpha ", alpha, " beta ", beta, " seed ", seed);
    SCOPED_TRACE(what);
    const Tensor a = RandomHost(sa, d.in, seed, 1);
    const Tensor b = RandomHost(sb, d.in, seed, 2);
    const Tensor c = RandomHost(sc, d.out, seed, 3);
    const ops::GemmOptions o{ta, tb, alpha, beta};

    Tensor c_dev = beta == 0.0 ? Poisoned(sc, d.out) : Dev(c);
    ops::Gemm(ctx_, Dev(a), Dev(b), c_dev, o);
    const Status st = ctx_.status();
    ASSERT_TRUE(st.ok()) << st;
    const Tensor got = Host(c_dev);

    Tensor ref;
    if (d.out == DType::kBF16) {  // the CPU bf16 path
      ref = c.Clone();
      ops::Gemm(cpu_, a, b, ref, o);
    } else {  // f64 math on the same values
      ref = AsF64(c);
      ops::Gemm(cpu_, AsF64(a), AsF64(b), ref, o);
    }
    ExpectParity(got, ref, testing::GemmTolerance(d), what);
  }
};

const ops::Trans kTrans[] = {ops::Trans::kNo, ops::Trans::kYes};

TEST_F(CudaGemmTest, TwoDimensionalMatchesCpuForEveryDtypeAndTranspose) {
  const std::vector<GemmCase> cases = {
      {0, 1, 37, 19},    // one row
      {0, 200, 1, 70},   // one column
      {0, 64, 48, 40},   // multiples of 8
      {0, 33, 17, 13},   // K, M, N odd
      {0, 129, 257, 300},
      {0, 96, 80, 1000},  // a weight gradient's long K (tokens)
  };
  uint64_t seed = 100;
  for (const DTypes& d : kGemmDTypes) {
    for (const GemmCase& g : cases) {
      for (ops::Trans ta : kTrans) {
        for (ops::Trans tb : kTrans) {
          Check(g, d, ta, tb, 1.0, 0.0, ++seed);
          Check(g, d, ta, tb, 0.5, 1.0, ++seed);
          Check(g, d, ta, tb, -2.0, 0.25, ++seed);
        }
      }
    }
  }
}

// The router's backward (16 or 64 experts over hidden 768; tokens cut to
// 2,048 here) and the edges of the skinny kernels' tiles: M, K or N not a
// multiple of 4, 16, 64, a K split into slices of unequal length. Under
// SCALEMOE_SKINNY_GEMM=1 every case runs on those kernels (SkinnyGemmTakes),
// else on cuBLASLt.
TEST_F(CudaGemmTest, SkinnyF32ProductsMatchCpu) {
  if (std::getenv("SCALEMOE_SKINNY_GEMM") != nullptr) {
    ASSERT_TRUE(cuda::SkinnyGemmEnabled()) << "SCALEMOE_SKINNY_GEMM set, kernels not enabled";
  }
  const DTypes f32{DType::kF32, DType::kF32};
  // d_W = d_logitsᵀ·x: a [K, M] (trans_a), M <= 64, K >= 512.
  const std::vector<GemmCase> weight_grads = {
      {0, 16, 768, 2048}, {0, 64, 768, 2048}, {0, 3, 100, 513},
      {0, 17, 130, 1000}, {0, 64, 65, 4099},  {0, 1, 8, 512},
  };
  // d_x = d_logits·W: a [M, K], K <= 64.
  const std::vector<GemmCase> data_grads = {
      {0, 2048, 768, 16}, {0, 2048, 768, 64}, {0, 65, 70, 1},
      {0, 130, 129, 33},  {0, 1, 4, 64},      {0, 100, 3, 5},
  };
  uint64_t seed = 40000;
  for (const GemmCase& g : weight_grads) {
    const ops::GemmOptions o{ops::Trans::kYes, ops::Trans::kNo};
    ASSERT_TRUE(cuda::SkinnyGemmTakes(Tensor::Empty({g.k, g.m}, DType::kF32),
                                      Tensor::Empty({g.k, g.n}, DType::kF32),
                                      Tensor::Empty({g.m, g.n}, DType::kF32), o));
    Check(g, f32, ops::Trans::kYes, ops::Trans::kNo, 1.0, 0.0, ++seed);
    Check(g, f32, ops::Trans::kYes, ops::Trans::kNo, -0.5, 1.0, ++seed);
  }
  for (const GemmCase& g : data_grads) {
    const ops::GemmOptions o{};
    ASSERT_TRUE(cuda::SkinnyGemmTakes(Tensor::Empty({g.m, g.k}, DType::kF32),
                                      Tensor::Empty({g.k, g.n}, DType::kF32),
                                      Tensor::Empty({g.m, g.n}, DType::kF32), o));
    Check(g, f32, ops::Trans::kNo, ops::Trans::kNo, 1.0, 0.0, ++seed);
    Check(g, f32, ops::Trans::kNo, ops::Trans::kNo, 2.0, 0.5, ++seed);
  }
}

TEST_F(CudaGemmTest, BatchedWithBatchedOrSharedOperandsMatchesCpu) {
  const std::vector<GemmCase> cases = {
      {3, 5, 24, 17},                 // every operand batched
      {4, 16, 40, 24, false, true},   // b shared (folded into one product without trans_a)
      {4, 16, 40, 24, true, false},   // a shared
      {2, 1, 9, 7, false, true},      // one row per batch, b shared
      {5, 7, 3, 11, true, true},      // both shared: every batch the same product
      {1, 12, 20, 9},                 // a batch of one
      {6, 31, 29, 45, false, true},
  };
  uint64_t seed = 10000;
  for (const DTypes& d : kGemmDTypes) {
    for (const GemmCase& g : cases) {
      for (ops::Trans ta : kTrans) {
        for (ops::Trans tb : kTrans) {
          Check(g, d, ta, tb, 1.0, 0.0, ++seed);
          Check(g, d, ta, tb, 0.75, 1.0, ++seed);
        }
      }
    }
  }
}

TEST_F(CudaGemmTest, EmptyDimensions) {
  uint64_t seed = 20000;
  for (const DTypes& d : kGemmDTypes) {
    for (ops::Trans ta : kTrans) {
      for (ops::Trans tb : kTrans) {
        Check({0, 5, 6, 0}, d, ta, tb, 1.0, 0.0, ++seed);   // K = 0, beta 0: zeros
        Check({0, 5, 6, 0}, d, ta, tb, 1.0, 0.5, ++seed);   // K = 0: c = beta·c
        Check({3, 4, 2, 0}, d, ta, tb, 1.0, -1.0, ++seed);  // batched, K = 0
        Check({0, 0, 6, 4}, d, ta, tb, 1.0, 0.0, ++seed);   // M = 0
        Check({0, 5, 0, 4}, d, ta, tb, 1.0, 1.0, ++seed);   // N = 0
      }
    }
  }
  // A batch of zero products.
  for (const DTypes& d : kGemmDTypes) {
    ops::Gemm(ctx_, ctx_.Empty({0, 3, 4}, d.in), ctx_.Empty({0, 4, 5}, d.in),
              ctx_.Empty({0, 3, 5}, d.out));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// Views that start 1 row into their buffer: pointers aligned to 2 (bf16) or
// 4 bytes, not the 256 cuBLASLt's heuristic assumes by default.
TEST_F(CudaGemmTest, UnalignedViewsMatchCpu) {
  const int64_t m = 19, n = 23, k = 13;
  uint64_t seed = 30000;
  for (const DTypes& d : kGemmDTypes) {
    for (ops::Trans tb : kTrans) {
      ++seed;
      const Tensor a = RandomHost({m + 1, k}, d.in, seed, 1);
      const Tensor b = RandomHost(tb == ops::Trans::kYes ? Shape{n + 1, k} : Shape{k + 1, n}, d.in,
                                  seed, 2);
      const Tensor c = RandomHost({m + 1, n}, d.out, seed, 3);
      const ops::GemmOptions o{.trans_b = tb, .alpha = 1.5, .beta = 1.0};
      Tensor c_dev = Dev(c);
      ops::Gemm(ctx_, Dev(a).Narrow(0, 1, m), Dev(b).Narrow(0, 1, b.dim(0) - 1),
                c_dev.Narrow(0, 1, m), o);
      const Status st = ctx_.status();
      ASSERT_TRUE(st.ok()) << st;
      Tensor got = Host(c_dev);
      Tensor ref;
      if (d.out == DType::kBF16) {
        ref = c.Clone();
        ops::Gemm(cpu_, a.Narrow(0, 1, m), b.Narrow(0, 1, b.dim(0) - 1), ref.Narrow(0, 1, m), o);
      } else {
        ref = AsF64(c);
        ops::Gemm(cpu_, AsF64(a).Narrow(0, 1, m), AsF64(b).Narrow(0, 1, b.dim(0) - 1),
                  ref.Narrow(0, 1, m), o);
      }
      ExpectParity(got, ref, testing::GemmTolerance(d),
                   absl::StrCat("unaligned ", DTypeName(d.in), "->", DTypeName(d.out), " tb ",
                                static_cast<int>(tb)));
    }
  }
}

TEST_F(CudaGemmTest, PlansAreCachedPerShape) {
  Tensor a = Dev(RandomHost({64, 32}, DType::kBF16, 7, 1));
  Tensor b = Dev(RandomHost({48, 32}, DType::kBF16, 7, 2));
  Tensor c = ctx_.Empty({64, 48}, DType::kF32);
  const ops::GemmOptions o{.trans_b = ops::Trans::kYes};
  ops::Gemm(ctx_, a, b, c, o);
  const size_t plans = ctx_.cuda_libraries()->cache().size();
  EXPECT_GE(plans, 1u);
  for (int i = 0; i < 3; ++i) ops::Gemm(ctx_, a, b, c, o);
  EXPECT_EQ(ctx_.cuda_libraries()->cache().size(), plans);
  ops::Gemm(ctx_, a, b, c, {.trans_b = ops::Trans::kYes, .beta = 1.0});  // beta is not a plan
  EXPECT_EQ(ctx_.cuda_libraries()->cache().size(), plans);
  Tensor c2 = ctx_.Empty({32, 48}, DType::kF32);
  ops::Gemm(ctx_, a.Narrow(0, 0, 32), b, c2, o);  // a new shape, a new plan
  EXPECT_EQ(ctx_.cuda_libraries()->cache().size(), plans + 1);
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
