// CopyHeads on the GPU, the contract of core/ops.h (core/cpu/copy_heads.cc
// is the reference): y = x for head vectors [..., H, D] of one shape and
// dtype, either token-strided (core/head_rows.h), e.g. q, k or v in or out
// of the fused q|k|v projection's output. A token's H·D elements are
// contiguous on both sides, so the copy is `tokens` rows of H·D elements at
// two pitches. Bits only: elements move as unsigned integers of their
// size, 16 bytes per access where H·D, both strides and both pointers
// allow it (else one element at a time).
#include <cstdint>
#include <numeric>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/head_rows.h"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernel

// Token n's `width` elements from x + n·x_stride to y + n·y_stride, V at a
// time (V divides width and both strides; the launcher checks alignment).
// A grid-stride loop over (token, pack) items that steps its token and
// column by a fixed amount instead of dividing each item's index.
template <typename T, int V>
__global__ void CopyHeadsKernel(int64_t tokens, int64_t width, int64_t x_stride, int64_t y_stride,
                                const T* x, T* y) {
  const int64_t packs = width / V;  // per token
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t token_step = step / packs, col_step = step - token_step * packs;
  int64_t token = first / packs, col = first - token * packs;
  while (token < tokens) {
    *reinterpret_cast<Pack<T, V>*>(y + token * y_stride + col * V) =
        *reinterpret_cast<const Pack<T, V>*>(x + token * x_stride + col * V);
    token += token_step;
    col += col_step;
    if (col >= packs) {
      col -= packs;
      ++token;
    }
  }
}

// ---------------------------------------------------------------- launcher

// Calls f(Tag<U>{}) with U the unsigned integer of t's element size.
template <typename F>
void DispatchBits(const Tensor& t, F&& f) {
  switch (DTypeSize(t.dtype())) {
    case 2:
      f(Tag<uint16_t>{});
      return;
    case 4:
      f(Tag<uint32_t>{});
      return;
    case 8:
      f(Tag<uint64_t>{});
      return;
    default:
      SM_CHECK_MSG(false, "CopyHeads: no kernel for ", t.DebugString());
  }
}

}  // namespace

void CopyHeads(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  constexpr const char* kOp = "CopyHeads";
  SM_CHECK_MSG(x.shape() == y.shape() && x.dtype() == y.dtype(), kOp, " y ", y.DebugString(),
               " for x ", x.DebugString(), " (same shape and dtype)");
  const HeadRows xr = CheckHeadRowsOnDevice(ctx, x, kOp, "x");
  const HeadRows yr = CheckHeadRowsOnDevice(ctx, y, kOp, "y");
  const int64_t width = xr.heads * xr.dim;
  if (xr.tokens == 0 || width == 0) return;
  if (x.raw_data() == y.raw_data() && xr.stride == yr.stride) return;  // the same elements
  DispatchBits(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto launch = [&](auto pack_tag) {
      constexpr int V = decltype(pack_tag)::value;
      const int64_t items = xr.tokens * (width / V);
      CopyHeadsKernel<T, V><<<Blocks(items), kThreads, 0, Stream(ctx)>>>(
          xr.tokens, width, xr.stride, yr.stride, Ptr<const T>(x), Ptr<T>(y));
    };
    // Packs when every token's row of both splits into them: V divides the
    // gcd of the row and both strides.
    LaunchPacked<T>(std::gcd(width, std::gcd(xr.stride, yr.stride)), {x.raw_data(), y.raw_data()},
                    launch);
  });
  SM_CHECK_LAUNCH(ctx, kOp, "CopyHeadsKernel");
}

}  // namespace scalemoe::cuda
