// Time of ops::CausalAttention and its backward on the GPU presets'
// attention shapes, f32 and bf16 tensors, each on the exact kernels
// (core/cuda/causal_attention.cu) and on the tensor-core path of
// AttentionOptions::bf16_operands (core/cuda/causal_attention_tc.cu, path
// "tc"; the model takes it under train.precision BF16). TFLOP/s by
// FlashAttention's convention: the causal forward does 4·B·H·T²·D / 2
// flops (two matmuls, half the scores), the backward 2.5x that.
//
// Timing: CUDA events around kInner back-to-back calls, kSamples samples
// after kWarmup calls; the median sample / kInner per call.
// Output: one tab-separated row per case:
//   case dtype path form b t h kv d ms tflops
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "core/context.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

struct BenchCase {
  const char* name;
  int64_t b, t, h, kv, d;
};

constexpr BenchCase kCases[] = {
    {"moe_125m", 8, 1024, 12, 12, 64},        // configs/gpu_moe_125m
    {"moe_125m_d128", 8, 1024, 12, 12, 128},  // the same with head dim 128
    {"finegrained_64e", 8, 1024, 12, 4, 64},  // GQA 3
    {"d128_gqa4", 4, 2048, 16, 4, 128},
};

// The exact kernels, then the tensor cores (train.precision BF16).
struct Path {
  const char* name;
  ops::AttentionOptions options;
};
constexpr Path kPaths[] = {{"exact", {}}, {"tc", {.bf16_operands = true}}};

constexpr int kWarmup = 3, kInner = 4, kSamples = 15;

using bench::Check;

Tensor Random(const ExecContext& ctx, const Shape& shape, DType dtype, uint64_t stream) {
  return bench::RandomDevice(ctx, shape, dtype, stream, 1.0);
}

template <typename F>
double Time(const ExecContext& ctx, F&& call) {
  return bench::MedianMsPerCall(
      ctx, kWarmup, kInner, kSamples, [&](int) { call(); }, "CausalAttention");
}

int Main() {
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  Check(ctx.status(), "ExecContext::Cuda(0)");
  std::printf("case\tdtype\tpath\tform\tb\tt\th\tkv\td\tms\ttflops\n");
  for (const BenchCase& c : kCases) {
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      const Tensor q = Random(*ctx, {c.b, c.t, c.h, c.d}, dtype, 1);
      const Tensor k = Random(*ctx, {c.b, c.t, c.kv, c.d}, dtype, 2);
      const Tensor v = Random(*ctx, {c.b, c.t, c.kv, c.d}, dtype, 3);
      const Tensor d_out = Random(*ctx, q.shape(), dtype, 4);
      const Tensor out = ctx->Empty(q.shape(), dtype);
      const Tensor lse = ctx->Empty({c.b, c.h, c.t}, DType::kF32);
      const Tensor d_q = ctx->Empty(q.shape(), dtype);
      const Tensor d_k = ctx->Empty(k.shape(), dtype);
      const Tensor d_v = ctx->Empty(v.shape(), dtype);
      const double fwd_flops = 2.0 * c.b * c.h * c.t * c.t * c.d;
      for (const Path& path : kPaths) {
        const ops::AttentionOptions& o = path.options;
        const double fwd = Time(*ctx, [&] { ops::CausalAttention(*ctx, q, k, v, out, lse, o); });
        const double bwd = Time(*ctx, [&] {
          ops::CausalAttentionBackward(*ctx, q, k, v, out, lse, d_out, d_q, d_k, d_v, o);
        });
        for (const auto& [form, ms, flops] :
             {std::tuple{"fwd", fwd, fwd_flops}, {"bwd", bwd, 2.5 * fwd_flops}}) {
          std::printf("%s\t%s\t%s\t%s\t%lld\t%lld\t%lld\t%lld\t%lld\t%.4f\t%.2f\n", c.name,
                      dtype == DType::kBF16 ? "bf16" : "fp32", path.name, form,
                      static_cast<long long>(c.b), static_cast<long long>(c.t),
                      static_cast<long long>(c.h), static_cast<long long>(c.kv),
                      static_cast<long long>(c.d), ms, flops / (ms * 1e-3) / 1e12);
        }
        std::fflush(stdout);
      }
    }
    ctx->allocator().ReleaseCache();
  }
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main() { return scalemoe::Main(); }
