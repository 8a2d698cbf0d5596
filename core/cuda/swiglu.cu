// SwiGLU and its backward on the GPU (f32/f64/bf16; f32 math for f32 and
// bf16, f64 for f64), the same formulas as core/cpu/swiglu.cc (their
// expressions in core/cuda/swiglu_math.cuh).
// One pass over the inputs; 16-byte packs where every pointer allows. The
// packed forms read gate and up from one [N, 2F] row (the experts' stacked
// gate|up GEMM writes them so).
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/swiglu_math.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Element i of h (and d_h) reads gate[at] and up[at]: at = i, or in the
// packed layout (rows of gate | up, up = gate + F) at = r·2F + c for row
// r = i / F, column c. Packs of V never straddle a row there (the launcher
// packs only when F % V == 0).
template <bool kPacked>
__device__ __forceinline__ int64_t GateIndex(int64_t i, int64_t f) {
  return kPacked ? i + (i / f) * f : i;
}

template <typename T, int V, bool kPacked>
__global__ void SwiGluKernel(int64_t n, int64_t f, const T* gate, const T* up, T* h) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const int64_t at = GateIndex<kPacked>(i, f);
    Acc<T> g[V], u[V], out[V];
    LoadPack<V>(gate, at, count, g);
    LoadPack<V>(up, at, count, u);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = SwiGluOf(g[k], u[k]);
    StorePack<V>(h, i, count, out);
  });
}

template <typename T, int V, bool kPacked>
__global__ void SwiGluBackwardKernel(int64_t n, int64_t f, const T* gate, const T* up, const T* d_h,
                                     T* d_gate, T* d_up) {
  using A = Acc<T>;
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const int64_t at = GateIndex<kPacked>(i, f);
    A g[V], u[V], dh[V], dg[V], du[V];
    LoadPack<V>(gate, at, count, g);
    LoadPack<V>(up, at, count, u);
    LoadPack<V>(d_h, i, count, dh);
#pragma unroll
    for (int k = 0; k < V; ++k) SwiGluGradOf(g[k], u[k], dh[k], dg[k], du[k]);
    StorePack<V>(d_gate, at, count, dg);
    StorePack<V>(d_up, at, count, du);
  });
}

// ---------------------------------------------------------------- launchers

void CheckSame(const ExecContext& ctx, const Tensor& a, const Tensor& b, const char* what) {
  CheckOnDevice(ctx, b, "SwiGlu", what);
  SM_CHECK_MSG(a.numel() == b.numel() && a.dtype() == b.dtype(), "SwiGlu ", what, ": ",
               a.DebugString(), " vs ", b.DebugString());
}

// The kernels over n elements of h: 16-byte packs where `packs` (every
// pointer aligned; packed rows a whole number of packs), else one element
// at a time.
template <typename T, bool kPacked>
void LaunchSwiGlu(const ExecContext& ctx, bool packs, int64_t n, int64_t f, const T* gate,
                  const T* up, T* h) {
  constexpr int kV = kPack<T>;
  if (packs) {
    SwiGluKernel<T, kV, kPacked>
        <<<Blocks((n + kV - 1) / kV), kThreads, 0, Stream(ctx)>>>(n, f, gate, up, h);
  } else {
    SwiGluKernel<T, 1, kPacked><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, f, gate, up, h);
  }
}

template <typename T, bool kPacked>
void LaunchSwiGluBackward(const ExecContext& ctx, bool packs, int64_t n, int64_t f, const T* gate,
                          const T* up, const T* d_h, T* d_gate, T* d_up) {
  constexpr int kV = kPack<T>;
  if (packs) {
    SwiGluBackwardKernel<T, kV, kPacked><<<Blocks((n + kV - 1) / kV), kThreads, 0, Stream(ctx)>>>(
        n, f, gate, up, d_h, d_gate, d_up);
  } else {
    SwiGluBackwardKernel<T, 1, kPacked>
        <<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, f, gate, up, d_h, d_gate, d_up);
  }
}

// gate_up [N, 2F] on ctx's device and an F-wide tensor of its dtype: F.
int64_t PackedWidth(const ExecContext& ctx, const Tensor& gate_up, const Tensor& half,
                    const char* op, const char* what) {
  CheckOnDevice(ctx, gate_up, op, "gate_up");
  CheckOnDevice(ctx, half, op, what);
  SM_CHECK_MSG(gate_up.ndim() == 2 && gate_up.dim(1) % 2 == 0 && half.dtype() == gate_up.dtype() &&
                   half.numel() * 2 == gate_up.numel(),
               op, " ", what, ": ", half.DebugString(), " for gate_up ", gate_up.DebugString(),
               " (want gate_up [N, 2F], F-wide [N, F])");
  return gate_up.dim(1) / 2;
}

}  // namespace

void SwiGluPacked(const ExecContext& ctx, const Tensor& gate_up, const Tensor& h) {
  const int64_t f = PackedWidth(ctx, gate_up, h, "SwiGluPacked", "h");
  const int64_t n = h.numel();
  if (n == 0) return;
  DispatchFloat(h, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gu = Ptr<const T>(gate_up);
    T* out = Ptr<T>(h);
    LaunchSwiGlu<T, true>(ctx, f % kPack<T> == 0 && AllAligned16({gu, out}), n, f, gu, gu + f, out);
  });
  SM_CHECK_LAUNCH(ctx, "SwiGluPacked", "SwiGluKernel (packed)");
}

void SwiGluPackedBackward(const ExecContext& ctx, const Tensor& gate_up, const Tensor& d_h,
                          const Tensor& d_gate_up) {
  const char* op = "SwiGluPackedBackward";
  const int64_t f = PackedWidth(ctx, gate_up, d_h, op, "d_h");
  CheckOnDevice(ctx, d_gate_up, op, "d_gate_up");
  SM_CHECK_MSG(d_gate_up.shape() == gate_up.shape() && d_gate_up.dtype() == gate_up.dtype(), op,
               " d_gate_up: ", d_gate_up.DebugString(), " for gate_up ", gate_up.DebugString());
  const int64_t n = d_h.numel();
  if (n == 0) return;
  DispatchFloat(d_h, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gu = Ptr<const T>(gate_up);
    const T* dh = Ptr<const T>(d_h);
    T* dgu = Ptr<T>(d_gate_up);
    LaunchSwiGluBackward<T, true>(ctx, f % kPack<T> == 0 && AllAligned16({gu, dh, dgu}), n, f, gu,
                                  gu + f, dh, dgu, dgu + f);
  });
  SM_CHECK_LAUNCH(ctx, op, "SwiGluBackwardKernel (packed)");
}

void SwiGlu(const ExecContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& h) {
  CheckOnDevice(ctx, gate, "SwiGlu", "gate");
  CheckSame(ctx, gate, up, "up");
  CheckSame(ctx, gate, h, "h");
  const int64_t n = h.numel();
  if (n == 0) return;
  DispatchFloat(h, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = Ptr<const T>(gate);
    const T* u = Ptr<const T>(up);
    T* out = Ptr<T>(h);
    LaunchSwiGlu<T, false>(ctx, AllAligned16({g, u, out}), n, n, g, u, out);
  });
  SM_CHECK_LAUNCH(ctx, "SwiGlu", "SwiGluKernel");
}

void SwiGluBackward(const ExecContext& ctx, const Tensor& gate, const Tensor& up,
                    const Tensor& d_h, const Tensor& d_gate, const Tensor& d_up) {
  CheckOnDevice(ctx, gate, "SwiGluBackward", "gate");
  CheckSame(ctx, gate, up, "up");
  CheckSame(ctx, gate, d_h, "d_h");
  CheckSame(ctx, gate, d_gate, "d_gate");
  CheckSame(ctx, gate, d_up, "d_up");
  const int64_t n = d_h.numel();
  if (n == 0) return;
  DispatchFloat(d_h, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = Ptr<const T>(gate);
    const T* u = Ptr<const T>(up);
    const T* dh = Ptr<const T>(d_h);
    T* dg = Ptr<T>(d_gate);
    T* du = Ptr<T>(d_up);
    LaunchSwiGluBackward<T, false>(ctx, AllAligned16({g, u, dh, dg, du}), n, n, g, u, dh, dg, du);
  });
  SM_CHECK_LAUNCH(ctx, "SwiGluBackward", "SwiGluBackwardKernel");
}

}  // namespace scalemoe::cuda
