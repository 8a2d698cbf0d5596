// ScaledRmsNormalize and its backward on the GPU, the contract of
// core/ops.h (core/cpu/scaled_rms_normalize.cc is the reference): the
// per-head norms of DNP and QK-norm, rows of D <= 256 (64 or 128 in the
// presets: 98,304 rows of 64 per micro-batch on gpu_moe_125m), which the
// two-op sequence ran as four kernels and two dtype copies each way.
//
// A group of G = 8, 16 or 32 lanes per row (the fewest that cover a row in
// 16-byte packs), several rows per warp; each lane keeps its packs in
// registers between the row's sum and its outputs, so x (and d_y) are read
// once. Math in A = Acc<T> (f32 for f32 and bf16, f64 for f64). O, the
// type of y, d_y and d_x, is T or bf16 for f32 T (loaded in packs of the
// same element count as x's).
//
// d_gamma: each lane sums d_y·n of its columns over the rows its group
// visits in f64; the block adds its groups in order into one partial row,
// and a second kernel adds the partial rows in a fixed tree. The partition depends
// only on the shape and the packing (not on the device): the same bits on
// every run.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"
#include "core/scaled_rms_normalize_checks.h"

namespace scalemoe::cuda {
namespace {

// Row partitions of the backward's d_gamma sums (one block each, at most).
constexpr int64_t kMaxPartials = 512;
// Doubles of the backward's per-block scratch: (kThreads / G) groups × D
// columns; D <= 8·V for G = 8, 16·V for G = 16, 256 for G = 32: at most
// kThreads · 8 for every G and V.
constexpr int kScratch = kThreads * 8;

// Packs per lane: a row of up to kScaledRmsNormalizeMaxDim elements in
// packs of V over G lanes (G < 32 only when the row has at most G packs).
template <int G, int V>
constexpr int kPacksPerLane = G == 32
                                  ? (static_cast<int>(ops::kScaledRmsNormalizeMaxDim) / V + 31) / 32
                                  : 1;

// Where this thread's group sits: its lane in the group, the first row it
// visits and the stride, uniform over the warp (so every lane of a warp
// runs the same iterations, as the shuffles need).
template <int G>
struct RowWalk {
  int lane;
  int64_t first, stride;
  __device__ RowWalk() {
    constexpr int kPerWarp = 32 / G;
    const int64_t warp = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    lane = static_cast<int>(threadIdx.x % G);
    first = warp * kPerWarp + (threadIdx.x % 32) / G;
    stride = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32) * kPerWarp;
  }
};

template <typename T, typename O, int G, int V>
__global__ void ScaledRmsNormalizeKernel(int64_t rows, int64_t d, double eps, const T* x,
                                         const Acc<T>* gamma, O* y, Acc<T>* rstd) {
  using A = Acc<T>;
  constexpr int P = kPacksPerLane<G, V>;
  const RowWalk<G> w;
  // Warp-uniform bound: the last warp's groups past `rows` run with ok false.
  const int64_t warp_rows = w.first - (threadIdx.x % 32) / G;
  for (int64_t base = warp_rows; base < rows; base += w.stride) {
    const int64_t r = base + (threadIdx.x % 32) / G;
    const bool ok = r < rows;
    A v[P][V];
    A sq = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = (static_cast<int64_t>(p) * G + w.lane) * V;
      if (ok && j < d) {
        LoadPack<V>(x + r * d, j, V, v[p]);
#pragma unroll
        for (int k = 0; k < V; ++k) sq += v[p][k] * v[p][k];
      }
    }
    sq = GroupSum<G>(sq);
    if (!ok) continue;
    const A s = A(1) / sqrt(sq / static_cast<A>(d) + static_cast<A>(eps));
    if (w.lane == 0) rstd[r] = s;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = (static_cast<int64_t>(p) * G + w.lane) * V;
      if (j < d) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[p][k] = (v[p][k] * s) * gamma[j + k];
        StorePack<V>(y + r * d, j, V, v[p]);
      }
    }
  }
}

// d_x of each row it visits, and the block's d_gamma partial row
// partials[blockIdx.x, :] (f64).
template <typename T, typename O, int G, int V>
__global__ void ScaledRmsNormalizeBackwardKernel(int64_t rows, int64_t d, const T* x,
                                                 const Acc<T>* rstd, const Acc<T>* gamma,
                                                 const O* dy, O* dx, double* partials) {
  using A = Acc<T>;
  constexpr int P = kPacksPerLane<G, V>;
  __shared__ double scratch[kScratch];
  const RowWalk<G> w;
  double dg[P][V] = {};
  const int64_t warp_rows = w.first - (threadIdx.x % 32) / G;
  for (int64_t base = warp_rows; base < rows; base += w.stride) {
    const int64_t r = base + (threadIdx.x % 32) / G;
    const bool ok = r < rows;
    const A s = ok ? rstd[r] : A(0);
    A n[P][V], dn[P][V];
    A dot = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = (static_cast<int64_t>(p) * G + w.lane) * V;
      if (ok && j < d) {
        A g[V];
        LoadPack<V>(x + r * d, j, V, n[p]);
        LoadPack<V>(dy + r * d, j, V, g);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          n[p][k] *= s;
          dn[p][k] = g[k] * gamma[j + k];
          dg[p][k] += static_cast<double>(g[k] * n[p][k]);
          dot += dn[p][k] * n[p][k];
        }
      }
    }
    dot = GroupSum<G>(dot);
    if (!ok) continue;
    const A mean = dot / static_cast<A>(d);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      const int64_t j = (static_cast<int64_t>(p) * G + w.lane) * V;
      if (j < d) {
#pragma unroll
        for (int k = 0; k < V; ++k) dn[p][k] = s * (dn[p][k] - n[p][k] * mean);
        StorePack<V>(dx + r * d, j, V, dn[p]);
      }
    }
  }
  // The block's groups in order into its partial row.
  const int group = static_cast<int>(threadIdx.x / G);
  const int groups = static_cast<int>(blockDim.x / G);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t j = (static_cast<int64_t>(p) * G + w.lane) * V;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (j + k < d) scratch[group * d + j + k] = dg[p][k];
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    double acc = 0;
    for (int g = 0; g < groups; ++g) acc += scratch[g * d + j];
    partials[blockIdx.x * d + j] = acc;
  }
}

// Threads of the d_gamma finish: kFinishCols columns × kFinishSlices row
// slices, so that each warp reads 32 adjacent doubles of a partial row.
constexpr int kFinishCols = 32;
constexpr int kFinishSlices = 32;

// d_gamma[j] += Σ_b partials[b, j], rounded once. Slice s of a block sums
// rows b ≡ s (mod kFinishSlices) ascending, then slice 0 adds the slices in
// order: a fixed order that depends only on `blocks` (one thread per column
// adding all 512 rows in turn was half of the backward's time).
template <typename S>
__global__ void __launch_bounds__(kFinishCols* kFinishSlices)
    AddPartialsKernel(int64_t blocks, int64_t d, const double* partials, S* d_gamma) {
  __shared__ double slice_sums[kFinishSlices][kFinishCols];
  const int col = static_cast<int>(threadIdx.x % kFinishCols);
  const int slice = static_cast<int>(threadIdx.x / kFinishCols);
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kFinishCols + col;
  double acc = 0;
  if (j < d) {
    for (int64_t b = slice; b < blocks; b += kFinishSlices) acc += partials[b * d + j];
  }
  slice_sums[slice][col] = acc;
  __syncthreads();
  if (slice != 0 || j >= d) return;
  double total = 0;
  for (int s = 0; s < kFinishSlices; ++s) total += slice_sums[s][col];
  d_gamma[j] = static_cast<S>(static_cast<double>(d_gamma[j]) + total);
}

// ---------------------------------------------------------------- launchers

// Rows of x [R, D], every tensor on ctx's device, then the shared checks
// (core/scaled_rms_normalize_checks.h).
int64_t CheckRows(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& gamma,
                  const Tensor& rstd,
                  std::initializer_list<std::pair<const char*, const Tensor*>> io) {
  CheckOnDevice(ctx, x, op, "x");
  CheckOnDevice(ctx, gamma, op, "gamma");
  CheckOnDevice(ctx, rstd, op, "rstd");
  for (const auto& [what, t] : io) CheckOnDevice(ctx, *t, op, what);
  return ops::CheckScaledRmsNormalizeArgs(op, x, gamma, rstd, io);
}

// Calls f(Tag<T>, Tag<O>): x's type, and io's (T, or bf16 for f32 x; the
// checks above allow nothing else).
template <typename F>
void DispatchIo(const Tensor& x, const Tensor& io, F&& f) {
  if (io.dtype() != x.dtype()) {
    f(Tag<float>{}, Tag<__nv_bfloat16>{});
    return;
  }
  DispatchFloat(x, [&](auto tag) { f(tag, tag); });
}

// Blocks that give every group of G lanes a few rows (or every row a group).
unsigned GroupBlocks(int64_t rows, int g, int64_t max_blocks) {
  const int64_t groups_per_block = kThreads / g;
  const int64_t want = (rows + 4 * groups_per_block - 1) / (4 * groups_per_block);
  return static_cast<unsigned>(std::clamp<int64_t>(want, 1, max_blocks));
}

}  // namespace

void ScaledRmsNormalize(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, double eps,
                        const Tensor& y, const Tensor& rstd) {
  const char* op = "ScaledRmsNormalize";
  const int64_t rows = CheckRows(ctx, op, x, gamma, rstd, {{"y", &y}});
  if (rows == 0) return;
  const int64_t d = x.dim(-1);
  DispatchIo(x, y, [&](auto tag, auto io_tag) {
    using T = typename decltype(tag)::type;
    using O = typename decltype(io_tag)::type;
    LaunchLaneGroups<T>(d, {x.raw_data(), y.raw_data()}, [&](auto g, auto v) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      ScaledRmsNormalizeKernel<T, O, G, V>
          <<<GroupBlocks(rows, G, kMaxBlocks), kThreads, 0, Stream(ctx)>>>(
              rows, d, eps, Ptr<const T>(x), Ptr<const Acc<T>>(gamma), Ptr<O>(y),
              Ptr<Acc<T>>(rstd));
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "ScaledRmsNormalizeKernel");
}

void ScaledRmsNormalizeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                const Tensor& gamma, const Tensor& d_y, const Tensor& d_x,
                                const Tensor& d_gamma) {
  const char* op = "ScaledRmsNormalizeBackward";
  const int64_t rows = CheckRows(ctx, op, x, gamma, rstd, {{"d_y", &d_y}, {"d_x", &d_x}});
  CheckOnDevice(ctx, d_gamma, op, "d_gamma");
  SM_CHECK_MSG(d_gamma.numel() == gamma.numel() && d_gamma.dtype() == gamma.dtype(), op,
               " d_gamma ", d_gamma.DebugString(), " for gamma ", gamma.DebugString());
  if (rows == 0) return;
  const int64_t d = x.dim(-1);
  DispatchIo(x, d_y, [&](auto tag, auto io_tag) {
    using T = typename decltype(tag)::type;
    using O = typename decltype(io_tag)::type;
    using A = Acc<T>;
    LaunchLaneGroups<T>(d, {x.raw_data(), d_y.raw_data(), d_x.raw_data()}, [&](auto g, auto v) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      const unsigned blocks = GroupBlocks(rows, G, kMaxPartials);
      const Tensor partials = ctx.Empty({static_cast<int64_t>(blocks), d}, DType::kF64);
      ScaledRmsNormalizeBackwardKernel<T, O, G, V><<<blocks, kThreads, 0, Stream(ctx)>>>(
          rows, d, Ptr<const T>(x), Ptr<const A>(rstd), Ptr<const A>(gamma), Ptr<const O>(d_y),
          Ptr<O>(d_x), Ptr<double>(partials));
      SM_CHECK_LAUNCH(ctx, op, "ScaledRmsNormalizeBackwardKernel");
      const auto finish_blocks = static_cast<unsigned>((d + kFinishCols - 1) / kFinishCols);
      AddPartialsKernel<A><<<finish_blocks, kFinishCols * kFinishSlices, 0, Stream(ctx)>>>(
          blocks, d, Ptr<const double>(partials), Ptr<A>(d_gamma));
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "AddPartialsKernel");
}

}  // namespace scalemoe::cuda
