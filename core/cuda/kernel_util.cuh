// Helpers shared by the CUDA ops' kernels and launchers (core/cuda/*.cu):
// element types and their compute type, 16-byte packed loads and stores,
// grid sizing, deterministic warp and block sums, and the launch check.
//
// Element types in kernels: float, double and __nv_bfloat16 (DType::kBF16;
// the same bits as core/dtype.h's bf16). f32 and bf16 compute in f32, f64 in
// f64; bf16 stores round to nearest even, as the CPU reference does.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "core/context.h"
#include "core/cuda/device_runtime.h"
#include "core/head_rows.h"
#include "core/tensor.h"

namespace scalemoe::cuda {

// ---------------------------------------------------------------- element types

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float ToAcc(float v) { return v; }
__device__ __forceinline__ double ToAcc(double v) { return v; }
__device__ __forceinline__ float ToAcc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T FromAcc(Acc<T> v);
template <>
__device__ __forceinline__ float FromAcc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double FromAcc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromAcc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the kernel element type of a float tensor.
template <typename F>
void DispatchFloat(const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::kF32: f(Tag<float>{}); return;
    case DType::kF64: f(Tag<double>{}); return;
    case DType::kBF16: f(Tag<__nv_bfloat16>{}); return;
    default: SM_CHECK_MSG(false, "expected an f32/f64/bf16 tensor, got ", t.DebugString());
  }
}

// Calls f(Tag<T>{}) for f32 or f64: ops whose CPU reference takes only
// those (routing, permutation); `op` names the op in the error.
template <typename F>
void DispatchF32F64(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::kF32:
      f(Tag<float>{});
      return;
    case DType::kF64:
      f(Tag<double>{});
      return;
    default:
      SM_CHECK_MSG(false, op, ": expected an f32/f64 tensor, got ", t.DebugString());
  }
}

template <typename T>
T* Ptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.raw_data()) : nullptr;
}

// ---------------------------------------------------------------- packed access

// V elements of T in one aligned access (16 bytes when V = 16 / sizeof(T)).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T>
constexpr int kPack = static_cast<int>(16 / sizeof(T));

inline bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
// Every pointer 16-byte aligned (null ones, for undefined tensors, are).
inline bool AllAligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs) {
    if (!Aligned16(p)) return false;
  }
  return true;
}

// A kernel's elements per access V: launch(std::integral_constant<int,
// kPack<T>>) when rows of `width` elements of T split into 16-byte packs and
// every pointer starts on one (so every row's packs are aligned), else
// launch(std::integral_constant<int, 1>) (one element at a time).
template <typename T, typename Launch>
void LaunchPacked(int64_t width, std::initializer_list<const void*> ptrs, Launch&& launch) {
  if (width % kPack<T> == 0 && AllAligned16(ptrs)) {
    launch(std::integral_constant<int, kPack<T>>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

// out[0..count) = p[i..i+count) in the compute type (a single packed load
// when count == V); out[count..V) = 0.
template <int V, typename T>
__device__ __forceinline__ void LoadPack(const T* p, int64_t i, int count, Acc<T> (&out)[V]) {
  if (count == V) {
    const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p + i);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ToAcc(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = k < count ? ToAcc(p[i + k]) : Acc<T>(0);
  }
}

template <int V, typename T>
__device__ __forceinline__ void StorePack(T* p, int64_t i, int count, const Acc<T> (&in)[V]) {
  if (count == V) {
    Pack<T, V> pack;
#pragma unroll
    for (int k = 0; k < V; ++k) pack.v[k] = FromAcc<T>(in[k]);
    *reinterpret_cast<Pack<T, V>*>(p + i) = pack;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (k < count) p[i + k] = FromAcc<T>(in[k]);
    }
  }
}

// Grid-stride loop over [0, n) in packs of V: body(first index, count).
template <int V, typename F>
__device__ __forceinline__ void ForEachPack(int64_t n, F&& body) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < n;
       i += stride) {
    body(i, static_cast<int>(n - i < V ? n - i : V));
  }
}

// ---------------------------------------------------------------- launch sizes

constexpr int kThreads = 256;
// Enough blocks to fill any current GPU several times over; grid-stride
// loops cover the rest.
constexpr int64_t kMaxBlocks = 8192;

// Blocks of kThreads threads for `items` work items (>= 1).
inline unsigned Blocks(int64_t items) {
  return static_cast<unsigned>(std::clamp<int64_t>((items + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

inline cudaStream_t Stream(const ExecContext& ctx) {
  return static_cast<cudaStream_t>(ctx.stream());
}

// A generic pointer into shared memory as the 32-bit shared address that
// PTX's shared-memory operands take.
__device__ __forceinline__ unsigned SmemAddress(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Opts a kernel into more than 48 KB of dynamic shared memory, once per
// kernel (callers keep the result in a static of their template instance).
// max_carveout: ask for the largest shared-memory carveout (the rest of the
// SM's 256 KB stays L1), where the driver's own choice would hold fewer
// blocks than the registers allow.
template <typename Kernel>
cudaError_t AllowDynamicSmem(Kernel kernel, int bytes, bool max_carveout = false) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess && max_carveout) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  }
  return e;
}

// Whether the environment variable `name` is set to `value` (the kernels'
// A/B switches, e.g. SCALEMOE_GROUPED_GEMM=mma; callers read it once).
inline bool EnvEquals(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env != nullptr && std::string(env) == value;
}

// Records a failed launch (or an earlier asynchronous fault) on ctx, naming
// the op, the kernel and where it was launched.
inline void CheckLaunch(const ExecContext& ctx, const char* op, const char* kernel,
                        const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return;
  const std::string what = absl::StrCat(file, ":", line, ": ", op, " (", kernel, " launch)");
  ctx.Fail(CudaStatus(err, what.c_str(), ctx.device_ordinal()));
}
#define SM_CHECK_LAUNCH(ctx, op, kernel) \
  ::scalemoe::cuda::CheckLaunch(ctx, op, kernel, __FILE__, __LINE__)

// Records a failed stream-ordered runtime call (cudaMemsetAsync, ...).
inline void CheckCall(const ExecContext& ctx, cudaError_t err, const char* op, const char* call,
                      const char* file, int line) {
  if (err == cudaSuccess) return;
  const std::string what = absl::StrCat(file, ":", line, ": ", op, " (", call, ")");
  ctx.Fail(CudaStatus(err, what.c_str(), ctx.device_ordinal()));
}
#define SM_CHECK_CUDA_CALL(ctx, expr, op) \
  ::scalemoe::cuda::CheckCall(ctx, (expr), op, #expr, __FILE__, __LINE__)

// The device's SM count, for grids of one wave; 0 where the query failed
// (recorded on ctx, naming op).
inline int MultiprocessorCount(const ExecContext& ctx, const char* op) {
  int sms = 0;
  SM_CHECK_CUDA_CALL(
      ctx, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device_ordinal()), op);
  return sms;
}

// A contiguous tensor on the context's CUDA device.
inline void CheckOnDevice(const ExecContext& ctx, const Tensor& t, const char* op,
                          const char* what) {
  SM_CHECK_MSG(t.device() == Device::kCUDA && t.is_contiguous(), op, " ", what,
               " needs a contiguous CUDA tensor, got ", t.DebugString(), " (context on cuda:",
               ctx.device_ordinal(), ")");
}

// CheckOnDevice for the ops that take token-strided head vectors: t on the
// context's CUDA device, contiguous or head rows (core/head_rows.h), and
// its layout.
inline HeadRows CheckHeadRowsOnDevice(const ExecContext& ctx, const Tensor& t, const char* op,
                                      const char* what) {
  SM_CHECK_MSG(t.device() == Device::kCUDA, op, " ", what, " needs a CUDA tensor, got ",
               t.DebugString(), " (context on cuda:", ctx.device_ordinal(), ")");
  return CheckHeadRows(t, op, what);
}

// ---------------------------------------------------------------- reductions

// Sum over the 32 lanes of a warp (every lane gets it); a fixed butterfly,
// so the same inputs give the same bits.
template <typename A>
__device__ __forceinline__ A WarpSum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result
// is valid in thread 0. Fixed order: deterministic. Every thread must call
// it, at most once per kernel (its shared scratch is not reset).
template <typename A>
__device__ A BlockSum(A v) {
  __shared__ A warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = WarpSum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = 0;
  if (warp == 0) {
    total = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : A(0);
    total = WarpSum(total);
  }
  return total;
}

}  // namespace scalemoe::cuda
