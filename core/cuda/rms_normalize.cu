// RmsNormalize and its backward on the GPU, the contract of core/ops.h
// (core/cpu/rms_normalize.cc is the reference):
//   n = x · rstd, rstd = 1 / sqrt(mean(x²) + eps)       (per row of the last dim)
//   d_x = rstd · (d_n − n · mean(d_n ⊙ n))             (overwritten)
// f32 and f64 as the CPU (rstd in x's dtype), and bf16 with an f32 rstd
// (the statistic is not rounded to bf16). f32 math for f32 and bf16, f64
// for f64. A warp per row for short rows, a block per row for long ones;
// each row's sum is a fixed butterfly (deterministic). x may alias n, and
// d_x may alias d_n or n: a row is read whole before it is written.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

// rstd's element type: x's, except f32 for bf16.
template <typename T>
struct StatOf {
  using type = T;
};
template <>
struct StatOf<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using Stat = typename StatOf<T>::type;

// ---------------------------------------------------------------- kernels

// Rows of d elements, G threads per row (32: a warp; else the whole block),
// V elements per access (d % V == 0 and every row 16-byte aligned when V > 1).
template <int G>
__device__ __forceinline__ void RowsOfGroup(int64_t& first, int64_t& stride, int& lane) {
  const int per_block = static_cast<int>(blockDim.x) / G;
  first = static_cast<int64_t>(blockIdx.x) * per_block + threadIdx.x / G;
  stride = static_cast<int64_t>(gridDim.x) * per_block;
  lane = static_cast<int>(threadIdx.x % G);
}

template <typename T, int G, int V>
__global__ void RmsNormalizeKernel(int64_t rows, int64_t d, double eps, const T* x, T* n,
                                   Stat<T>* rstd) {
  using A = Acc<T>;
  int64_t first, stride;
  int lane;
  RowsOfGroup<G>(first, stride, lane);
  for (int64_t r = first; r < rows; r += stride) {  // uniform over the group
    const T* xr = x + r * d;
    A sq = 0;
    for (int64_t j = static_cast<int64_t>(lane) * V; j < d; j += G * V) {
      A v[V];
      LoadPack<V>(xr, j, V, v);
#pragma unroll
      for (int k = 0; k < V; ++k) sq += v[k] * v[k];
    }
    sq = GroupAllReduce<G>(sq, SumOp{});
    const A s = A(1) / sqrt(sq / static_cast<A>(d) + static_cast<A>(eps));
    if (lane == 0) rstd[r] = static_cast<Stat<T>>(s);
    T* nr = n + r * d;
    for (int64_t j = static_cast<int64_t>(lane) * V; j < d; j += G * V) {
      A v[V];
      LoadPack<V>(xr, j, V, v);
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] *= s;
      StorePack<V>(nr, j, V, v);
    }
  }
}

template <typename T, int G, int V>
__global__ void RmsNormalizeBackwardKernel(int64_t rows, int64_t d, const T* n, const Stat<T>* rstd,
                                           const T* d_n, T* d_x) {
  using A = Acc<T>;
  int64_t first, stride;
  int lane;
  RowsOfGroup<G>(first, stride, lane);
  for (int64_t r = first; r < rows; r += stride) {
    const T* nr = n + r * d;
    const T* gr = d_n + r * d;
    A dot = 0;
    for (int64_t j = static_cast<int64_t>(lane) * V; j < d; j += G * V) {
      A nv[V], gv[V];
      LoadPack<V>(nr, j, V, nv);
      LoadPack<V>(gr, j, V, gv);
#pragma unroll
      for (int k = 0; k < V; ++k) dot += gv[k] * nv[k];
    }
    dot = GroupAllReduce<G>(dot, SumOp{});
    const A mean = dot / static_cast<A>(d);
    const A s = static_cast<A>(rstd[r]);
    T* out = d_x + r * d;
    for (int64_t j = static_cast<int64_t>(lane) * V; j < d; j += G * V) {
      A nv[V], gv[V];
      LoadPack<V>(nr, j, V, nv);
      LoadPack<V>(gr, j, V, gv);
#pragma unroll
      for (int k = 0; k < V; ++k) gv[k] = s * (gv[k] - nv[k] * mean);
      StorePack<V>(out, j, V, gv);
    }
  }
}

// ---------------------------------------------------------------- launchers

// Rows up to this long get a warp each; longer ones a block of kThreads.
constexpr int64_t kWarpRowMax = 1024;

// Rows of x viewed as [R, D], after checking x, the row statistic and the
// other same-shaped tensors.
int64_t CheckRows(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& rstd,
                  std::initializer_list<std::pair<const char*, const Tensor*>> like_x) {
  CheckOnDevice(ctx, x, op, "x");
  SM_CHECK_MSG(x.ndim() >= 1 && (x.dtype() == DType::kF32 || x.dtype() == DType::kF64 ||
                                 x.dtype() == DType::kBF16),
               op, " x must be f32, f64 or bf16 rows, got ", x.DebugString());
  const int64_t rows = x.dim(-1) == 0 ? 0 : x.numel() / x.dim(-1);
  const DType stat = x.dtype() == DType::kBF16 ? DType::kF32 : x.dtype();
  CheckOnDevice(ctx, rstd, op, "rstd");
  SM_CHECK_MSG(rstd.numel() == rows && rstd.dtype() == stat, op, " rstd ", rstd.DebugString(),
               " for x ", x.DebugString(), " (want ", rows, " ", DTypeName(stat), ")");
  for (const auto& [what, t] : like_x) {
    CheckOnDevice(ctx, *t, op, what);
    SM_CHECK_MSG(t->numel() == x.numel() && t->dtype() == x.dtype(), op, " ", what, " ",
                 t->DebugString(), " for x ", x.DebugString());
  }
  return rows;
}

// Launches kernel<T, G, V> for rows of d elements: G a warp or a block, V a
// 16-byte pack where the rows allow it.
template <typename T, typename Launch>
void LaunchRows(int64_t rows, int64_t d, std::initializer_list<const void*> ptrs, Launch&& launch) {
  constexpr int kV = kPack<T>;
  const bool packed = d % kV == 0 && AllAligned16(ptrs);
  if (d <= kWarpRowMax) {
    const unsigned blocks = Blocks(rows * 32);
    if (packed) {
      launch(std::integral_constant<int, 32>{}, std::integral_constant<int, kV>{}, blocks);
    } else {
      launch(std::integral_constant<int, 32>{}, std::integral_constant<int, 1>{}, blocks);
    }
  } else {
    const unsigned blocks = RowBlocks(rows);
    if (packed) {
      launch(std::integral_constant<int, kThreads>{}, std::integral_constant<int, kV>{}, blocks);
    } else {
      launch(std::integral_constant<int, kThreads>{}, std::integral_constant<int, 1>{}, blocks);
    }
  }
}

}  // namespace

void RmsNormalize(const ExecContext& ctx, const Tensor& x, double eps, const Tensor& n,
                  const Tensor& rstd) {
  const int64_t rows = CheckRows(ctx, "RmsNormalize", x, rstd, {{"n", &n}});
  if (rows == 0) return;
  const int64_t d = x.dim(-1);
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xs = Ptr<const T>(x);
    T* ns = Ptr<T>(n);
    Stat<T>* rs = Ptr<Stat<T>>(rstd);
    LaunchRows<T>(rows, d, {xs, ns}, [&](auto g, auto v, unsigned blocks) {
      RmsNormalizeKernel<T, decltype(g)::value, decltype(v)::value>
          <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, eps, xs, ns, rs);
    });
  });
  SM_CHECK_LAUNCH(ctx, "RmsNormalize", "RmsNormalizeKernel");
}

void RmsNormalizeBackward(const ExecContext& ctx, const Tensor& n, const Tensor& rstd,
                          const Tensor& d_n, const Tensor& d_x) {
  const int64_t rows =
      CheckRows(ctx, "RmsNormalizeBackward", n, rstd, {{"d_n", &d_n}, {"d_x", &d_x}});
  if (rows == 0) return;
  const int64_t d = n.dim(-1);
  DispatchFloat(n, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* ns = Ptr<const T>(n);
    const Stat<T>* rs = Ptr<const Stat<T>>(rstd);
    const T* gs = Ptr<const T>(d_n);
    T* out = Ptr<T>(d_x);
    LaunchRows<T>(rows, d, {ns, gs, out}, [&](auto g, auto v, unsigned blocks) {
      RmsNormalizeBackwardKernel<T, decltype(g)::value, decltype(v)::value>
          <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, ns, rs, gs, out);
    });
  });
  SM_CHECK_LAUNCH(ctx, "RmsNormalizeBackward", "RmsNormalizeBackwardKernel");
}

}  // namespace scalemoe::cuda
