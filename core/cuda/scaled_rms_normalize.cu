// ScaledRmsNormalize and its backward on the GPU, the contract of
// core/ops.h (core/cpu/scaled_rms_normalize.cc is the reference): the
// per-head norms of DNP and QK-norm, rows of D <= 256 (64 or 128 in the
// presets: 98,304 rows of 64 per micro-batch on gpu_moe_125m), which the
// two-op sequence ran as four kernels and two dtype copies each way.
//
// A group of G = 8, 16 or 32 lanes per row (the fewest that cover a row in
// 16-byte packs), several rows per warp and several rows in flight per
// group; each lane keeps its packs in registers between the row's sum and
// its outputs, so x (and d_y) are read once, and its γ columns for the
// whole kernel. Math in A = Acc<T> (f32 for f32 and bf16, f64 for f64). O, the
// type of y, d_y and d_x, is T or bf16 for f32 T (loaded in packs of the
// same element count as x's).
//
// ScaledRmsNormalizeRope (the per-head q/k norms, which RoPE rotates next)
// rotates in the same kernel: a lane's pack pairs with the pack D/2 further
// on, held by another lane of its group (a shuffle), the cos/sin from
// RopeTable's table; rows whose lanes hold several packs, or tensors off a
// 16-byte boundary, take a second pass (RotateRowsKernel) instead.
//
// x, and the backward's d_x, may be token-strided (core/head_rows.h: q or
// k a slice of the q|k|v projection's output): row r = token·H + head at
// its RowStarts; y, rstd, d_y (and the rotated d_y's scratch) are
// contiguous. Only addresses differ from contiguous tensors: the same bits
// where the packing is the same.
//
// d_gamma: each lane sums d_y·n of its columns over the rows its group
// visits in f64; the block adds its groups in order into one partial row,
// and a second kernel adds the partial rows in a fixed tree. The partition depends
// only on the shape and the packing (not on the device): the same bits on
// every run.
#include <cstdint>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/rope_pair.cuh"
#include "core/cuda/row_reduce.cuh"
#include "core/head_rows.h"
#include "core/scaled_rms_normalize_checks.h"

namespace scalemoe::cuda {
namespace {

// Rows each group of G lanes has in flight: a lane loads its packs of R
// rows before the first row's sum. With one row (one 16-byte load a lane
// outstanding) the forward moved 44 % of the DRAM bandwidth. Fewer with
// G = 32, whose lanes hold the packs of rows up to 256 long, and in the
// backward with packs of 8 (bf16 x), to stay within its 64 registers.
template <int G>
constexpr int kForwardRows = G == 32 ? 2 : 4;
template <int G, int V>
constexpr int kBackwardRows = G == 32 || V > 4 ? 1 : 2;
// Row partitions of the backward's d_gamma sums (one block each, at most):
// 4 blocks on each of an H100's or H200's 132 SMs, one wave
// (__launch_bounds__ holds the kernel to 64 registers so that 4 fit; 2 and
// 128 registers with G = 32). A constant, so that the partition, and with
// it d_gamma's bits, do not depend on the device.
constexpr int64_t kMaxPartials = 528;
template <int G>
constexpr int kBackwardBlocksPerSm = G == 32 ? 2 : 4;
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

// Where row r of a tensor of rows of d starts (core/head_rows.h): token
// r / heads at token · stride, head r % heads at head · d. A contiguous
// tensor (and an [R, D] one) is heads = 1: one multiply. Else r < 2^31
// (the launcher checks) is divided by a multiply and a shift (magic and
// shift from MakeRowStarts; Granlund and Montgomery's round-up method,
// exact for r, heads < 2^31): a division there cost the backward kernels
// registers and spills (ptxas -v).
struct RowStarts {
  int64_t stride = 0, d = 0;
  uint32_t heads = 1, magic = 0, shift = 0;
  __device__ __forceinline__ int64_t operator()(int64_t r) const {
    if (heads == 1) return r * stride;
    const auto n = static_cast<uint32_t>(r);
    const uint32_t token = (__umulhi(n, magic) + n) >> shift;
    return token * stride + static_cast<int64_t>(n - token * heads) * d;
  }
};

RowStarts MakeRowStarts(int64_t heads, int64_t stride, int64_t d) {
  RowStarts s{stride, d, static_cast<uint32_t>(std::max<int64_t>(heads, 1))};  // 0: no rows
  while ((uint64_t{1} << s.shift) < s.heads) ++s.shift;
  constexpr uint64_t kOne = 1;
  s.magic = static_cast<uint32_t>(((kOne << 32) * ((kOne << s.shift) - s.heads)) / s.heads + 1);
  return s;
}

// Where this thread's group sits: its lane in the group and the rows it
// visits. A warp takes R · (32 / G) adjacent rows an iteration, slot i
// being rows base + i·(32 / G) + (the group within the warp), so that each
// slot's loads cover adjacent rows; base is uniform over the warp (every
// lane of a warp runs the same iterations, as the shuffles need).
template <int G, int R>
struct RowWalk {
  static constexpr int kPerWarp = 32 / G;
  int lane, sub;
  int64_t first, stride;
  __device__ RowWalk() {
    const int64_t warp = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    lane = static_cast<int>(threadIdx.x % G);
    sub = static_cast<int>((threadIdx.x % 32) / G);
    first = warp * kPerWarp * R;
    stride = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32) * kPerWarp * R;
  }
  __device__ int64_t Row(int64_t base, int i) const { return base + i * kPerWarp + sub; }
  // First column of this lane's pack p.
  template <int V>
  __device__ int64_t Col(int p) const {
    return (static_cast<int64_t>(p) * G + lane) * V;
  }
};

// This lane's γ columns (0 past d), loaded once: they are the same in every
// row it visits.
template <int G, int V, int P, typename A, typename Walk>
__device__ __forceinline__ void LoadGamma(const Walk& w, int64_t d, const A* gamma, A (&g)[P][V]) {
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t j = w.template Col<V>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) g[p][k] = j + k < d ? gamma[j + k] : A(0);
  }
}

// What a kernel that rotates its rows (ScaledRmsNormalizeRope) needs: the
// rope table [2, table_t, d/2] and the [B, T, H, D] shape that gives row r
// its position (r / H) % T.
template <typename A>
struct RopeRows {
  const A* table = nullptr;
  int64_t t_dim = 1, h_dim = 1, table_t = 0;
};

template <typename A>
RopeRows<A> MakeRopeRows(const Tensor& x, const Tensor& table) {
  return {Ptr<const A>(table), x.dim(1), x.dim(2), table.dim(1)};
}

// Whether a group of G lanes in packs of V rotates its rows in registers:
// one pack a lane (d / V <= G) and D/2 a multiple of V, so that a lane's
// pack pairs with the pack of the lane D/(2V) away in its group.
template <int G, int V>
bool RotatesInRegisters(int64_t d) {
  return V > 1 && (d / 2) % V == 0 && d / V <= G;
}

// launch(std::true_type{}) where `rotate`, else launch(std::false_type{}):
// one-element packs never rotate in registers, so no rotating kernel is
// made for them.
template <int V, typename Launch>
void LaunchRotatingIf(bool rotate, Launch&& launch) {
  if constexpr (V > 1) {
    if (rotate) {
      launch(std::true_type{});
      return;
    }
  }
  launch(std::false_type{});
}

// Rotates this lane's pack v of row r (RotatesInRegisters) by +angle (sign
// 1) or −angle (sign −1), the bits of Rope / RopeBackward on the same
// values. Every lane of the warp calls it (the shuffle); a lane past the
// row (j >= d) or a row past the end (ok false) gets values it will not
// store.
template <int G, int V, typename A>
__device__ __forceinline__ void RotatePack(const RopeRows<A>& rope, int lane, int64_t d, int64_t r,
                                           bool ok, bool forward, A (&v)[V]) {
  const int half_packs = static_cast<int>(d / (2 * V));
  const bool first = lane < half_packs;
  A other[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    other[k] = __shfl_sync(0xffffffffu, v[k], first ? lane + half_packs : lane - half_packs, G);
  }
  if (lane >= 2 * half_packs) return;
  const int64_t half = d / 2;
  const int64_t pos = ok ? (r / rope.h_dim) % rope.t_dim : 0;
  const int64_t col = static_cast<int64_t>(first ? lane : lane - half_packs) * V;
  A c[V], s[V];
  LoadPack<V>(rope.table, pos * half + col, V, c);
  LoadPack<V>(rope.table, (rope.table_t + pos) * half + col, V, s);
#pragma unroll
  for (int k = 0; k < V; ++k)
    v[k] = RotateHalf(first, v[k], other[k], c[k], forward ? s[k] : -s[k]);
}

// x [rows, 2·half] rotated into out (may alias x) by the table, one thread a
// pair: for the rows whose lanes cannot rotate in registers. The bits of
// Rope (forward) or RopeBackward.
template <typename O>
__global__ void RotateRowsKernel(int64_t pairs, int64_t half, RopeRows<Acc<O>> rope, bool forward,
                                 const O* x, O* out) {
  using A = Acc<O>;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < pairs;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / half, i = e - row * half;
    const int64_t pos = (row / rope.h_dim) % rope.t_dim;
    const A c = rope.table[pos * half + i], s = rope.table[(rope.table_t + pos) * half + i];
    const int64_t at = row * 2 * half + i;
    A o1, o2;
    RotatePair(ToAcc(x[at]), ToAcc(x[at + half]), c, forward ? s : -s, o1, o2);
    out[at] = FromAcc<O>(o1);
    out[at + half] = FromAcc<O>(o2);
  }
}

// kRope: y rotated by rope (RotatesInRegisters), after one rounding to O
// (the bits of the norm, then Rope on its stored output).
template <typename T, typename O, int G, int V, bool kRope>
__global__ void __launch_bounds__(kThreads)
    ScaledRmsNormalizeKernel(int64_t rows, int64_t d, double eps, const T* x, RowStarts x_rows,
                             const Acc<T>* gamma, O* y, Acc<T>* rstd, RopeRows<Acc<T>> rope) {
  using A = Acc<T>;
  constexpr int P = kPacksPerLane<G, V>, kRows = kForwardRows<G>;
  const RowWalk<G, kRows> w;
  A g[P][V];
  LoadGamma<G, V, P>(w, d, gamma, g);
  for (int64_t base = w.first; base < rows; base += w.stride) {
    A v[kRows][P][V] = {};
    A sq[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = w.Row(base, i);
      const T* x_row = x + x_rows(r);
      sq[i] = 0;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t j = w.template Col<V>(p);
        if (r < rows && j < d) {
          LoadPack<V>(x_row, j, V, v[i][p]);
#pragma unroll
          for (int k = 0; k < V; ++k) sq[i] += v[i][p][k] * v[i][p][k];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) sq[i] = GroupSum<G>(sq[i]);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = w.Row(base, i);
      const bool ok = r < rows;
      const A s = A(1) / sqrt(sq[i] / static_cast<A>(d) + static_cast<A>(eps));
      if (ok && w.lane == 0) rstd[r] = s;
#pragma unroll
      for (int p = 0; p < P; ++p) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[i][p][k] = (v[i][p][k] * s) * g[p][k];
      }
      if constexpr (kRope) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[i][0][k] = ToAcc(FromAcc<O>(v[i][0][k]));
        RotatePack<G, V>(rope, w.lane, d, r, ok, true, v[i][0]);
      }
      if (!ok) continue;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t j = w.template Col<V>(p);
        if (j < d) StorePack<V>(y + r * d, j, V, v[i][p]);
      }
    }
  }
}

// d_x of each row it visits, and the block's d_gamma partial row
// partials[blockIdx.x, :] (f64).
// kRope: d_y rotated back by rope (RotatesInRegisters) and rounded to O
// first (the bits of RopeBackward, then this backward on its output).
template <typename T, typename O, int G, int V, bool kRope>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSm<G>)
    ScaledRmsNormalizeBackwardKernel(int64_t rows, int64_t d, const T* x, RowStarts x_rows,
                                     const Acc<T>* rstd, const Acc<T>* gamma, const O* dy, O* dx,
                                     RowStarts dx_rows, double* partials, RopeRows<Acc<T>> rope) {
  using A = Acc<T>;
  constexpr int P = kPacksPerLane<G, V>, kRows = kBackwardRows<G, V>;
  __shared__ double scratch[kScratch];
  const RowWalk<G, kRows> w;
  A g[P][V];
  LoadGamma<G, V, P>(w, d, gamma, g);
  double dg[P][V] = {};
  for (int64_t base = w.first; base < rows; base += w.stride) {
    A n[kRows][P][V], dn[kRows][P][V] = {}, s[kRows], dot[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = w.Row(base, i);
      s[i] = r < rows ? rstd[r] : A(0);
      const T* x_row = x + x_rows(r);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t j = w.template Col<V>(p);
        if (r < rows && j < d) {
          LoadPack<V>(x_row, j, V, n[i][p]);
          LoadPack<V>(dy + r * d, j, V, dn[i][p]);
        }
      }
    }
    if constexpr (kRope) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t r = w.Row(base, i);
        RotatePack<G, V>(rope, w.lane, d, r, r < rows, false, dn[i][0]);
#pragma unroll
        for (int k = 0; k < V; ++k) dn[i][0][k] = ToAcc(FromAcc<O>(dn[i][0][k]));
      }
    }
    // Rows in order, as one row in flight summed them (dg's order per lane).
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = w.Row(base, i);
      dot[i] = 0;
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t j = w.template Col<V>(p);
        if (r < rows && j < d) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            n[i][p][k] *= s[i];
            const A gy = dn[i][p][k];
            dn[i][p][k] = gy * g[p][k];
            dg[p][k] += static_cast<double>(gy * n[i][p][k]);
            dot[i] += dn[i][p][k] * n[i][p][k];
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRows; ++i) dot[i] = GroupSum<G>(dot[i]);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = w.Row(base, i);
      if (r >= rows) continue;
      const A mean = dot[i] / static_cast<A>(d);
      O* dx_row = dx + dx_rows(r);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t j = w.template Col<V>(p);
        if (j < d) {
#pragma unroll
          for (int k = 0; k < V; ++k) dn[i][p][k] = s[i] * (dn[i][p][k] - n[i][p][k] * mean);
          StorePack<V>(dx_row, j, V, dn[i][p]);
        }
      }
    }
  }
  // The block's groups in order into its partial row.
  const int group = static_cast<int>(threadIdx.x / G);
  const int groups = static_cast<int>(blockDim.x / G);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int64_t j = w.template Col<V>(p);
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

// Where t's rows of d start, t on ctx's device: contiguous (any shape), or
// head rows of d (core/head_rows.h; CheckOnDevice would ask for a
// contiguous tensor).
RowStarts CheckRowStarts(const ExecContext& ctx, const char* op, const Tensor& t, int64_t d,
                         const char* what) {
  if (t.is_contiguous()) {
    CheckOnDevice(ctx, t, op, what);
    return MakeRowStarts(1, d, d);
  }
  const HeadRows rows = CheckHeadRowsOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(rows.dim == d, op, " ", what, " ", t.DebugString(), " needs rows of ", d);
  SM_CHECK_MSG(rows.heads == 1 || rows.rows() <= INT32_MAX, op, " token-strided ", what, " ",
               t.DebugString(), " has more than 2^31 - 1 rows");
  return MakeRowStarts(rows.heads, rows.stride, d);
}

// The start of t's second token (its rows' starts are t's start plus
// multiples of d and of this): with the tensor's start and d, what decides
// whether every row starts on a 16-byte pack (LaunchLaneGroups' pointers).
// An address only, never read (past the end where t has one token).
const void* SecondToken(const Tensor& t, const RowStarts& rows) {
  return reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(t.raw_data()) +
                                       rows.stride * DTypeSize(t.dtype()));
}

// Rows of x [R, D], every tensor on ctx's device, then the shared checks
// (core/scaled_rms_normalize_checks.h). x and `strided` (one of io: the
// backward's d_x) may be head rows, the other io tensors are contiguous.
int64_t CheckRows(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& gamma,
                  const Tensor& rstd,
                  std::initializer_list<std::pair<const char*, const Tensor*>> io,
                  const Tensor* strided = nullptr) {
  const int64_t d = x.ndim() >= 1 ? x.dim(-1) : 0;
  CheckRowStarts(ctx, op, x, d, "x");
  CheckOnDevice(ctx, gamma, op, "gamma");
  CheckOnDevice(ctx, rstd, op, "rstd");
  for (const auto& [what, t] : io) {
    if (t == strided) {
      CheckRowStarts(ctx, op, *t, d, what);
    } else {
      CheckOnDevice(ctx, *t, op, what);
    }
  }
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

// Blocks that give every group of G lanes at least one iteration of R rows,
// at most max_blocks.
unsigned GroupBlocks(int64_t rows, int g, int r, int64_t max_blocks) {
  const int64_t rows_per_block = kThreads / g * r;
  const int64_t want = (rows + rows_per_block - 1) / rows_per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(want, 1, max_blocks));
}

// As many blocks of `kernel` as the device holds at once (the forward's rows
// are independent: any grid gives the same bits, and one wave leaves no
// partly filled second one).
template <typename Kernel>
int64_t ResidentBlocks(const ExecContext& ctx, const char* op, Kernel kernel) {
  const int sms = MultiprocessorCount(ctx, op);
  int per_sm = 0;
  SM_CHECK_CUDA_CALL(
      ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0), op);
  return std::max<int64_t>(int64_t{sms} * per_sm, 1);
}

// x [rows, d] rotated into out by rope_table (RotateRowsKernel).
void RotateRows(const ExecContext& ctx, const char* op, const Tensor& x4, const Tensor& table,
                bool forward, const Tensor& x, const Tensor& out) {
  const int64_t pairs = x.numel() / 2, half = x.dim(-1) / 2;
  DispatchFloat(x, [&](auto tag) {
    using O = typename decltype(tag)::type;
    RotateRowsKernel<O><<<Blocks(pairs), kThreads, 0, Stream(ctx)>>>(
        pairs, half, MakeRopeRows<Acc<O>>(x4, table), forward, Ptr<const O>(x), Ptr<O>(out));
  });
  SM_CHECK_LAUNCH(ctx, op, "RotateRowsKernel");
}

// ScaledRmsNormalize, then (rope_table non-null) the rotation: in the same
// kernel where its lanes can (RotatesInRegisters), else by RotateRows on y.
void RunForward(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& gamma,
                double eps, const Tensor* rope_table, const Tensor& y, const Tensor& rstd) {
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const RowStarts x_rows = CheckRowStarts(ctx, op, x, d, "x");
  bool rotated = rope_table == nullptr;
  DispatchIo(x, y, [&](auto tag, auto io_tag) {
    using T = typename decltype(tag)::type;
    using O = typename decltype(io_tag)::type;
    using A = Acc<T>;
    const RopeRows<A> rope = rope_table ? MakeRopeRows<A>(x, *rope_table) : RopeRows<A>{};
    const std::initializer_list<const void*> ptrs = {x.raw_data(), SecondToken(x, x_rows),
                                                     y.raw_data()};
    LaunchLaneGroups<T>(d, ptrs, [&](auto g, auto v) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      const auto launch = [&](auto rope_tag) {
        const auto kernel = ScaledRmsNormalizeKernel<T, O, G, V, decltype(rope_tag)::value>;
        const unsigned blocks =
            GroupBlocks(rows, G, kForwardRows<G>, ResidentBlocks(ctx, op, kernel));
        kernel<<<blocks, kThreads, 0, Stream(ctx)>>>(rows, d, eps, Ptr<const T>(x), x_rows,
                                                     Ptr<const A>(gamma), Ptr<O>(y), Ptr<A>(rstd),
                                                     rope);
      };
      const bool in_registers = rope_table && RotatesInRegisters<G, V>(d);
      LaunchRotatingIf<V>(in_registers, launch);
      rotated = rotated || in_registers;
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "ScaledRmsNormalizeKernel");
  if (!rotated) RotateRows(ctx, op, x, *rope_table, true, y, y);
}

// ScaledRmsNormalizeBackward after (rope_table non-null) the inverse
// rotation of d_y: in the same kernel where its lanes can, else by
// RotateRows into a copy.
void RunBackward(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& rstd,
                 const Tensor& gamma, const Tensor* rope_table, const Tensor& d_y,
                 const Tensor& d_x, const Tensor& d_gamma) {
  const int64_t d = x.dim(-1), rows = x.numel() / d;
  const RowStarts x_rows = CheckRowStarts(ctx, op, x, d, "x");
  const RowStarts dx_rows = CheckRowStarts(ctx, op, d_x, d, "d_x");
  DispatchIo(x, d_y, [&](auto tag, auto io_tag) {
    using T = typename decltype(tag)::type;
    using O = typename decltype(io_tag)::type;
    using A = Acc<T>;
    const RopeRows<A> rope = rope_table ? MakeRopeRows<A>(x, *rope_table) : RopeRows<A>{};
    const std::initializer_list<const void*> ptrs = {x.raw_data(), SecondToken(x, x_rows),
                                                     d_y.raw_data(), d_x.raw_data(),
                                                     SecondToken(d_x, dx_rows)};
    LaunchLaneGroups<T>(d, ptrs, [&](auto g, auto v) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      const unsigned blocks = GroupBlocks(rows, G, kBackwardRows<G, V>, kMaxPartials);
      const Tensor partials = ctx.Empty({static_cast<int64_t>(blocks), d}, DType::kF64);
      const bool in_registers = rope_table && RotatesInRegisters<G, V>(d);
      Tensor dy = d_y;
      if (rope_table && !in_registers) {
        dy = ctx.Empty(d_y.shape(), d_y.dtype());
        RotateRows(ctx, op, x, *rope_table, false, d_y, dy);
      }
      LaunchRotatingIf<V>(in_registers, [&](auto rope_tag) {
        ScaledRmsNormalizeBackwardKernel<T, O, G, V, decltype(rope_tag)::value>
            <<<blocks, kThreads, 0, Stream(ctx)>>>(
                rows, d, Ptr<const T>(x), x_rows, Ptr<const A>(rstd), Ptr<const A>(gamma),
                Ptr<const O>(dy), Ptr<O>(d_x), dx_rows, Ptr<double>(partials), rope);
      });
      SM_CHECK_LAUNCH(ctx, op, "ScaledRmsNormalizeBackwardKernel");
      const auto finish_blocks = static_cast<unsigned>((d + kFinishCols - 1) / kFinishCols);
      AddPartialsKernel<A><<<finish_blocks, kFinishCols * kFinishSlices, 0, Stream(ctx)>>>(
          blocks, d, Ptr<const double>(partials), Ptr<A>(d_gamma));
    });
  });
  SM_CHECK_LAUNCH(ctx, op, "AddPartialsKernel");
}

void CheckDGamma(const ExecContext& ctx, const char* op, const Tensor& gamma,
                 const Tensor& d_gamma) {
  CheckOnDevice(ctx, d_gamma, op, "d_gamma");
  SM_CHECK_MSG(d_gamma.numel() == gamma.numel() && d_gamma.dtype() == gamma.dtype(), op,
               " d_gamma ", d_gamma.DebugString(), " for gamma ", gamma.DebugString());
}

void CheckTable(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& table) {
  CheckOnDevice(ctx, table, op, "rope_table");  // a contiguous CUDA tensor
  ops::CheckRopeTableArgs(op, x, table);
}

}  // namespace

void ScaledRmsNormalize(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, double eps,
                        const Tensor& y, const Tensor& rstd) {
  const char* op = "ScaledRmsNormalize";
  if (CheckRows(ctx, op, x, gamma, rstd, {{"y", &y}}) == 0) return;
  RunForward(ctx, op, x, gamma, eps, nullptr, y, rstd);
}

void ScaledRmsNormalizeRope(const ExecContext& ctx, const Tensor& x, const Tensor& gamma,
                            double eps, const Tensor& rope_table, const Tensor& y,
                            const Tensor& rstd) {
  const char* op = "ScaledRmsNormalizeRope";
  const int64_t rows = CheckRows(ctx, op, x, gamma, rstd, {{"y", &y}});
  CheckTable(ctx, op, x, rope_table);
  if (rows == 0) return;
  RunForward(ctx, op, x, gamma, eps, &rope_table, y, rstd);
}

void ScaledRmsNormalizeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                const Tensor& gamma, const Tensor& d_y, const Tensor& d_x,
                                const Tensor& d_gamma) {
  const char* op = "ScaledRmsNormalizeBackward";
  const int64_t rows = CheckRows(ctx, op, x, gamma, rstd, {{"d_y", &d_y}, {"d_x", &d_x}}, &d_x);
  CheckDGamma(ctx, op, gamma, d_gamma);
  if (rows == 0) return;
  RunBackward(ctx, op, x, rstd, gamma, nullptr, d_y, d_x, d_gamma);
}

void ScaledRmsNormalizeRopeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                    const Tensor& gamma, const Tensor& rope_table,
                                    const Tensor& d_y, const Tensor& d_x, const Tensor& d_gamma) {
  const char* op = "ScaledRmsNormalizeRopeBackward";
  const int64_t rows = CheckRows(ctx, op, x, gamma, rstd, {{"d_y", &d_y}, {"d_x", &d_x}}, &d_x);
  CheckDGamma(ctx, op, gamma, d_gamma);
  CheckTable(ctx, op, x, rope_table);
  if (rows == 0) return;
  RunBackward(ctx, op, x, rstd, gamma, &rope_table, d_y, d_x, d_gamma);
}

}  // namespace scalemoe::cuda
