// GPU test: CausalAttention and its backward (core/cuda/causal_attention.cu)
// against the CPU reference on fresh Philox data: T = 1 and T not a
// multiple of any tile (37, 130), GQA ratios 1, 2 and 4, head dims 64 and
// 128 (the flash kernels) and 40 (the generic one), B = 2, f32 against the
// f64 reference (1e-5 of max|ref|), bf16 against the CPU bf16 path (1e-2),
// f64 (the generic kernels) to 1e-12. Outputs start as NaN. The backward
// runs on the reference's out and lse (in the GPU's dtypes), so both sides
// see the same inputs; two full forward+backward runs give the same bits.
#include <cmath>
#include <string>
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

struct Case {
  int64_t b, t, h, kv, d;
  std::string Name(DType dtype) const {
    return absl::StrCat(DTypeName(dtype), " B ", b, " T ", t, " H ", h, " KV ", kv, " D ", d);
  }
};

DType LseDType(DType dtype) { return dtype == DType::kF64 ? DType::kF64 : DType::kF32; }

// A host tensor converted to dtype.
Tensor As(const Tensor& host, DType dtype) {
  Tensor out = Tensor::Empty(host.shape(), dtype);
  out.CopyFrom(host);
  return out;
}

class CudaAttentionTest : public CudaOpTest {
 protected:
  struct Inputs {
    Tensor q, k, v, d_out;  // host, in the tested dtype
  };

  Inputs Make(const Case& c, DType dtype, uint64_t seed) const {
    return {RandomHost({c.b, c.t, c.h, c.d}, dtype, seed, 1, 1.5),
            RandomHost({c.b, c.t, c.kv, c.d}, dtype, seed, 2, 1.5),
            RandomHost({c.b, c.t, c.kv, c.d}, dtype, seed, 3),
            RandomHost({c.b, c.t, c.h, c.d}, dtype, seed, 4)};
  }

  void ExpectMatchesCpu(const Case& c, DType dtype, uint64_t seed) {
    const std::string what = c.Name(dtype);
    SCOPED_TRACE(what);
    const double tol = ParityTolerance(dtype);
    const Inputs in = Make(c, dtype, seed);
    // Reference, in f64 for f32 (ReferenceInput) and in the CPU bf16 path.
    const Tensor rq = ReferenceInput(in.q), rk = ReferenceInput(in.k), rv = ReferenceInput(in.v);
    const Tensor rdo = ReferenceInput(in.d_out);
    const DType ref_dtype = rq.dtype();
    Tensor ref_out = Tensor::Empty(rq.shape(), ref_dtype);
    Tensor ref_lse = Tensor::Empty({c.b, c.h, c.t}, LseDType(ref_dtype));
    ops::CausalAttention(cpu_, rq, rk, rv, ref_out, ref_lse);
    Tensor ref_dq = Tensor::Empty(rq.shape(), ref_dtype);
    Tensor ref_dk = Tensor::Empty(rk.shape(), ref_dtype);
    Tensor ref_dv = Tensor::Empty(rv.shape(), ref_dtype);
    ops::CausalAttentionBackward(cpu_, rq, rk, rv, ref_out, ref_lse, rdo, ref_dq, ref_dk, ref_dv);

    const Tensor q = Dev(in.q), k = Dev(in.k), v = Dev(in.v), d_out = Dev(in.d_out);
    Tensor out = Poisoned(q.shape(), dtype);
    Tensor lse = Poisoned({c.b, c.h, c.t}, LseDType(dtype));
    ops::CausalAttention(ctx_, q, k, v, out, lse);
    ExpectParity(Host(out), ref_out, tol, "out " + what);
    ExpectParity(Host(lse), ref_lse, tol, "lse " + what);

    Tensor d_q = Poisoned(q.shape(), dtype);
    Tensor d_k = Poisoned(k.shape(), dtype);
    Tensor d_v = Poisoned(v.shape(), dtype);
    ops::CausalAttentionBackward(ctx_, q, k, v, Dev(As(ref_out, dtype)),
                                 Dev(As(ref_lse, LseDType(dtype))), d_out, d_q, d_k, d_v);
    ExpectParity(Host(d_q), ref_dq, tol, "d_q " + what);
    ExpectParity(Host(d_k), ref_dk, tol, "d_k " + what);
    ExpectParity(Host(d_v), ref_dv, tol, "d_v " + what);
    const Status st = ctx_.status();
    EXPECT_TRUE(st.ok()) << st;
  }

  // Every T, GQA ratio (H = 4 over KV = 4, 2, 1) and head dim, B = 2.
  void ExpectAllMatch(DType dtype, const std::vector<int64_t>& dims, uint64_t seed) {
    for (int64_t d : dims) {
      for (int64_t t : {1, 37, 130}) {
        for (int64_t kv : {4, 2, 1}) ExpectMatchesCpu({2, t, 4, kv, d}, dtype, ++seed);
      }
    }
  }
};

TEST_F(CudaAttentionTest, F32MatchesF64Reference) { ExpectAllMatch(DType::kF32, {64, 128}, 100); }

TEST_F(CudaAttentionTest, Bf16MatchesCpuBf16) { ExpectAllMatch(DType::kBF16, {64, 128}, 200); }

TEST_F(CudaAttentionTest, F64AndOtherHeadDimsTakeTheGenericKernels) {
  ExpectAllMatch(DType::kF64, {64, 40}, 300);
  ExpectAllMatch(DType::kF32, {40}, 400);
  ExpectAllMatch(DType::kBF16, {40}, 500);
}

// More query tiles than blocks of one row and GQA 8, once.
TEST_F(CudaAttentionTest, LongerSequenceMatches) {
  ExpectMatchesCpu({1, 333, 8, 1, 128}, DType::kF32, 600);
  ExpectMatchesCpu({1, 333, 8, 2, 64}, DType::kF32, 601);
}

TEST_F(CudaAttentionTest, TwoRunsGiveTheSameBits) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (int64_t d : {64, 128}) {
      const Case c{2, 130, 4, 1, d};
      SCOPED_TRACE(c.Name(dtype));
      const Inputs in = Make(c, dtype, 700 + d);
      const Tensor q = Dev(in.q), k = Dev(in.k), v = Dev(in.v), d_out = Dev(in.d_out);
      std::vector<Tensor> runs[2];
      for (std::vector<Tensor>& run : runs) {
        Tensor out = Poisoned(q.shape(), dtype);
        Tensor lse = Poisoned({c.b, c.h, c.t}, LseDType(dtype));
        Tensor d_q = Poisoned(q.shape(), dtype);
        Tensor d_k = Poisoned(k.shape(), dtype);
        Tensor d_v = Poisoned(v.shape(), dtype);
        ops::CausalAttention(ctx_, q, k, v, out, lse);
        ops::CausalAttentionBackward(ctx_, q, k, v, out, lse, d_out, d_q, d_k, d_v);
        for (const Tensor& t : {out, lse, d_q, d_k, d_v}) run.push_back(Host(t));
      }
      const char* names[] = {"out", "lse", "d_q", "d_k", "d_v"};
      for (int i = 0; i < 5; ++i) {
        EXPECT_TRUE(testing::BitwiseEqual(runs[0][i], runs[1][i])) << names[i];
        for (int64_t e = 0; e < runs[0][i].numel(); ++e) {
          ASSERT_TRUE(std::isfinite(runs[0][i].At(e))) << names[i] << " element " << e;
        }
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
