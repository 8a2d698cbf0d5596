// The MoE combine as a per-token sum on the GPU, the contracts of
// core/ops.h and the arithmetic of core/cpu/moe_combine.cc: CombineSlots
// (each token adds its own slots' rows in slot order, f32 accumulation for
// bf16, rounded once) and SlotRowDot (the combine weights' gradient, one
// warp per (token, slot): 16-byte loads where the rows allow, each lane's
// partial sum, then a fixed butterfly). One writer per output element:
// deterministic, no atomics. Rows out of [0, M) (the CPU SM_CHECKs them)
// are skipped. bf16 rows also take f32 weights (CombineSlots) and give an
// f32 out (SlotRowDot), the router's probabilities and their gradient.
// CombineSlots moves 16-byte packs of a row (8 bf16, 4 f32, 2 f64) when the
// width is a multiple of the pack and rows and out are 16-byte aligned, else
// single elements; either way each element gets the same sum.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Thread per V columns of a token: out[t, i..i+V) += Σ_j w[t, j]·rows[r_j, i..i+V),
// each element's sum in slot order from its out value, rounded once. W, the
// weights' type, is T or f32 for bf16 T (loaded unrounded). V = 1 or
// 16 / sizeof(T); V > 1 needs c % V == 0 and rows and out 16-byte aligned
// (the launcher checks), so every row's packs are aligned.
template <typename T, typename W, int V>
__global__ void CombineKernel(int64_t n, int64_t k, int64_t c, int64_t m, const T* rows,
                              const int32_t* slot_row, const W* w, T* out) {
  using A = Acc<T>;
  const int64_t packs = c / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * packs;
       e += stride) {
    const int64_t t = e / packs, i = (e - t * packs) * V;
    A acc[V];
    LoadPack<V>(out + t * c, i, V, acc);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = slot_row[t * k + j];
      if (r < 0 || r >= m) continue;
      const A wj = w ? ToAcc(w[t * k + j]) : A(1);
      A y[V];
      LoadPack<V>(rows + static_cast<int64_t>(r) * c, i, V, y);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] += wj * y[v];
    }
    StorePack<V>(out + t * c, i, V, acc);
  }
}

// One warp per (t, j): out[t, j] = <x[t], rows[slot_row[t, j]]>. O, out's
// type, is T or f32 for bf16 T (the f32 sum stored unrounded). Each lane
// sums packs of V elements lane, lane + 32, ... (V > 1: 16-byte loads, which
// need c % V == 0 and x and rows 16-byte aligned; the launcher checks), then
// the warp's fixed butterfly.
template <typename T, typename O, int V>
__global__ void SlotDotKernel(int64_t n, int64_t k, int64_t c, int64_t m, const T* x,
                              const int32_t* slot_row, const T* rows, O* out) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t p = first; p < n * k; p += warps) {
    const int32_t r = slot_row[p];
    A acc = 0;
    if (r >= 0 && r < m) {
      const T* xt = x + (p / k) * c;
      const T* y = rows + static_cast<int64_t>(r) * c;
      for (int64_t i = lane * V; i < c; i += 32 * V) {
        A xv[V], yv[V];
        LoadPack<V>(xt, i, V, xv);
        LoadPack<V>(y, i, V, yv);
#pragma unroll
        for (int q = 0; q < V; ++q) acc += xv[q] * yv[q];
      }
    }
    acc = WarpSum(acc);
    if (lane == 0) out[p] = FromAcc<O>(acc);
  }
}

// ---------------------------------------------------------------- launchers

// rows [M, C], per_token [N, C], slot_row [N, K]: shapes and dtypes agree.
void CheckSlots(const ExecContext& ctx, const char* op, const Tensor& rows, const Tensor& slot_row,
                const Tensor& per_token) {
  CheckOnDevice(ctx, rows, op, "rows");
  CheckOnDevice(ctx, slot_row, op, "slot_row");
  CheckOnDevice(ctx, per_token, op, "token rows");
  SM_CHECK_MSG(rows.ndim() == 2 && per_token.ndim() == 2 && rows.dim(1) == per_token.dim(1) &&
                   rows.dtype() == per_token.dtype() && slot_row.dtype() == DType::kI32 &&
                   slot_row.ndim() == 2 && slot_row.dim(0) == per_token.dim(0),
               op, ": rows ", rows.DebugString(), " slot_row ", slot_row.DebugString(),
               " token rows ", per_token.DebugString());
}

}  // namespace

void CombineSlots(const ExecContext& ctx, const Tensor& rows, const Tensor& slot_row,
                  const Tensor& weights, const Tensor& out) {
  CheckSlots(ctx, "CombineSlots", rows, slot_row, out);
  const int64_t n = out.dim(0), k = slot_row.dim(1), c = out.dim(1), m = rows.dim(0);
  const bool f32_weights =
      weights.defined() && weights.dtype() == DType::kF32 && rows.dtype() == DType::kBF16;
  if (weights.defined()) {
    CheckOnDevice(ctx, weights, "CombineSlots", "weights");
    SM_CHECK_MSG(weights.numel() == n * k && (weights.dtype() == rows.dtype() || f32_weights),
                 "CombineSlots: weights ", weights.DebugString(), " for slot_row ",
                 slot_row.DebugString(), " and rows ", rows.DebugString(),
                 " (weights take the rows' dtype, or f32 for bf16 rows)");
  }
  if (n * c == 0) return;
  const auto launch = [&](auto rows_tag, auto weights_tag) {
    using T = typename decltype(rows_tag)::type;
    using W = typename decltype(weights_tag)::type;
    LaunchPacked<T>(c, {rows.raw_data(), out.raw_data()}, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      CombineKernel<T, W, V><<<Blocks(n * c / V), kThreads, 0, Stream(ctx)>>>(
          n, k, c, m, Ptr<const T>(rows), Ptr<const int32_t>(slot_row), Ptr<const W>(weights),
          Ptr<T>(out));
    });
  };
  if (f32_weights) {
    launch(Tag<__nv_bfloat16>{}, Tag<float>{});
  } else {
    DispatchFloat(out, [&](auto tag) { launch(tag, tag); });
  }
  SM_CHECK_LAUNCH(ctx, "CombineSlots", "CombineKernel");
}

void SlotRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& slot_row, const Tensor& rows,
                const Tensor& out) {
  CheckSlots(ctx, "SlotRowDot", rows, slot_row, x);
  CheckOnDevice(ctx, out, "SlotRowDot", "out");
  const int64_t n = x.dim(0), k = slot_row.dim(1), c = x.dim(1), m = rows.dim(0);
  const bool f32_out = out.dtype() == DType::kF32 && x.dtype() == DType::kBF16;
  SM_CHECK_MSG(out.numel() == n * k && (out.dtype() == x.dtype() || f32_out), "SlotRowDot: out ",
               out.DebugString(), " for slot_row ", slot_row.DebugString(), " and x ",
               x.DebugString(), " (out takes x's dtype, or f32 for bf16 x)");
  if (n * k == 0) return;
  const auto launch = [&](auto x_tag, auto out_tag) {
    using T = typename decltype(x_tag)::type;
    using O = typename decltype(out_tag)::type;
    LaunchPacked<T>(c, {x.raw_data(), rows.raw_data()}, [&](auto pack) {
      SlotDotKernel<T, O, decltype(pack)::value><<<Blocks(n * k * 32), kThreads, 0, Stream(ctx)>>>(
          n, k, c, m, Ptr<const T>(x), Ptr<const int32_t>(slot_row), Ptr<const T>(rows),
          Ptr<O>(out));
    });
  };
  if (f32_out) {
    launch(Tag<__nv_bfloat16>{}, Tag<float>{});
  } else {
    DispatchFloat(x, [&](auto tag) { launch(tag, tag); });
  }
  SM_CHECK_LAUNCH(ctx, "SlotRowDot", "SlotDotKernel");
}

}  // namespace scalemoe::cuda
