// SwiGLU's element math, shared by its kernels (core/cuda/swiglu.cu) and the
// grouped GEMM epilogues that fuse it (core/cuda/grouped_gemm_wgmma_ws_parts.cuh):
// one expression in every place, so the fused results have the bits of the
// separate pass. A is the accumulation type (f32 for f32 and bf16, f64).
//   h = g·σ(g)·u;  d_u = d_h·g·σ(g);  d_g = d_h·u·σ(g)·(1 + g·(1 − σ(g))).
#pragma once

namespace scalemoe::cuda {

__device__ __forceinline__ float SwiGluSigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }
__device__ __forceinline__ double SwiGluSigmoid(double g) { return 1.0 / (1.0 + exp(-g)); }

template <typename A>
__device__ __forceinline__ A SwiGluOf(A g, A u) {
  return g * SwiGluSigmoid(g) * u;
}

template <typename A>
__device__ __forceinline__ void SwiGluGradOf(A g, A u, A dh, A& dg, A& du) {
  const A s = SwiGluSigmoid(g);
  du = dh * (g * s);
  dg = dh * u * s * (A(1) + g * (A(1) - s));
}

}  // namespace scalemoe::cuda
