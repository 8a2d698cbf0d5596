// ScaleRowsCols and its backward on the GPU (f32/f64/bf16; f32 math for f32
// and bf16, f64 for f64), the contract of core/ops.h:
//   out[b,i,j] = row[b,i] · x[b,i,j] · col[b,j]
//   d_x = d_out ⊙ row colᵀ (overwritten), d_row += Σ_j d_out·x·col,
//   d_col += Σ_i d_out·x·row (accumulated).
// Both sums are deterministic: d_row is one warp's fixed butterfly per row;
// d_col is two passes, partial sums over fixed chunks of rows (a chunk size
// that depends on R only) and then the chunks added in order. No atomics.
// The sums accumulate in f64 whatever T: they are the fold's γ/u gradients,
// sums over a whole weight with cancellation, where f32 sums of two orders
// differ by ~1e-5 of the result at GPU-preset widths (memory-bound: f64
// costs nothing here).
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// n = B·R·C elements; V > 1 only when C % V == 0, so a pack never crosses a
// row and col's pack at (b, j) is aligned too.
template <typename T, int V>
__global__ void ScaleRowsColsKernel(int64_t n, int64_t r_dim, int64_t c_dim, const T* x,
                                    const T* row, const T* col, T* out) {
  using A = Acc<T>;
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const int64_t r = i / c_dim;  // b·R + row index
    const int64_t j = i - r * c_dim;
    const A ri = row ? ToAcc(row[r]) : A(1);
    A xv[V], cv[V], ov[V];
    LoadPack<V>(x, i, count, xv);
    if (col) {
      LoadPack<V>(col + (r / r_dim) * c_dim, j, count, cv);
#pragma unroll
      for (int k = 0; k < V; ++k) ov[k] = ri * xv[k] * cv[k];
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) ov[k] = ri * xv[k];
    }
    StorePack<V>(out, i, count, ov);
  });
}

// One warp per row r = b·R + i: d_x[r, :] (if d_x) and d_row[r] += Σ_j (if
// d_row), the warp's lanes striding over j and summed by a fixed butterfly.
template <typename T>
__global__ void RowPassKernel(int64_t rows, int64_t r_dim, int64_t c_dim, const T* x,
                              const T* row, const T* col, const T* d_out, T* d_x, T* d_row) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t r = first; r < rows; r += warps) {  // warp-uniform
    const A ri = row ? ToAcc(row[r]) : A(1);
    const T* cb = col ? col + (r / r_dim) * c_dim : nullptr;
    const int64_t base = r * c_dim;
    double acc = 0;
    for (int64_t j = lane; j < c_dim; j += 32) {
      const A cj = cb ? ToAcc(cb[j]) : A(1);
      const A g = ToAcc(d_out[base + j]);
      if (d_x) d_x[base + j] = FromAcc<T>(g * ri * cj);
      if (d_row) {
        acc += static_cast<double>(g) * static_cast<double>(ToAcc(x[base + j])) *
               static_cast<double>(cj);
      }
    }
    if (d_row) {
      acc = WarpSum(acc);
      if (lane == 0) d_row[r] = FromAcc<T>(static_cast<A>(static_cast<double>(ToAcc(d_row[r])) + acc));
    }
  }
}

constexpr int kColTile = 32;   // columns per block (threadIdx.x)
constexpr int kRowLanes = 8;   // rows read at once per block (threadIdx.y)

// Block (tile, s, b) with threads (32, 8): partials[b, s, j] = Σ over rows i
// of chunk s of d_out[b,i,j]·x[b,i,j]·row[b,i], for the tile's 32 columns.
// Each thread sums rows i ≡ threadIdx.y (mod 8) of the chunk, then thread
// row 0 adds the 8 in order.
template <typename T>
__global__ void ColumnPartialsKernel(int64_t r_dim, int64_t c_dim, int64_t chunk, const T* x,
                                     const T* row, const T* d_out, double* partials) {
  using A = double;
  __shared__ A sums[kRowLanes][kColTile];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t s = blockIdx.y, b = blockIdx.z, chunks = gridDim.y;
  const int64_t begin = s * chunk;
  const int64_t end = begin + chunk < r_dim ? begin + chunk : r_dim;
  A acc = 0;
  if (j < c_dim) {
    for (int64_t i = begin + threadIdx.y; i < end; i += kRowLanes) {
      const int64_t r = b * r_dim + i;
      const A ri = row ? ToAcc(row[r]) : A(1);
      acc += static_cast<double>(ToAcc(d_out[r * c_dim + j])) *
             static_cast<double>(ToAcc(x[r * c_dim + j])) * ri;
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

// d_col[b, j] += Σ_s partials[b, s, j], s in order.
template <typename T>
__global__ void ColumnFinishKernel(int64_t bc, int64_t c_dim, int64_t chunks,
                                   const double* partials, T* d_col) {
  using A = double;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < bc;
       e += stride) {
    const int64_t b = e / c_dim, j = e - b * c_dim;
    const A* p = partials + b * chunks * c_dim + j;
    A total = 0;
    for (int64_t s = 0; s < chunks; ++s) total += p[s * c_dim];
    d_col[e] = FromAcc<T>(static_cast<Acc<T>>(static_cast<double>(ToAcc(d_col[e])) + total));
  }
}

// ---------------------------------------------------------------- launchers

struct Dims {
  int64_t b, r, c;
};

Dims CheckShapes(const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col,
                 const char* op) {
  CheckOnDevice(ctx, x, op, "x");
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, op, " x ", x.DebugString());
  SM_CHECK_MSG(x.dtype() == DType::kF32 || x.dtype() == DType::kF64 || x.dtype() == DType::kBF16,
               op, " x ", x.DebugString());
  Dims d{x.ndim() == 3 ? x.dim(0) : 1, x.dim(-2), x.dim(-1)};
  if (row.defined()) {
    CheckOnDevice(ctx, row, op, "row");
    SM_CHECK_MSG(row.numel() == d.b * d.r && row.dtype() == x.dtype(), op, " row ",
                 row.DebugString(), " for x ", x.DebugString());
  }
  if (col.defined()) {
    CheckOnDevice(ctx, col, op, "col");
    SM_CHECK_MSG(col.numel() == d.b * d.c && col.dtype() == x.dtype(), op, " col ",
                 col.DebugString(), " for x ", x.DebugString());
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

}  // namespace

void ScaleRowsCols(const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col,
                   const Tensor& out) {
  const Dims d = CheckShapes(ctx, x, row, col, "ScaleRowsCols");
  CheckOnDevice(ctx, out, "ScaleRowsCols", "out");
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype(), "ScaleRowsCols out ",
               out.DebugString(), " for x ", x.DebugString());
  const int64_t n = x.numel();
  if (n == 0) return;
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kV = kPack<T>;
    const T* xs = Ptr<const T>(x);
    const T* rs = Ptr<const T>(row);
    const T* cs = Ptr<const T>(col);
    T* os = Ptr<T>(out);
    if (d.c % kV == 0 && AllAligned16({xs, cs, os})) {
      ScaleRowsColsKernel<T, kV><<<Blocks(n / kV), kThreads, 0, Stream(ctx)>>>(n, d.r, d.c, xs,
                                                                               rs, cs, os);
    } else {
      ScaleRowsColsKernel<T, 1><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, d.r, d.c, xs, rs,
                                                                         cs, os);
    }
  });
  SM_CHECK_LAUNCH(ctx, "ScaleRowsCols", "ScaleRowsColsKernel");
}

void ScaleRowsColsBackward(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col) {
  const Dims d = CheckShapes(ctx, x, row, col, "ScaleRowsColsBackward");
  CheckOnDevice(ctx, d_out, "ScaleRowsColsBackward", "d_out");
  SM_CHECK_MSG(d_out.numel() == x.numel() && d_out.dtype() == x.dtype(),
               "ScaleRowsColsBackward d_out ", d_out.DebugString(), " for x ", x.DebugString());
  CheckLike(ctx, d_x, x.numel(), x.dtype(), "d_x");
  CheckLike(ctx, d_row, d.b * d.r, x.dtype(), "d_row");
  CheckLike(ctx, d_col, d.b * d.c, x.dtype(), "d_col");
  // An empty x leaves nothing to write: d_x is empty, and the sums add 0.
  if (x.numel() == 0) return;
  const int64_t rows = d.b * d.r;
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xs = Ptr<const T>(x);
    const T* rs = Ptr<const T>(row);
    const T* cs = Ptr<const T>(col);
    const T* gs = Ptr<const T>(d_out);
    // The column sums read d_out before the row pass may overwrite it (d_x
    // may alias d_out: the in-place unfold of a folded weight's gradient).
    if (d_col.defined()) {
      SM_CHECK_MSG(d.b <= 65535, "ScaleRowsColsBackward: batch ", d.b, " over 65535");
      const int64_t chunk = ChunkRows(d.r);
      const int64_t chunks = (d.r + chunk - 1) / chunk;
      Tensor partials = ctx.Empty({d.b, chunks, d.c}, DType::kF64);
      const dim3 grid(static_cast<unsigned>((d.c + kColTile - 1) / kColTile),
                      static_cast<unsigned>(chunks), static_cast<unsigned>(d.b));
      ColumnPartialsKernel<T><<<grid, dim3(kColTile, kRowLanes), 0, Stream(ctx)>>>(
          d.r, d.c, chunk, xs, rs, gs, Ptr<double>(partials));
      SM_CHECK_LAUNCH(ctx, "ScaleRowsColsBackward", "ColumnPartialsKernel");
      ColumnFinishKernel<T><<<Blocks(d.b * d.c), kThreads, 0, Stream(ctx)>>>(
          d.b * d.c, d.c, chunks, Ptr<const double>(partials), Ptr<T>(d_col));
      SM_CHECK_LAUNCH(ctx, "ScaleRowsColsBackward", "ColumnFinishKernel");
    }
    if (d_x.defined() || d_row.defined()) {
      RowPassKernel<T><<<Blocks(rows * 32), kThreads, 0, Stream(ctx)>>>(
          rows, d.r, d.c, xs, rs, cs, gs, Ptr<T>(d_x), Ptr<T>(d_row));
      SM_CHECK_LAUNCH(ctx, "ScaleRowsColsBackward", "RowPassKernel");
    }
  });
}

}  // namespace scalemoe::cuda
