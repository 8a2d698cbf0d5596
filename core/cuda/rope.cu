// Rope and RopeBackward on the GPU, the contract of core/ops.h
// (core/cpu/rope.cc is the reference): rotate-half rotary embedding of x
// [B, T, H, D], pairs (i, i + D/2) at position t rotated by
// t · theta^(−2i/D) (forward) or by its negative (backward: Rᵀ).
// f32, f64 and bf16; the angle and its cos/sin are computed in f64 (a
// position times a frequency in f32 would be off by ~1e-4 rad at t ~ 4096),
// then rounded to the compute type (f32 for f32 and bf16), as the CPU does.
// A thread owns one (t, i) pair of columns, computes its cos/sin once and
// rotates it in a slice of the B·H head vectors; out may alias x.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Pairs (t, i) over the grid's x (i fastest: a warp reads adjacent
// columns); head vectors bh = b·H + h over the grid's y.
template <typename T>
__global__ void RopeKernel(int64_t t_dim, int64_t h_dim, int64_t bh_count, int64_t d, double theta,
                           double sign, const T* x, T* out) {
  using A = Acc<T>;
  const int64_t half = d / 2;
  const int64_t pairs = t_dim * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < pairs;
       e += stride) {
    const int64_t t = e / half, i = e - t * half;
    const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    double sin_d, cos_d;
    sincos(static_cast<double>(t) * inv_freq, &sin_d, &cos_d);
    const A c = static_cast<A>(cos_d), s = static_cast<A>(sign * sin_d);
    for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
      const int64_t b = bh / h_dim, h = bh - b * h_dim;
      const int64_t base = ((b * t_dim + t) * h_dim + h) * d + i;
      const A x1 = ToAcc(x[base]), x2 = ToAcc(x[base + half]);
      out[base] = FromAcc<T>(x1 * c - x2 * s);
      out[base + half] = FromAcc<T>(x2 * c + x1 * s);
    }
  }
}

// ---------------------------------------------------------------- launchers

// Enough blocks over the head vectors to fill the GPU when T·D/2 alone
// does not (each block row recomputes its pairs' cos/sin).
constexpr int64_t kTargetBlocks = 2048;

void Run(const ExecContext& ctx, const char* op, const Tensor& x, double theta, double sign,
         const Tensor& out) {
  CheckOnDevice(ctx, x, op, "x");
  SM_CHECK_MSG(x.ndim() == 4, op, " x must be [B, T, H, D], got ", x.DebugString());
  SM_CHECK_MSG(x.dim(3) % 2 == 0, op, " head dim must be even, got ", x.DebugString());
  CheckOnDevice(ctx, out, op, "out");
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype(), op, " out ", out.DebugString(),
               " for x ", x.DebugString());
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3);
  const int64_t pairs = t * (d / 2), bh = b * h;
  if (pairs == 0 || bh == 0) return;
  const unsigned gx = Blocks(pairs);
  const unsigned gy = static_cast<unsigned>(
      std::clamp<int64_t>((kTargetBlocks + gx - 1) / gx, 1, std::min<int64_t>(bh, 65535)));
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    RopeKernel<T><<<dim3(gx, gy), kThreads, 0, Stream(ctx)>>>(t, h, bh, d, theta, sign,
                                                              Ptr<const T>(x), Ptr<T>(out));
  });
  SM_CHECK_LAUNCH(ctx, op, "RopeKernel");
}

}  // namespace

void Rope(const ExecContext& ctx, const Tensor& x, double theta, const Tensor& out) {
  Run(ctx, "Rope", x, theta, 1.0, out);
}

void RopeBackward(const ExecContext& ctx, const Tensor& d_out, double theta, const Tensor& d_x) {
  Run(ctx, "RopeBackward", d_out, theta, -1.0, d_x);
}

}  // namespace scalemoe::cuda
