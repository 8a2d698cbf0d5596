// Reductions for row kernels (core/cuda/rms_normalize.cu, cross_entropy.cu,
// vocab_parallel.cu): a warp or a block handles one row at a time and loops
// over rows, so unlike kernel_util.cuh's BlockSum every thread gets the
// result and the block's scratch is reusable (each reduction ends with a
// barrier). Fixed butterflies and a fixed order over the warps: the same
// inputs give the same bits on every run.
#pragma once

#include <math_constants.h>

#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {

struct SumOp {
  template <typename A>
  __device__ __forceinline__ A operator()(A a, A b) const {
    return a + b;
  }
};

// fmax ignores a NaN operand, as the CPU reference's std::max(m, x) does.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// op over the 32 lanes of a warp; every lane gets the same bits (op is
// commutative, so both lanes of each butterfly pair compute the same value).
template <typename A, typename Op>
__device__ __forceinline__ A WarpAllReduce(A v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the G adjacent lanes of a group (G a power of two <= 32); every
// lane of the warp calls it, every lane of a group gets the same bits (a
// fixed butterfly; + is commutative).
template <int G, typename A>
__device__ __forceinline__ A GroupSum(A v) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// op over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. Every thread of the block must call it; it may be
// called any number of times.
template <typename A, typename Op>
__device__ A BlockAllReduce(A v, Op op) {
  __shared__ A scratch[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = static_cast<int>(blockDim.x / 32);
  v = WarpAllReduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A total = scratch[0];
  for (int w = 1; w < warps; ++w) total = op(total, scratch[w]);
  __syncthreads();  // scratch is free for the next call
  return total;
}

// op over a group of G threads: one warp (G = 32) or the whole block (G =
// blockDim.x).
template <int G, typename A, typename Op>
__device__ __forceinline__ A GroupAllReduce(A v, Op op) {
  if constexpr (G == 32) {
    return WarpAllReduce(v, op);
  } else {
    return BlockAllReduce(v, op);
  }
}

template <typename A>
__device__ __forceinline__ A NegInf();
template <>
__device__ __forceinline__ float NegInf<float>() {
  return -CUDART_INF_F;
}
template <>
__device__ __forceinline__ double NegInf<double>() {
  return -CUDART_INF;
}

template <typename T>
__device__ __forceinline__ T NanOf();
template <>
__device__ __forceinline__ float NanOf<float>() {
  return CUDART_NAN_F;
}
template <>
__device__ __forceinline__ double NanOf<double>() {
  return CUDART_NAN;
}
template <>
__device__ __forceinline__ __nv_bfloat16 NanOf<__nv_bfloat16>() {
  return __float2bfloat16_rn(CUDART_NAN_F);
}

// Threads per block of a kernel that gives a block to each row of `cols`
// elements: a function of the row length alone, so the order of every
// row's sum is fixed by the shape. At most kMaxRowThreads (the kernels'
// __launch_bounds__, so that they never ask for too many registers).
constexpr int kMaxRowThreads = 512;
inline int RowBlockThreads(int64_t cols) {
  if (cols >= 4096) return kMaxRowThreads;
  if (cols >= 512) return 256;
  if (cols >= 64) return 64;
  return 32;
}

// Blocks for a kernel that gives a block to each of `rows` rows (>= 1).
inline unsigned RowBlocks(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, kMaxBlocks));
}

// For row kernels with a group of G lanes a row (scaled_rms_normalize.cu,
// the attention's row dot in causal_attention_tc.cu): calls launch(G, V), V
// a 16-byte pack where d and every row pointer allow it, else 1; G the
// fewest of 8, 16, 32 lanes that cover a row's packs (32 lanes take several
// packs each past 32 packs).
template <typename T, typename Launch>
void LaunchLaneGroups(int64_t d, std::initializer_list<const void*> ptrs, Launch&& launch) {
  constexpr int kV = kPack<T>;
  auto with_v = [&](auto v) {
    constexpr int V = decltype(v)::value;
    const int64_t packs = (d + V - 1) / V;
    if (packs <= 8) {
      launch(std::integral_constant<int, 8>{}, v);
    } else if (packs <= 16) {
      launch(std::integral_constant<int, 16>{}, v);
    } else {
      launch(std::integral_constant<int, 32>{}, v);
    }
  };
  if (d % kV == 0 && AllAligned16(ptrs)) {
    with_v(std::integral_constant<int, kV>{});
  } else {
    with_v(std::integral_constant<int, 1>{});
  }
}

}  // namespace scalemoe::cuda
