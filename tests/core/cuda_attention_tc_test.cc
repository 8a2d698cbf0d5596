// GPU test: the tensor-core path of CausalAttention and its backward
// (AttentionOptions::bf16_operands, core/cuda/causal_attention_tc.cu)
// against the CPU f64 reference on the same bf16-rounded inputs: out, lse,
// d_q, d_k and d_v within 1e-2 of the reference in relative L2 norm, for
// T = 1 and T not a multiple of the 64-row tile (37, 130, 333), GQA ratios
// 1, 2 and 4 (and 4 of 8 heads), head dims 64 and 128, f32 and bf16
// tensors. Outputs start as NaN. The backward runs on the reference's out
// and lse, so both sides see the same inputs. Two runs give the same bits;
// other head dims keep the exact kernels. Tile edges (T = 63, 64, 65, 128,
// 129) and T = 1024 too. The binary runs twice: with SCALEMOE_ATTENTION=wmma
// on the WMMA kernels (core_cuda_attention_tc_test) and with =mma on the
// mma.sync kernels of causal_attention_mma.cu, the default
// (core_cuda_attention_tc_mma_test). q, k, v, d_q, d_k and d_v as token-
// strided slices of wider buffers give the bits of contiguous tensors.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cuda/causal_attention_mma.h"
#include "tests/core/cuda_test_util.h"
#include "tests/core/head_rows_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::F64;
using testing::RandomHost;

constexpr double kTolerance = 1e-2;  // relative L2 error, the bf16 bound
constexpr ops::AttentionOptions kBf16{.bf16_operands = true};

struct Case {
  int64_t b, t, h, kv, d;
  std::string Name(DType dtype) const {
    return absl::StrCat(cuda::UseAttentionMma() ? "mma " : "wmma ", DTypeName(dtype), " B ", b,
                        " T ", t, " H ", h, " KV ", kv, " D ", d);
  }
};

// A host tensor converted to dtype.
Tensor As(const Tensor& host, DType dtype) {
  Tensor out = Tensor::Empty(host.shape(), dtype);
  out.CopyFrom(host);
  return out;
}

// ‖got − ref‖₂ / ‖ref‖₂ within kTolerance, every element of got finite. A
// zero reference (T = 1: d_q and d_k vanish, dP = D exactly) needs
// rms(got) ≤ kZeroRms: what f32 rounding of dP − D leaves is ~1e-7.
constexpr double kZeroRms = 1e-4;
void ExpectRelativeL2(const Tensor& got, const Tensor& ref, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.At(i), r = ref.At(i);
    ASSERT_TRUE(std::isfinite(g)) << what << ": element " << i << " is " << g << " (reference " << r
                                  << ")";
    diff += (g - r) * (g - r);
    norm += r * r;
  }
  if (norm == 0) {
    EXPECT_LE(std::sqrt(diff / static_cast<double>(got.numel())), kZeroRms)
        << what << ": zero reference";
    return;
  }
  EXPECT_LE(std::sqrt(diff / norm), kTolerance)
      << what << ": ‖diff‖ " << std::sqrt(diff) << ", ‖ref‖ " << std::sqrt(norm);
}

class CudaAttentionTcTest : public CudaOpTest {
 protected:
  struct Inputs {
    Tensor q, k, v, d_out;  // host bf16: the values both sides see
  };

  Inputs Make(const Case& c, uint64_t seed) const {
    return {RandomHost({c.b, c.t, c.h, c.d}, DType::kBF16, seed, 1, 1.5),
            RandomHost({c.b, c.t, c.kv, c.d}, DType::kBF16, seed, 2, 1.5),
            RandomHost({c.b, c.t, c.kv, c.d}, DType::kBF16, seed, 3),
            RandomHost({c.b, c.t, c.h, c.d}, DType::kBF16, seed, 4)};
  }

  // The GPU's tensor-core path on `dtype` tensors against the f64 CPU
  // reference.
  void ExpectMatchesReference(const Case& c, DType dtype, uint64_t seed) {
    const std::string what = c.Name(dtype);
    SCOPED_TRACE(what);
    const Inputs in = Make(c, seed);
    const Tensor rq = F64(in.q), rk = F64(in.k), rv = F64(in.v), rdo = F64(in.d_out);
    Tensor ref_out = Tensor::Empty(rq.shape(), DType::kF64);
    Tensor ref_lse = Tensor::Empty({c.b, c.h, c.t}, DType::kF64);
    ops::CausalAttention(cpu_, rq, rk, rv, ref_out, ref_lse);
    Tensor ref_dq = Tensor::Empty(rq.shape(), DType::kF64);
    Tensor ref_dk = Tensor::Empty(rk.shape(), DType::kF64);
    Tensor ref_dv = Tensor::Empty(rv.shape(), DType::kF64);
    ops::CausalAttentionBackward(cpu_, rq, rk, rv, ref_out, ref_lse, rdo, ref_dq, ref_dk, ref_dv);

    const Tensor q = Dev(As(in.q, dtype)), k = Dev(As(in.k, dtype)), v = Dev(As(in.v, dtype));
    const Tensor d_out = Dev(As(in.d_out, dtype));
    Tensor out = Poisoned(q.shape(), dtype);
    Tensor lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
    ops::CausalAttention(ctx_, q, k, v, out, lse, kBf16);
    ExpectRelativeL2(Host(out), ref_out, "out " + what);
    ExpectRelativeL2(Host(lse), ref_lse, "lse " + what);

    Tensor d_q = Poisoned(q.shape(), dtype);
    Tensor d_k = Poisoned(k.shape(), dtype);
    Tensor d_v = Poisoned(v.shape(), dtype);
    ops::CausalAttentionBackward(ctx_, q, k, v, Dev(As(ref_out, dtype)),
                                 Dev(As(ref_lse, DType::kF32)), d_out, d_q, d_k, d_v, kBf16);
    ExpectRelativeL2(Host(d_q), ref_dq, "d_q " + what);
    ExpectRelativeL2(Host(d_k), ref_dk, "d_k " + what);
    ExpectRelativeL2(Host(d_v), ref_dv, "d_v " + what);
    const Status st = ctx_.status();
    EXPECT_TRUE(st.ok()) << st;
  }

  // Every T, GQA ratio (H = 4 over KV = 4, 2, 1) and head dim, B = 2.
  void ExpectAllMatch(DType dtype, uint64_t seed) {
    for (int64_t d : {64, 128}) {
      for (int64_t t : {1, 37, 130}) {
        for (int64_t kv : {4, 2, 1}) ExpectMatchesReference({2, t, 4, kv, d}, dtype, ++seed);
      }
    }
  }
};

TEST_F(CudaAttentionTcTest, F32TensorsMatchTheF64Reference) { ExpectAllMatch(DType::kF32, 100); }

TEST_F(CudaAttentionTcTest, Bf16TensorsMatchTheF64Reference) { ExpectAllMatch(DType::kBF16, 200); }

// Six query and key tiles, GQA 4 and 8.
TEST_F(CudaAttentionTcTest, LongerSequenceMatches) {
  ExpectMatchesReference({1, 333, 8, 2, 64}, DType::kF32, 300);
  ExpectMatchesReference({1, 333, 8, 1, 128}, DType::kF32, 301);
}

// Both sides of every tile edge, GQA 1, 2 and 4, both head dims.
TEST_F(CudaAttentionTcTest, TileEdgesMatch) {
  uint64_t seed = 600;
  for (int64_t d : {64, 128}) {
    for (int64_t t : {63, 64, 65, 128, 129}) {
      for (int64_t kv : {4, 2, 1}) ExpectMatchesReference({1, t, 4, kv, d}, DType::kBF16, ++seed);
    }
  }
}

// Sixteen tiles, the bench's sequence length.
TEST_F(CudaAttentionTcTest, SequenceOf1024Matches) {
  ExpectMatchesReference({1, 1024, 4, 4, 64}, DType::kBF16, 700);
  ExpectMatchesReference({1, 1024, 4, 2, 128}, DType::kF32, 701);
  ExpectMatchesReference({1, 1024, 4, 1, 64}, DType::kF32, 702);
}

// The option does route: f32 tensors give other bits than the exact kernel
// (bf16 operands and probabilities), within the bf16 bound of it.
TEST_F(CudaAttentionTcTest, Bf16OperandsTakeTheTensorCorePath) {
  const Case c{1, 130, 4, 2, 64};
  const Inputs in = Make(c, 450);
  const Tensor q = Dev(As(in.q, DType::kF32)), k = Dev(As(in.k, DType::kF32));
  const Tensor v = Dev(As(in.v, DType::kF32));
  Tensor exact_out = Poisoned(q.shape(), DType::kF32), out = Poisoned(q.shape(), DType::kF32);
  Tensor lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
  ops::CausalAttention(ctx_, q, k, v, exact_out, lse);
  ops::CausalAttention(ctx_, q, k, v, out, lse, kBf16);
  const Tensor exact = Host(exact_out), got = Host(out);
  EXPECT_FALSE(testing::BitwiseEqual(got, exact));
  ExpectRelativeL2(got, exact, "out against the exact kernel");
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// Head dims without a tensor-core kernel keep the exact f32 kernels: the
// option changes nothing there (1e-5 of max|ref|, the f32 parity bound).
TEST_F(CudaAttentionTcTest, OtherHeadDimsKeepTheExactKernels) {
  const Case c{2, 37, 4, 2, 40};
  const Inputs in = Make(c, 400);
  const Tensor q = Dev(As(in.q, DType::kF32)), k = Dev(As(in.k, DType::kF32));
  const Tensor v = Dev(As(in.v, DType::kF32));
  Tensor exact_out = Poisoned(q.shape(), DType::kF32), out = Poisoned(q.shape(), DType::kF32);
  Tensor exact_lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
  Tensor lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
  ops::CausalAttention(ctx_, q, k, v, exact_out, exact_lse);
  ops::CausalAttention(ctx_, q, k, v, out, lse, kBf16);
  EXPECT_TRUE(testing::BitwiseEqual(Host(out), Host(exact_out)));
  EXPECT_TRUE(testing::BitwiseEqual(Host(lse), Host(exact_lse)));
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// q, k and v as head slices of one [B, T, H + 2·KV, D] buffer (the q|k|v
// GEMM's output under model.fuse_qkv, core/head_rows.h), and the backward
// writing d_q, d_k and d_v into slices of a buffer two heads wider (NaN bits
// outside them): the bits of contiguous tensors, nothing outside the slices
// written. bf16 takes the mma.sync kernels' token-strided instantiation
// (the others copy to contiguous tensors first); f32 and WMMA the copies.
TEST_F(CudaAttentionTcTest, TokenStridedOperandsGiveTheBitsOfContiguousOnes) {
  using testing::Heads;
  using testing::HostBuffer;
  using testing::SliceOf;
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (const Case& c : {Case{2, 130, 4, 2, 64}, Case{2, 70, 4, 1, 128}, Case{1, 64, 2, 2, 64}}) {
      SCOPED_TRACE(c.Name(dtype));
      const Inputs in = Make(c, 700 + c.t);
      const Tensor q = Dev(As(in.q, dtype)), k = Dev(As(in.k, dtype)), v = Dev(As(in.v, dtype));
      const Tensor d_out = Dev(As(in.d_out, dtype));
      Tensor out = Poisoned(q.shape(), dtype), lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
      ops::CausalAttention(ctx_, q, k, v, out, lse, kBf16);
      Tensor d_q = Poisoned(q.shape(), dtype), d_k = Poisoned(k.shape(), dtype),
             d_v = Poisoned(v.shape(), dtype);
      ops::CausalAttentionBackward(ctx_, q, k, v, out, lse, d_out, d_q, d_k, d_v, kBf16);

      const int64_t all = c.h + 2 * c.kv;
      const testing::Layout lq = Heads(c.b, c.t, all, 0, c.h, c.d),
                            lk = Heads(c.b, c.t, all, c.h, c.kv, c.d),
                            lv = Heads(c.b, c.t, all, c.h + c.kv, c.kv, c.d);
      Tensor qkv_host = HostBuffer(lq, dtype, As(in.q, dtype));
      SliceOf(lk, qkv_host).CopyFrom(As(in.k, dtype));
      SliceOf(lv, qkv_host).CopyFrom(As(in.v, dtype));
      const Tensor qkv = Dev(qkv_host);
      const Tensor qs = SliceOf(lq, qkv), ks = SliceOf(lk, qkv), vs = SliceOf(lv, qkv);
      Tensor out2 = Poisoned(q.shape(), dtype), lse2 = Poisoned({c.b, c.h, c.t}, DType::kF32);
      ops::CausalAttention(ctx_, qs, ks, vs, out2, lse2, kBf16);
      EXPECT_TRUE(testing::BitwiseEqual(Host(out2), Host(out))) << "out";
      EXPECT_TRUE(testing::BitwiseEqual(Host(lse2), Host(lse))) << "lse";

      const testing::Layout gq = Heads(c.b, c.t, all + 2, 1, c.h, c.d),
                            gk = Heads(c.b, c.t, all + 2, 1 + c.h, c.kv, c.d),
                            gv = Heads(c.b, c.t, all + 2, 1 + c.h + c.kv, c.kv, c.d);
      const Tensor grads_host = HostBuffer(gq, dtype);
      const Tensor grads = Dev(grads_host);
      ops::CausalAttentionBackward(ctx_, qs, ks, vs, out2, lse2, d_out, SliceOf(gq, grads),
                                   SliceOf(gk, grads), SliceOf(gv, grads), kBf16);
      Tensor want = grads_host.Clone();
      SliceOf(gq, want).CopyFrom(Host(d_q));
      SliceOf(gk, want).CopyFrom(Host(d_k));
      SliceOf(gv, want).CopyFrom(Host(d_v));
      EXPECT_TRUE(testing::BitwiseEqual(Host(grads), want)) << "d_q, d_k, d_v and the NaN around";
      EXPECT_TRUE(testing::BitwiseEqual(Host(qkv), qkv_host)) << "q|k|v buffer untouched";
      const Status st = ctx_.status();
      EXPECT_TRUE(st.ok()) << st;
    }
  }
}

TEST_F(CudaAttentionTcTest, TwoRunsGiveTheSameBits) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t d : {64, 128}) {
      const Case c{2, 130, 4, 1, d};
      SCOPED_TRACE(c.Name(dtype));
      const Inputs in = Make(c, 500 + d);
      const Tensor q = Dev(As(in.q, dtype)), k = Dev(As(in.k, dtype)), v = Dev(As(in.v, dtype));
      const Tensor d_out = Dev(As(in.d_out, dtype));
      std::vector<Tensor> runs[2];
      for (std::vector<Tensor>& run : runs) {
        Tensor out = Poisoned(q.shape(), dtype);
        Tensor lse = Poisoned({c.b, c.h, c.t}, DType::kF32);
        Tensor d_q = Poisoned(q.shape(), dtype);
        Tensor d_k = Poisoned(k.shape(), dtype);
        Tensor d_v = Poisoned(v.shape(), dtype);
        ops::CausalAttention(ctx_, q, k, v, out, lse, kBf16);
        ops::CausalAttentionBackward(ctx_, q, k, v, out, lse, d_out, d_q, d_k, d_v, kBf16);
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
