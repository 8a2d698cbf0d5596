// The CPU reference of causal attention (core/cpu/causal_attention.cc)
// against a direct implementation of the formulation it replaced: the
// [B, H, T, T] probabilities formed whole, out = P v, and the backward
// dS = P ⊙ (dP − rowsum(P ⊙ dP)) from them. The lse-based op must give the
// same out and gradients (f64 to rounding, f32 to f32 rounding, bf16
// computed in f32). Finite differences: tests/model/model_ops_test.cc.
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using testing::RandomTensor;

struct Shapes {
  int64_t b, t, h, kv, d;
};

struct Result {
  Tensor out, lse, dq, dk, dv;  // f64
};

// The probabilities formulation, in f64 on the values of the given tensors.
Result Explicit(const Shapes& s, const Tensor& q, const Tensor& k, const Tensor& v,
                const Tensor& d_out) {
  const int64_t group = s.h / s.kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return ((b * s.t + t) * s.h + h) * s.d; };
  auto ki = [&](int64_t b, int64_t t, int64_t h) { return ((b * s.t + t) * s.kv + h) * s.d; };
  Result r{Tensor::Zeros(q.shape(), DType::kF64), Tensor::Zeros({s.b, s.h, s.t}, DType::kF64),
           Tensor::Zeros(q.shape(), DType::kF64), Tensor::Zeros(k.shape(), DType::kF64),
           Tensor::Zeros(v.shape(), DType::kF64)};
  double* out = r.out.data<double>();
  double* dq = r.dq.data<double>();
  double* dk = r.dk.data<double>();
  double* dv = r.dv.data<double>();
  std::vector<double> p(s.t), dp(s.t);
  for (int64_t b = 0; b < s.b; ++b) {
    for (int64_t h = 0; h < s.h; ++h) {
      const int64_t g = h / group;
      for (int64_t t = 0; t < s.t; ++t) {
        double max = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t c = 0; c < s.d; ++c) dot += q.At(qi(b, t, h) + c) * k.At(ki(b, j, g) + c);
          p[j] = dot * scale;
          max = std::max(max, p[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= t; ++j) sum += std::exp(p[j] - max);
        r.lse.data<double>()[(b * s.h + h) * s.t + t] = max + std::log(sum);
        for (int64_t j = 0; j <= t; ++j) p[j] = std::exp(p[j] - max) / sum;
        double pdp = 0;
        for (int64_t j = 0; j <= t; ++j) {
          dp[j] = 0;
          for (int64_t c = 0; c < s.d; ++c) {
            out[qi(b, t, h) + c] += p[j] * v.At(ki(b, j, g) + c);
            dp[j] += d_out.At(qi(b, t, h) + c) * v.At(ki(b, j, g) + c);
            dv[ki(b, j, g) + c] += p[j] * d_out.At(qi(b, t, h) + c);
          }
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= t; ++j) {
          const double ds = p[j] * (dp[j] - pdp) * scale;
          for (int64_t c = 0; c < s.d; ++c) {
            dq[qi(b, t, h) + c] += ds * k.At(ki(b, j, g) + c);
            dk[ki(b, j, g) + c] += ds * q.At(qi(b, t, h) + c);
          }
        }
      }
    }
  }
  return r;
}

double MaxRelDiff(const Tensor& got, const Tensor& ref) {
  double diff = 0, max = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    EXPECT_TRUE(std::isfinite(got.At(i))) << i;
    diff = std::max(diff, std::abs(got.At(i) - ref.At(i)));
    max = std::max(max, std::abs(ref.At(i)));
  }
  return max > 0 ? diff / max : diff;
}

void ExpectMatchesExplicit(const Shapes& s, DType dtype, double tol) {
  SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " T ", s.t, " H ", s.h, " KV ", s.kv, " D ", s.d));
  const ExecContext ctx;
  const Tensor q = RandomTensor({s.b, s.t, s.h, s.d}, 1, 1.5, dtype);
  const Tensor k = RandomTensor({s.b, s.t, s.kv, s.d}, 2, 1.5, dtype);
  const Tensor v = RandomTensor({s.b, s.t, s.kv, s.d}, 3, 1.0, dtype);
  const Tensor d_out = RandomTensor(q.shape(), 4, 1.0, dtype);
  const DType lse_dtype = dtype == DType::kF64 ? DType::kF64 : DType::kF32;
  Tensor out = Tensor::Empty(q.shape(), dtype);
  Tensor lse = Tensor::Empty({s.b, s.h, s.t}, lse_dtype);
  ops::CausalAttention(ctx, q, k, v, out, lse);
  Tensor dq = Tensor::Empty(q.shape(), dtype);
  Tensor dk = Tensor::Empty(k.shape(), dtype);
  Tensor dv = Tensor::Empty(v.shape(), dtype);
  ops::CausalAttentionBackward(ctx, q, k, v, out, lse, d_out, dq, dk, dv);
  ASSERT_TRUE(ctx.status().ok()) << ctx.status();
  const Result ref = Explicit(s, q, k, v, d_out);
  EXPECT_LE(MaxRelDiff(out, ref.out), tol) << "out";
  EXPECT_LE(MaxRelDiff(lse, ref.lse), tol) << "lse";
  EXPECT_LE(MaxRelDiff(dq, ref.dq), tol) << "d_q";
  EXPECT_LE(MaxRelDiff(dk, ref.dk), tol) << "d_k";
  EXPECT_LE(MaxRelDiff(dv, ref.dv), tol) << "d_v";
}

constexpr Shapes kShapes[] = {
    {2, 1, 4, 4, 8}, {2, 7, 4, 4, 5}, {2, 9, 4, 2, 8}, {1, 13, 8, 2, 16}, {2, 6, 3, 1, 4}};

TEST(CausalAttentionTest, F64MatchesTheProbabilitiesFormulation) {
  for (const Shapes& s : kShapes) ExpectMatchesExplicit(s, DType::kF64, 1e-13);
}

TEST(CausalAttentionTest, F32MatchesTheProbabilitiesFormulationToF32Rounding) {
  // lse is stored in f32: P = exp(s − lse) carries its rounding (~|lse|·6e-8).
  for (const Shapes& s : kShapes) ExpectMatchesExplicit(s, DType::kF32, 2e-6);
}

TEST(CausalAttentionTest, Bf16ComputesInF32) {
  // Same bf16 inputs, f64 reference: only the bf16 rounding of the outputs
  // and gradients (2^-9 relative) and f32 arithmetic remain.
  for (const Shapes& s : kShapes) ExpectMatchesExplicit(s, DType::kBF16, 1e-2);
}

// AttentionOptions::bf16_operands picks the GPU's tensor cores; the CPU
// computes exactly either way (core/ops.h): the same bits.
TEST(CausalAttentionTest, Bf16OperandsLeaveTheCpuExact) {
  const ExecContext ctx;
  const Shapes s{2, 9, 4, 2, 8};
  const Tensor q = RandomTensor({s.b, s.t, s.h, s.d}, 1, 1.5, DType::kF32);
  const Tensor k = RandomTensor({s.b, s.t, s.kv, s.d}, 2, 1.5, DType::kF32);
  const Tensor v = RandomTensor({s.b, s.t, s.kv, s.d}, 3, 1.0, DType::kF32);
  const Tensor d_out = RandomTensor(q.shape(), 4, 1.0, DType::kF32);
  std::vector<Tensor> runs[2];
  for (int i = 0; i < 2; ++i) {
    const ops::AttentionOptions options{.bf16_operands = i == 1};
    Tensor out = Tensor::Empty(q.shape(), DType::kF32);
    Tensor lse = Tensor::Empty({s.b, s.h, s.t}, DType::kF32);
    Tensor dq = Tensor::Empty(q.shape(), DType::kF32);
    Tensor dk = Tensor::Empty(k.shape(), DType::kF32);
    Tensor dv = Tensor::Empty(v.shape(), DType::kF32);
    ops::CausalAttention(ctx, q, k, v, out, lse, options);
    ops::CausalAttentionBackward(ctx, q, k, v, out, lse, d_out, dq, dk, dv, options);
    runs[i] = {out, lse, dq, dk, dv};
  }
  ASSERT_TRUE(ctx.status().ok()) << ctx.status();
  for (int t = 0; t < 5; ++t) {
    ASSERT_EQ(runs[0][t].nbytes(), runs[1][t].nbytes());
    EXPECT_EQ(std::memcmp(runs[0][t].raw_data(), runs[1][t].raw_data(), runs[0][t].nbytes()), 0)
        << "tensor " << t;
  }
}

}  // namespace
}  // namespace scalemoe
