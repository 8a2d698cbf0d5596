// ScaleRowsCols and its backward on the GPU (f32/f64/bf16; f32 math for f32
// and bf16, f64 for f64; the forward also takes f32 row/col vectors for bf16
// x), and their group forms (every matrix of a MatrixGroup in the same
// launches, found through its address table), the contract of core/ops.h:
//   out[b,i,j] = row[b,i] · x[b,i,j] · col[b,j]
//   d_x = d_out ⊙ row colᵀ (overwritten), d_row += Σ_j d_out·x·col,
//   d_col += Σ_i d_out·x·row (accumulated).
// Both sums are deterministic: d_row is one warp's fixed butterfly per row;
// d_col is two passes, partial sums over fixed chunks of rows (a chunk size
// that depends on R only) and then the chunks added in order (a d_col
// shared by a group's matrices: the matrices' totals added in group order).
// No atomics. With d_col wanted and no d_row, d_x is written by the
// partial-sum pass itself (one read of d_out for both: the shared γ's
// unfold and DNP's per-head scale are memory-bound; 1.46 instead of 2.08
// ms a step for DNP on the H200). With d_row too (an output-norm u), the
// row pass writes d_x after the column sums have read d_out: a d_row-only
// row pass first and the fused column pass after measured 11 % slower.
// The sums accumulate in f64 whatever T: they are the fold's γ/u gradients,
// sums over a whole weight with cancellation, where f32 sums of two orders
// differ by ~1e-5 of the result at GPU-preset widths (memory-bound: f64
// costs nothing here).
#include <algorithm>
#include <type_traits>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/matrix_group_checks.h"

namespace scalemoe::cuda {
namespace {

using ops::VectorDTypeOk;
using ops::VectorDTypes;

// ---------------------------------------------------------------- kernels

// Where matrix (or vector) b of a call lives: a batched tensor's b-th slice
// (a contiguous [B, ...] block of `stride` elements each), or the g-th entry
// of a MatrixGroup's device address table. Null base or table: undefined.
template <typename T>
struct Strided {
  T* base;
  int64_t stride;
  __device__ __forceinline__ T* operator()(int64_t b) const {
    return base ? base + b * stride : nullptr;
  }
};
template <typename T>
struct Table {
  const int64_t* addresses;
  __device__ __forceinline__ T* operator()(int64_t g) const {
    return addresses ? reinterpret_cast<T*>(addresses[g]) : nullptr;
  }
};

// out[0..count) = p[j..j+count): one packed load when p's elements are as
// wide as x's (the pack is then 16 bytes), else one at a time (an f32 col
// beside bf16 x).
template <int V, typename C, typename A>
__device__ __forceinline__ void LoadCol(const C* p, int64_t j, int count, A (&out)[V]) {
  if constexpr (V == 1 || sizeof(C) * V == 16) {
    LoadPack<V>(p, j, count, out);
  } else {
#pragma unroll
    for (int q = 0; q < V; ++q) out[q] = q < count ? ToAcc(p[j + q]) : A(0);
  }
}

// n = B·R·C elements; V > 1 only when C % V == 0, so a pack never crosses a
// row (nor a matrix) and col's pack at (b, j) is aligned too. O is T, or
// bf16 for f32 T (the group's rounded fold). R and C, row's and col's
// types, are T, or f32 for bf16 T (f32 products, rounded once on store).
// out may be x: each thread reads its pack before it writes it.
template <typename T, typename O, typename R, typename C, int V, template <typename> class At>
__global__ void ScaleRowsColsKernel(int64_t n, int64_t r_dim, int64_t c_dim, At<const T> x,
                                    At<const R> row, At<const C> col, At<O> out) {
  using A = Acc<T>;
  const int64_t rc = r_dim * c_dim;
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const int64_t b = i / rc;
    const int64_t k = i - b * rc;  // element of matrix b
    const int64_t r = k / c_dim;   // its row
    const int64_t j = k - r * c_dim;
    const R* rb = row(b);
    const C* cb = col(b);
    const A ri = rb ? ToAcc(rb[r]) : A(1);
    A xv[V], cv[V], ov[V];
    LoadPack<V>(x(b), k, count, xv);
    if (cb) {
      LoadCol<V>(cb, j, count, cv);
#pragma unroll
      for (int q = 0; q < V; ++q) ov[q] = ri * xv[q] * cv[q];
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) ov[q] = ri * xv[q];
    }
    StorePack<V>(out(b), k, count, ov);
  });
}

// One warp per row (b, i), rows = B·R: d_x[b, i, :] (if d_x) and d_row[b, i]
// += Σ_j (if d_row), the warp's lanes striding over j and summed by a fixed
// butterfly.
template <typename T, template <typename> class At>
__global__ void RowPassKernel(int64_t rows, int64_t r_dim, int64_t c_dim, At<const T> x,
                              At<const T> row, At<const T> col, At<const T> d_out, At<T> d_x,
                              At<T> d_row) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t r = first; r < rows; r += warps) {  // warp-uniform
    const int64_t b = r / r_dim, i = r - b * r_dim;
    const T* rb = row(b);
    const T* cb = col(b);
    const T* xb = x(b);
    const T* gb = d_out(b);
    T* dxb = d_x(b);
    T* drb = d_row(b);
    const A ri = rb ? ToAcc(rb[i]) : A(1);
    const int64_t base = i * c_dim;
    double acc = 0;
    for (int64_t j = lane; j < c_dim; j += 32) {
      const A cj = cb ? ToAcc(cb[j]) : A(1);
      const A g = ToAcc(gb[base + j]);
      if (dxb) dxb[base + j] = FromAcc<T>(g * ri * cj);
      if (drb) {
        acc += static_cast<double>(g) * static_cast<double>(ToAcc(xb[base + j])) *
               static_cast<double>(cj);
      }
    }
    if (drb) {
      acc = WarpSum(acc);
      if (lane == 0) drb[i] = FromAcc<T>(static_cast<A>(static_cast<double>(ToAcc(drb[i])) + acc));
    }
  }
}

constexpr int kColTile = 32;   // columns per block (threadIdx.x)
constexpr int kRowLanes = 8;   // rows read at once per block (threadIdx.y)

// Block (tile, s, b) with threads (32, 8): partials[b, s, j] = Σ over rows i
// of chunk s of d_out[b,i,j]·x[b,i,j]·row[b,i], for the tile's 32 columns.
// Each thread sums rows i ≡ threadIdx.y (mod 8) of the chunk, then thread
// row 0 adds the 8 in order. With d_x, the same pass writes d_x[b,i,j] =
// d_out·row·col (RowPassKernel's expression: the same bits), each element
// read and then written by one thread, so d_x may alias d_out.
template <typename T, template <typename> class At>
__global__ void ColumnPartialsKernel(int64_t r_dim, int64_t c_dim, int64_t chunk, At<const T> x,
                                     At<const T> row, At<const T> col, At<const T> d_out, At<T> d_x,
                                     double* partials) {
  using A = double;
  using F = Acc<T>;  // RowPassKernel's type for d_x
  __shared__ A sums[kRowLanes][kColTile];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t s = blockIdx.y, b = blockIdx.z, chunks = gridDim.y;
  const int64_t begin = s * chunk;
  const int64_t end = begin + chunk < r_dim ? begin + chunk : r_dim;
  const T* xb = x(b);
  const T* rb = row(b);
  const T* gb = d_out(b);
  T* dxb = d_x(b);
  A acc = 0;
  if (j < c_dim) {
    const T* cb = col(b);
    const F cj = cb ? ToAcc(cb[j]) : F(1);
#pragma unroll 4
    for (int64_t i = begin + threadIdx.y; i < end; i += kRowLanes) {
      const F ri = rb ? ToAcc(rb[i]) : F(1);
      const F g = ToAcc(gb[i * c_dim + j]);
      acc += static_cast<double>(g) * static_cast<double>(ToAcc(xb[i * c_dim + j])) *
             static_cast<double>(ri);
      if (dxb) dxb[i * c_dim + j] = FromAcc<T>(g * ri * cj);
    }
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < c_dim) {
    A total = 0;
#pragma unroll
    for (int k = 0; k < kRowLanes; ++k) total += sums[k][threadIdx.x];
    partials[(b * chunks + s) * c_dim + j] = total;
  }
}

// Σ_s partials[b, s, j] by one warp: lane l adds chunks s ≡ l (mod 32) in
// order, then the lanes' sums meet in WarpSum's fixed butterfly; every lane
// returns the same total. A fixed order (the bits do not depend on the
// launch), and 32 loads in flight per column instead of one: with [N·H, 64]
// maps (DNP's per-head norms) a thread per column walked ~1500 chunks alone.
__device__ __forceinline__ double WarpChunksTotal(const double* partials, int64_t b, int64_t j,
                                                  int64_t chunks, int64_t c_dim, int lane) {
  const double* p = partials + b * chunks * c_dim + j;
  double total = 0;
  for (int64_t s = lane; s < chunks; s += 32) total += p[s * c_dim];
  return WarpSum(total);
}

// A warp per entry of [B, C]: the first entry of this thread's warp, and the
// grid's warps (the grid-stride step; the same for a warp's lanes, as the
// shuffles need).
__device__ __forceinline__ int64_t FirstWarpEntry() {
  return static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t GridWarps() {
  return static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
}

// d_col[b, j] += Σ_s partials[b, s, j].
template <typename T, template <typename> class At>
__global__ void ColumnFinishKernel(int64_t bc, int64_t c_dim, int64_t chunks,
                                   const double* partials, At<T> d_col) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int64_t e = FirstWarpEntry(); e < bc; e += GridWarps()) {
    const int64_t b = e / c_dim, j = e - b * c_dim;
    const double total = WarpChunksTotal(partials, b, j, chunks, c_dim, lane);
    if (lane == 0) {
      T* dc = d_col(b);
      dc[j] = FromAcc<T>(static_cast<Acc<T>>(static_cast<double>(ToAcc(dc[j])) + total));
    }
  }
}

// For one d_col shared by all B matrices (a γ shared by the group's maps),
// first totals[b, j] = Σ_s partials[b, s, j] (all b at once)...
__global__ void ColumnTotalsKernel(int64_t bc, int64_t c_dim, int64_t chunks,
                                   const double* partials, double* totals) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int64_t e = FirstWarpEntry(); e < bc; e += GridWarps()) {
    const int64_t b = e / c_dim, j = e - b * c_dim;
    const double total = WarpChunksTotal(partials, b, j, chunks, c_dim, lane);
    if (lane == 0) totals[e] = total;
  }
}

// ... then d_col[j] += totals[b, j] for b = 0, 1, ... in order, rounded to T
// after each b: what B single launches in order give.
template <typename T, template <typename> class At>
__global__ void SharedColumnFinishKernel(int64_t b_dim, int64_t c_dim, const double* totals,
                                         At<T> d_col) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  T* dc = d_col(0);
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < c_dim;
       j += stride) {
    for (int64_t b = 0; b < b_dim; ++b) {
      dc[j] = FromAcc<T>(
          static_cast<Acc<T>>(static_cast<double>(ToAcc(dc[j])) + totals[b * c_dim + j]));
    }
  }
}

// ---------------------------------------------------------------- launchers

struct Dims {
  int64_t b, r, c;
};

Dims CheckShapes(const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col,
                 const char* op, VectorDTypes allowed) {
  CheckOnDevice(ctx, x, op, "x");
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, op, " x ", x.DebugString());
  SM_CHECK_MSG(x.dtype() == DType::kF32 || x.dtype() == DType::kF64 || x.dtype() == DType::kBF16,
               op, " x ", x.DebugString());
  Dims d{x.ndim() == 3 ? x.dim(0) : 1, x.dim(-2), x.dim(-1)};
  const char* dtypes = allowed == VectorDTypes::kLikeX ? " (row and col take x's dtype)"
                                                       : " (row and col take x's dtype, or f32 "
                                                         "for bf16 x)";
  if (row.defined()) {
    CheckOnDevice(ctx, row, op, "row");
    SM_CHECK_MSG(row.numel() == d.b * d.r && VectorDTypeOk(row, x, allowed), op, " row ",
                 row.DebugString(), " for x ", x.DebugString(), dtypes);
  }
  if (col.defined()) {
    CheckOnDevice(ctx, col, op, "col");
    SM_CHECK_MSG(col.numel() == d.b * d.c && VectorDTypeOk(col, x, allowed), op, " col ",
                 col.DebugString(), " for x ", x.DebugString(), dtypes);
  }
  return d;
}

void CheckLike(const ExecContext& ctx, const Tensor& t, int64_t numel, DType dtype,
               const char* what) {
  if (!t.defined()) return;
  CheckOnDevice(ctx, t, "ScaleRowsColsBackward", what);
  SM_CHECK_MSG(t.numel() == numel && t.dtype() == dtype, "ScaleRowsColsBackward ", what, " ",
               t.DebugString());
}

// Rows of d_col's chunks: at least 64 (enough work per block), and at most
// 4096 chunks. A function of R alone: the order of the sums is fixed.
int64_t ChunkRows(int64_t r) { return std::max<int64_t>(64, (r + 4095) / 4096); }

// The forward over B matrices [R, C] wherever `At` finds them; `aligned`:
// every matrix and col vector starts 16-byte aligned.
template <typename T, typename O, typename R, typename C, template <typename> class At>
void LaunchForward(const ExecContext& ctx, const char* op, Dims d, bool aligned, At<const T> x,
                   At<const R> row, At<const C> col, At<O> out) {
  const int64_t n = d.b * d.r * d.c;
  if (n == 0) return;
  constexpr int kV = kPack<T>;
  if (d.c % kV == 0 && aligned) {
    ScaleRowsColsKernel<T, O, R, C, kV, At>
        <<<Blocks(n / kV), kThreads, 0, Stream(ctx)>>>(n, d.r, d.c, x, row, col, out);
  } else {
    ScaleRowsColsKernel<T, O, R, C, 1, At>
        <<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, d.r, d.c, x, row, col, out);
  }
  SM_CHECK_LAUNCH(ctx, op, "ScaleRowsColsKernel");
}

// The backward over B matrices. d_x may alias d_out (the in-place unfold of
// a folded weight's gradient): every sum reads d_out before d_x overwrites
// it — the column pass writes d_x as it reads each element, or runs before
// the row pass that writes it.
template <typename T, template <typename> class At>
void LaunchBackward(const ExecContext& ctx, const char* op, Dims d, At<const T> x, At<const T> row,
                    At<const T> col, At<const T> d_out, At<T> d_x, At<T> d_row, At<T> d_col,
                    bool want_dx, bool want_drow, bool want_dcol, bool shared_dcol) {
  // An empty x leaves nothing to write: d_x is empty, and the sums add 0.
  if (d.b * d.r * d.c == 0) return;
  const int64_t rows = d.b * d.r;
  const auto row_pass = [&](At<T> dx) {
    RowPassKernel<T, At><<<Blocks(rows * 32), kThreads, 0, Stream(ctx)>>>(rows, d.r, d.c, x, row,
                                                                          col, d_out, dx, d_row);
    SM_CHECK_LAUNCH(ctx, op, "RowPassKernel");
  };
  if (!want_dcol) {
    if (want_dx || want_drow) row_pass(d_x);
    return;
  }
  const bool dx_in_column_pass = want_dx && !want_drow;
  SM_CHECK_MSG(d.b <= 65535, op, ": batch ", d.b, " over 65535");
  const int64_t chunk = ChunkRows(d.r);
  const int64_t chunks = (d.r + chunk - 1) / chunk;
  Tensor partials = ctx.Empty({d.b, chunks, d.c}, DType::kF64);
  const dim3 grid(static_cast<unsigned>((d.c + kColTile - 1) / kColTile),
                  static_cast<unsigned>(chunks), static_cast<unsigned>(d.b));
  ColumnPartialsKernel<T, At><<<grid, dim3(kColTile, kRowLanes), 0, Stream(ctx)>>>(
      d.r, d.c, chunk, x, row, col, d_out, dx_in_column_pass ? d_x : At<T>{},
      Ptr<double>(partials));
  SM_CHECK_LAUNCH(ctx, op, "ColumnPartialsKernel");
  if (shared_dcol) {
    Tensor totals = ctx.Empty({d.b, d.c}, DType::kF64);
    ColumnTotalsKernel<<<Blocks(d.b * d.c * 32), kThreads, 0, Stream(ctx)>>>(
        d.b * d.c, d.c, chunks, Ptr<const double>(partials), Ptr<double>(totals));
    SM_CHECK_LAUNCH(ctx, op, "ColumnTotalsKernel");
    SharedColumnFinishKernel<T, At>
        <<<Blocks(d.c), kThreads, 0, Stream(ctx)>>>(d.b, d.c, Ptr<const double>(totals), d_col);
    SM_CHECK_LAUNCH(ctx, op, "SharedColumnFinishKernel");
  } else {
    ColumnFinishKernel<T, At><<<Blocks(d.b * d.c * 32), kThreads, 0, Stream(ctx)>>>(
        d.b * d.c, d.c, chunks, Ptr<const double>(partials), d_col);
    SM_CHECK_LAUNCH(ctx, op, "ColumnFinishKernel");
  }
  if (want_drow) row_pass(want_dx ? d_x : At<T>{});
}

template <typename T>
Strided<T> Slices(const Tensor& t, int64_t stride) {
  return {Ptr<T>(t), stride};
}

// ---------------------------------------------------------------- groups

template <typename T>
Table<T> Entries(const MatrixGroup& g) {
  return {g.size() == 0 ? nullptr : static_cast<const int64_t*>(g.addresses.raw_data())};
}

bool GroupAligned16(const MatrixGroup& g) {
  for (const Tensor& m : g.matrices) {
    if (!Aligned16(m.raw_data())) return false;
  }
  return true;
}

}  // namespace

void ScaleRowsCols(const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col,
                   const Tensor& out) {
  const Dims d = CheckShapes(ctx, x, row, col, "ScaleRowsCols", VectorDTypes::kLikeXOrF32);
  CheckOnDevice(ctx, out, "ScaleRowsCols", "out");
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype(), "ScaleRowsCols out ",
               out.DebugString(), " for x ", x.DebugString());
  const int64_t rc = d.r * d.c;
  const bool aligned = AllAligned16({x.raw_data(), Ptr<const void>(col), out.raw_data()});
  const bool f32_row = row.defined() && row.dtype() != x.dtype();  // bf16 x (CheckShapes)
  const bool f32_col = col.defined() && col.dtype() != x.dtype();
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto launch = [&](auto row_tag, auto col_tag) {
      using R = typename decltype(row_tag)::type;
      using C = typename decltype(col_tag)::type;
      LaunchForward<T, T, R, C, Strided>(ctx, "ScaleRowsCols", d, aligned, Slices<const T>(x, rc),
                                         Slices<const R>(row, d.r), Slices<const C>(col, d.c),
                                         Slices<T>(out, rc));
    };
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      if (f32_row && f32_col) return launch(Tag<float>{}, Tag<float>{});
      if (f32_row) return launch(Tag<float>{}, tag);
      if (f32_col) return launch(tag, Tag<float>{});
    }
    launch(tag, tag);
  });
}

void ScaleRowsColsBackward(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col) {
  const Dims d = CheckShapes(ctx, x, row, col, "ScaleRowsColsBackward", VectorDTypes::kLikeX);
  CheckOnDevice(ctx, d_out, "ScaleRowsColsBackward", "d_out");
  SM_CHECK_MSG(d_out.numel() == x.numel() && d_out.dtype() == x.dtype(),
               "ScaleRowsColsBackward d_out ", d_out.DebugString(), " for x ", x.DebugString());
  CheckLike(ctx, d_x, x.numel(), x.dtype(), "d_x");
  CheckLike(ctx, d_row, d.b * d.r, x.dtype(), "d_row");
  CheckLike(ctx, d_col, d.b * d.c, x.dtype(), "d_col");
  const int64_t rc = d.r * d.c;
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    LaunchBackward<T, Strided>(ctx, "ScaleRowsColsBackward", d, Slices<const T>(x, rc),
                               Slices<const T>(row, d.r), Slices<const T>(col, d.c),
                               Slices<const T>(d_out, rc), Slices<T>(d_x, rc),
                               Slices<T>(d_row, d.r), Slices<T>(d_col, d.c), d_x.defined(),
                               d_row.defined(), d_col.defined(), /*shared_dcol=*/false);
  });
}

void ScaleRowsColsGroup(const ExecContext& ctx, const MatrixGroup& x, const MatrixGroup& row,
                        const MatrixGroup& col, const MatrixGroup& out) {
  const char* op = "ScaleRowsColsGroup";
  ops::CheckScaleRowsColsGroup(x, row, col, out, Device::kCUDA);
  const int64_t n = x.size();
  const Dims d{n, x.rows, x.cols};
  const bool rounded = x.dtype == DType::kF32 && out.dtype == DType::kBF16;
  if (n == 0) return;
  const bool aligned = GroupAligned16(x) && GroupAligned16(col) && GroupAligned16(out);
  DispatchFloat(x.matrices[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, float>) {
      if (rounded) {
        LaunchForward<T, __nv_bfloat16, T, T, Table>(ctx, op, d, aligned, Entries<const T>(x),
                                                     Entries<const T>(row), Entries<const T>(col),
                                                     Entries<__nv_bfloat16>(out));
        return;
      }
    }
    LaunchForward<T, T, T, T, Table>(ctx, op, d, aligned, Entries<const T>(x),
                                     Entries<const T>(row), Entries<const T>(col), Entries<T>(out));
  });
}

void ScaleRowsColsBackwardGroup(const ExecContext& ctx, const MatrixGroup& x,
                                const MatrixGroup& row, const MatrixGroup& col,
                                const MatrixGroup& d_out, const MatrixGroup& d_x,
                                const MatrixGroup& d_row, const MatrixGroup& d_col) {
  const char* op = "ScaleRowsColsBackwardGroup";
  const bool shared_dcol =
      ops::CheckScaleRowsColsBackwardGroup(x, row, col, d_out, d_x, d_row, d_col, Device::kCUDA);
  const int64_t n = x.size();
  const Dims d{n, x.rows, x.cols};
  if (n == 0) return;
  DispatchFloat(x.matrices[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    LaunchBackward<T, Table>(ctx, op, d, Entries<const T>(x), Entries<const T>(row),
                             Entries<const T>(col), Entries<const T>(d_out), Entries<T>(d_x),
                             Entries<T>(d_row), Entries<T>(d_col), d_x.size() > 0, d_row.size() > 0,
                             d_col.size() > 0, shared_dcol);
  });
}

}  // namespace scalemoe::cuda
