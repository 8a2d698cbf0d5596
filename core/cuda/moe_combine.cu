// The MoE combine as a per-token sum on the GPU, the contracts of
// core/ops.h and the arithmetic of core/cpu/moe_combine.cc: CombineSlots
// (each token adds its own slots' rows in slot order, f32 accumulation for
// bf16, rounded once) and SlotRowDot (the combine weights' gradient, one
// warp's fixed butterfly per (token, slot)). One writer per output element:
// deterministic, no atomics. Rows out of [0, M) (the CPU SM_CHECKs them)
// are skipped.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Thread per output element (t, i): out[t, i] += Σ_j w[t, j]·rows[r_j, i].
template <typename T>
__global__ void CombineKernel(int64_t n, int64_t k, int64_t c, int64_t m, const T* rows,
                              const int32_t* slot_row, const T* w, T* out) {
  using A = Acc<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * c;
       e += stride) {
    const int64_t t = e / c, i = e - t * c;
    A acc = ToAcc(out[e]);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = slot_row[t * k + j];
      if (r < 0 || r >= m) continue;
      const A wj = w ? ToAcc(w[t * k + j]) : A(1);
      acc += wj * ToAcc(rows[static_cast<int64_t>(r) * c + i]);
    }
    out[e] = FromAcc<T>(acc);
  }
}

// One warp per (t, j): out[t, j] = <x[t], rows[slot_row[t, j]]>.
template <typename T>
__global__ void SlotDotKernel(int64_t n, int64_t k, int64_t c, int64_t m, const T* x,
                              const int32_t* slot_row, const T* rows, T* out) {
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
      for (int64_t i = lane; i < c; i += 32) acc += ToAcc(xt[i]) * ToAcc(y[i]);
    }
    acc = WarpSum(acc);
    if (lane == 0) out[p] = FromAcc<T>(acc);
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
  if (weights.defined()) {
    CheckOnDevice(ctx, weights, "CombineSlots", "weights");
    SM_CHECK_MSG(weights.numel() == n * k && weights.dtype() == rows.dtype(),
                 "CombineSlots: weights ", weights.DebugString(), " for slot_row ",
                 slot_row.DebugString());
  }
  if (n * c == 0) return;
  DispatchFloat(out, [&](auto tag) {
    using T = typename decltype(tag)::type;
    CombineKernel<T><<<Blocks(n * c), kThreads, 0, Stream(ctx)>>>(
        n, k, c, m, Ptr<const T>(rows), Ptr<const int32_t>(slot_row), Ptr<const T>(weights),
        Ptr<T>(out));
  });
  SM_CHECK_LAUNCH(ctx, "CombineSlots", "CombineKernel");
}

void SlotRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& slot_row, const Tensor& rows,
                const Tensor& out) {
  CheckSlots(ctx, "SlotRowDot", rows, slot_row, x);
  CheckOnDevice(ctx, out, "SlotRowDot", "out");
  const int64_t n = x.dim(0), k = slot_row.dim(1), c = x.dim(1), m = rows.dim(0);
  SM_CHECK_MSG(out.numel() == n * k && out.dtype() == x.dtype(), "SlotRowDot: out ",
               out.DebugString(), " for slot_row ", slot_row.DebugString());
  if (n * k == 0) return;
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SlotDotKernel<T><<<Blocks(n * k * 32), kThreads, 0, Stream(ctx)>>>(
        n, k, c, m, Ptr<const T>(x), Ptr<const int32_t>(slot_row), Ptr<const T>(rows), Ptr<T>(out));
  });
  SM_CHECK_LAUNCH(ctx, "SlotRowDot", "SlotDotKernel");
}

}  // namespace scalemoe::cuda
