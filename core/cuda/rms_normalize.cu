// RmsNormalize and its backward on the GPU, the contract of core/ops.h
// (core/cpu/rms_normalize.cc is the reference):
//   n = x · rstd, rstd = 1 / sqrt(mean(x²) + eps)       (per row of the last dim)
//   d_x = rstd · (d_n − n · mean(d_n ⊙ n))             (overwritten)
// and the two with a residual add fused in, each one kernel on the same
// body as the unfused op's (template flag kAdd), so the same bits as the
// two-op sequences: AddRmsNormalize (x += residual, then RmsNormalize of the
// sum) and RmsNormalizeBackwardAdd (d_x = d_res + the backward).
// f32 and f64 as the CPU (rstd in x's dtype), and bf16 with an f32 rstd
// (the statistic is not rounded to bf16). f32 math for f32 and bf16, f64
// for f64. A warp per row for short rows, a block per row for long ones;
// each row's sum is a fixed butterfly (deterministic). x may alias n, and
// d_x may alias d_n or n (and d_res): a thread reads each of its elements
// before it writes it, and no thread reads another's.
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

// a + b rounded once: never contracted into an FMA with the product that
// made a (the two-op sequence rounds that product on its own).
__device__ __forceinline__ float AddRn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double AddRn(double a, double b) { return __dadd_rn(a, b); }

// v rounded to T and back (a no-op for f32 and f64): what a store to T and
// a load would give.
template <typename T>
__device__ __forceinline__ Acc<T> RoundTo(Acc<T> v) {
  return ToAcc(FromAcc<T>(v));
}

// out = p[i..i+V) one element at a time (a residual that is not 16-byte
// aligned while the rows are: the row layout stays RmsNormalize's).
template <int V, typename T>
__device__ __forceinline__ void LoadPackOrElems(const T* p, int64_t i, bool packed,
                                                Acc<T> (&out)[V]) {
  if (packed) {
    LoadPack<V>(p, i, V, out);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ToAcc(p[i + k]);
  }
}

// Packs of a row that each thread keeps in registers between the forward's
// two passes (32 registers' worth): rows up to G·V·C elements are read once
// (f32 and bf16: every warp-path row and block-path rows up to 8192; f64
// rows up to 512); the rest of a longer row is read again from x.
template <typename T, int V>
constexpr int kCachedPacks = static_cast<int>(128 / (V * sizeof(Acc<T>))) > 0
                                 ? static_cast<int>(128 / (V * sizeof(Acc<T>)))
                                 : 1;

// RmsNormalize, and with kAdd AddRmsNormalize: x = x + residual first
// (rounded to T and stored, as Axpy leaves it), then the same sum of squares
// in the same order over the same values. One body, so the two ops' row
// sums are the same bits.
template <typename T, int G, int V, bool kAdd>
__global__ void RmsNormalizeKernel(int64_t rows, int64_t d, double eps, T* x, const T* residual,
                                   bool residual_packed, T* n, Stat<T>* rstd) {
  using A = Acc<T>;
  constexpr int C = kCachedPacks<T, V>;
  int64_t first, stride;
  int lane;
  RowsOfGroup<G>(first, stride, lane);
  for (int64_t r = first; r < rows; r += stride) {  // uniform over the group
    T* xr = x + r * d;
    // The pack of the row at j: x's (with kAdd, x + residual, stored back).
    auto load = [&](int64_t j, A(&v)[V]) {
      LoadPack<V>(xr, j, V, v);
      if constexpr (kAdd) {
        A rv[V];
        LoadPackOrElems<V>(residual + r * d, j, residual_packed, rv);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = RoundTo<T>(AddRn(v[k], rv[k]));
        StorePack<V>(xr, j, V, v);
      }
    };
    A cache[C][V];
    A sq = 0;
#pragma unroll
    for (int p = 0; p < C; ++p) {  // j ascending, as the loop below continues
      const int64_t j = (static_cast<int64_t>(p) * G + lane) * V;
      if (j < d) {
        load(j, cache[p]);
#pragma unroll
        for (int k = 0; k < V; ++k) sq += cache[p][k] * cache[p][k];
      }
    }
    for (int64_t j = (static_cast<int64_t>(C) * G + lane) * V; j < d; j += G * V) {
      A v[V];
      load(j, v);
#pragma unroll
      for (int k = 0; k < V; ++k) sq += v[k] * v[k];
    }
    sq = GroupAllReduce<G>(sq, SumOp{});
    const A s = A(1) / sqrt(sq / static_cast<A>(d) + static_cast<A>(eps));
    if (lane == 0) rstd[r] = static_cast<Stat<T>>(s);
    T* nr = n + r * d;
#pragma unroll
    for (int p = 0; p < C; ++p) {
      const int64_t j = (static_cast<int64_t>(p) * G + lane) * V;
      if (j < d) {
#pragma unroll
        for (int k = 0; k < V; ++k) cache[p][k] *= s;
        StorePack<V>(nr, j, V, cache[p]);
      }
    }
    for (int64_t j = (static_cast<int64_t>(C) * G + lane) * V; j < d; j += G * V) {
      A v[V];
      LoadPack<V>(xr, j, V, v);  // this thread's own store, with kAdd
#pragma unroll
      for (int k = 0; k < V; ++k) v[k] *= s;
      StorePack<V>(nr, j, V, v);
    }
  }
}

// RmsNormalizeBackward, and with kAdd RmsNormalizeBackwardAdd: d_res added
// to the backward's result rounded to T (as the Axpy after it would).
template <typename T, int G, int V, bool kAdd>
__global__ void RmsNormalizeBackwardKernel(int64_t rows, int64_t d, const T* n, const Stat<T>* rstd,
                                           const T* d_n, const T* d_res, bool d_res_packed,
                                           T* d_x) {
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
      if constexpr (kAdd) {
        A rv[V];
        LoadPackOrElems<V>(d_res + r * d, j, d_res_packed, rv);
#pragma unroll
        for (int k = 0; k < V; ++k) gv[k] = AddRn(RoundTo<T>(gv[k]), rv[k]);
      }
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
  const DType stat = StatDType(x.dtype());
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

// RmsNormalize (residual undefined) or AddRmsNormalize: the row layout is
// chosen from x and n alone, as RmsNormalize's, so the fused op sums in the
// same order as the RmsNormalize after an Axpy.
void Normalize(const ExecContext& ctx, const char* op, const Tensor& residual, const Tensor& x,
               double eps, const Tensor& n, const Tensor& rstd, int64_t rows) {
  const int64_t d = x.dim(-1);
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* xs = Ptr<T>(x);
    const T* res = Ptr<const T>(residual);
    const bool res_packed = Aligned16(res);
    T* ns = Ptr<T>(n);
    Stat<T>* rs = Ptr<Stat<T>>(rstd);
    LaunchRows<T>(rows, d, {xs, ns}, [&](auto g, auto v, unsigned blocks) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      if (res != nullptr) {
        RmsNormalizeKernel<T, G, V, true>
            <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, eps, xs, res, res_packed, ns, rs);
      } else {
        RmsNormalizeKernel<T, G, V, false>
            <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, eps, xs, res, res_packed, ns, rs);
      }
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "RmsNormalizeKernel");
}

// RmsNormalizeBackward (d_res undefined) or RmsNormalizeBackwardAdd, the
// layout from n, d_n and d_x as RmsNormalizeBackward's.
void NormalizeBackward(const ExecContext& ctx, const char* op, const Tensor& n, const Tensor& rstd,
                       const Tensor& d_n, const Tensor& d_res, const Tensor& d_x, int64_t rows) {
  const int64_t d = n.dim(-1);
  DispatchFloat(n, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* ns = Ptr<const T>(n);
    const Stat<T>* rs = Ptr<const Stat<T>>(rstd);
    const T* gs = Ptr<const T>(d_n);
    const T* res = Ptr<const T>(d_res);
    const bool res_packed = Aligned16(res);
    T* out = Ptr<T>(d_x);
    LaunchRows<T>(rows, d, {ns, gs, out}, [&](auto g, auto v, unsigned blocks) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      if (res != nullptr) {
        RmsNormalizeBackwardKernel<T, G, V, true>
            <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, ns, rs, gs, res, res_packed, out);
      } else {
        RmsNormalizeBackwardKernel<T, G, V, false>
            <<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, ns, rs, gs, res, res_packed, out);
      }
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "RmsNormalizeBackwardKernel");
}

}  // namespace

void RmsNormalize(const ExecContext& ctx, const Tensor& x, double eps, const Tensor& n,
                  const Tensor& rstd) {
  const int64_t rows = CheckRows(ctx, "RmsNormalize", x, rstd, {{"n", &n}});
  if (rows == 0) return;
  Normalize(ctx, "RmsNormalize", Tensor(), x, eps, n, rstd, rows);
}

void AddRmsNormalize(const ExecContext& ctx, const Tensor& residual, const Tensor& x, double eps,
                     const Tensor& n, const Tensor& rstd) {
  const char* op = "AddRmsNormalize";
  const int64_t rows = CheckRows(ctx, op, x, rstd, {{"residual", &residual}, {"n", &n}});
  CheckSameOrDisjoint(op, residual, x);
  CheckSameOrDisjoint(op, residual, n);
  CheckSameOrDisjoint(op, x, n);
  if (rows == 0) return;
  Normalize(ctx, op, residual, x, eps, n, rstd, rows);
}

void RmsNormalizeBackward(const ExecContext& ctx, const Tensor& n, const Tensor& rstd,
                          const Tensor& d_n, const Tensor& d_x) {
  const char* op = "RmsNormalizeBackward";
  const int64_t rows = CheckRows(ctx, op, n, rstd, {{"d_n", &d_n}, {"d_x", &d_x}});
  if (rows == 0) return;
  NormalizeBackward(ctx, op, n, rstd, d_n, Tensor(), d_x, rows);
}

void RmsNormalizeBackwardAdd(const ExecContext& ctx, const Tensor& n, const Tensor& rstd,
                             const Tensor& d_n, const Tensor& d_res, const Tensor& d_x) {
  const char* op = "RmsNormalizeBackwardAdd";
  const int64_t rows =
      CheckRows(ctx, op, n, rstd, {{"d_n", &d_n}, {"d_res", &d_res}, {"d_x", &d_x}});
  for (const Tensor* in : {&n, &d_n, &d_res}) CheckSameOrDisjoint(op, d_x, *in);
  if (rows == 0) return;
  NormalizeBackward(ctx, op, n, rstd, d_n, d_res, d_x, rows);
}

}  // namespace scalemoe::cuda
