// Time of the per-head norms (ops::ScaledRmsNormalize and its backward, the
// DNP / QK-norm op) and of ops::Rope on the GPU presets' q and k shapes, as
// the model runs them under train.precision BF16: x in fp32 (the
// projection's output), y, d_y and d_x in bf16; and with every tensor fp32.
// Rope in place on a contiguous tensor, computing its cos/sin (rope) or
// reading RopeTable's (rope_table), and with the table on q as the model
// holds it, a slice of the fused q|k|v output (token stride 3·H·D), with
// and without the table (rope_qkv_table, rope_qkv).
// The figure of merit is the DRAM traffic each call must move (x, the
// outputs, d_y and rstd; d_gamma's partial rows are not counted) over its
// time.
//
// Timing: CUDA events around kInner back-to-back calls, kSamples samples
// after kWarmup calls; the median sample / kInner per call.
// Output: one tab-separated row per case:
//   case op io rows d us GB/s
#include <cuda_runtime.h>

#include <cstdio>

#include "bench/cuda_bench_util.h"
#include "core/context.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

struct BenchCase {
  const char* name;
  int64_t b, t, h, d;
};

constexpr BenchCase kCases[] = {
    {"moe_125m_q", 8, 1024, 12, 64},        // configs/gpu_moe_125m: q and k
    {"finegrained_64e_k", 8, 1024, 4, 64},  // configs/gpu_finegrained_64e: k (4 kv heads)
    {"moe_125m_d128", 8, 1024, 12, 128},    // head dim 128
};

constexpr int kWarmup = 3, kInner = 10, kSamples = 15;

using bench::Check;

double Us(const ExecContext& ctx, const char* what, auto&& call) {
  return 1e3 * bench::MedianMsPerCall(
                   ctx, kWarmup, kInner, kSamples, [&](int) { call(); }, what);
}

void Print(const BenchCase& c, const char* op, const char* io, double us, double bytes) {
  std::printf("%s\t%s\t%s\t%lld\t%lld\t%.2f\t%.0f\n", c.name, op, io,
              static_cast<long long>(c.b * c.t * c.h), static_cast<long long>(c.d), us,
              bytes / (us * 1e-6) / 1e9);
  std::fflush(stdout);
}

int Main() {
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  Check(ctx.status(), "ExecContext::Cuda(0)");
  std::printf("case\top\tio\trows\td\tus\tGB/s\n");
  for (const BenchCase& c : kCases) {
    const int64_t rows = c.b * c.t * c.h;
    const Tensor x = bench::RandomDevice(*ctx, {rows, c.d}, DType::kF32, 1, 1.0);
    const Tensor gamma = bench::RandomDevice(*ctx, {c.d}, DType::kF32, 2, 1.0);
    const Tensor rstd = ctx->Empty({rows}, DType::kF32);
    const Tensor d_gamma = ctx->Empty({c.d}, DType::kF32);
    for (DType io : {DType::kBF16, DType::kF32}) {
      const char* io_name = io == DType::kBF16 ? "bf16" : "fp32";
      const Tensor y = ctx->Empty({rows, c.d}, io);
      const Tensor d_y = bench::RandomDevice(*ctx, {rows, c.d}, io, 3, 1.0);
      const Tensor d_x = ctx->Empty({rows, c.d}, io);
      const double x_bytes = 4.0 * rows * c.d, io_bytes = double(DTypeSize(io)) * rows * c.d;
      const double fwd = Us(*ctx, "ScaledRmsNormalize",
                            [&] { ops::ScaledRmsNormalize(*ctx, x, gamma, 1e-6, y, rstd); });
      Print(c, "norm_fwd", io_name, fwd, x_bytes + io_bytes + 4.0 * rows);
      const double bwd = Us(*ctx, "ScaledRmsNormalizeBackward", [&] {
        ops::ScaledRmsNormalizeBackward(*ctx, x, rstd, gamma, d_y, d_x, d_gamma);
      });
      Print(c, "norm_bwd", io_name, bwd, x_bytes + 2 * io_bytes + 4.0 * rows);
      const Tensor y4 = y.View({c.b, c.t, c.h, c.d});
      const double rope = Us(*ctx, "Rope", [&] { ops::Rope(*ctx, y4, 10000.0, y4); });
      Print(c, "rope", io_name, rope, 2 * io_bytes);
      const Tensor table = ctx->Empty({2, c.t, c.d / 2}, StatDType(io));
      ops::RopeTable(*ctx, 10000.0, table);
      const double rope_table =
          Us(*ctx, "Rope table", [&] { ops::Rope(*ctx, y4, 10000.0, y4, table); });
      Print(c, "rope_table", io_name, rope_table, 2 * io_bytes);
      const Tensor q = ctx->Empty({c.b, c.t, 3 * c.h, c.d}, io).Narrow(2, 0, c.h);
      const double rope_qkv_angles =
          Us(*ctx, "Rope q|k|v", [&] { ops::Rope(*ctx, q, 10000.0, q); });
      Print(c, "rope_qkv", io_name, rope_qkv_angles, 2 * io_bytes);
      const double rope_qkv =
          Us(*ctx, "Rope q|k|v table", [&] { ops::Rope(*ctx, q, 10000.0, q, table); });
      Print(c, "rope_qkv_table", io_name, rope_qkv, 2 * io_bytes);
    }
    ctx->allocator().ReleaseCache();
  }
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main() { return scalemoe::Main(); }
