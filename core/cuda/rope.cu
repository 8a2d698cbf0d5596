// Rope and RopeBackward on the GPU, the contract of core/ops.h
// (core/cpu/rope.cc is the reference): rotate-half rotary embedding of x
// [B, T, H, D], pairs (i, i + D/2) at position t rotated by
// t · theta^(−2i/D) (forward) or by its negative (backward: Rᵀ).
// f32, f64 and bf16; the angle and its cos/sin are computed in f64 (a
// position times a frequency in f32 would be off by ~1e-4 rad at t ~ 4096),
// then rounded to the compute type (f32 for f32 and bf16), as the CPU does.
// A block owns one position t and a tile of up to kTileCols pair columns:
// it computes their cos/sin once into shared memory, then rotates them in a
// range of the B·H head vectors, 16 bytes of x1 and of x2 per access where
// D/2 and both token strides are multiples of the pack (else one element at
// a time). x and out may each be token-strided (core/head_rows.h: q or k a
// slice of the q|k|v projection's output), token b·T + t of each at its own
// stride; only addresses differ, so the bits are those of contiguous
// tensors. Each element is read and written by one thread only, so out may
// alias x (with x's stride).
// With a table (RopeTable's, the same cos/sin bits) there is no per-call
// angle work: RopeFromTableKernel gives each thread one pack of x1 and its
// x2 partner, reading cos/sin from the table (L2-resident), so it is bound
// by memory bandwidth alone.
#include <limits>
#include <numeric>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/rope_pair.cuh"
#include "core/head_rows.h"
#include "core/scaled_rms_normalize_checks.h"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Pair columns whose cos/sin one block keeps in shared memory: D/2 up to
// this in one tile (every head dim in use), longer heads over several.
constexpr int kTileCols = 256;
// Packs of x1 and x2 a thread has loaded at once: the first ones are in
// flight while the block computes its table.
constexpr int kItemsInFlight = 2;

// One thread's share: V columns of x1 (and the matching ones of x2) of one
// head vector, loaded and not yet written.
template <typename T, int V>
struct RopeItem {
  bool valid = false;
  int col = 0;         // first column within the block's tile
  int64_t x_at = 0;    // element offset of its x1 columns in x
  int64_t out_at = 0;  // ... and in out
  Pack<T, V> x1, x2;
};

// grid.x: (t, column tile), tile fastest; grid.y: ranges of bh_per_block
// head vectors bh = b·H + h. Items (head vector, pack) of a block go over
// its threads, pack fastest (a warp covers adjacent 16-byte chunks of
// adjacent heads). Token b·T + t starts x_stride elements after the one
// before in x, out_stride in out. V = 1 or 16 / sizeof(T); V > 1 needs
// D/2 and both strides multiples of V and x and out 16-byte aligned (the
// launcher checks).
template <typename T, int V>
__global__ void RopeKernel(int64_t t_dim, int64_t h_dim, int64_t bh_count, int64_t bh_per_block,
                           int64_t d, int64_t x_stride, int64_t out_stride, double theta,
                           double sign, const T* x, T* out) {
  using A = Acc<T>;
  __shared__ A cos_tab[kTileCols], sin_tab[kTileCols];
  const int64_t half = d / 2;
  const int64_t tiles = (half + kTileCols - 1) / kTileCols;
  const int64_t t = blockIdx.x / tiles;
  const int64_t first_col = (blockIdx.x - t * tiles) * kTileCols;
  const int cols = static_cast<int>(half - first_col < kTileCols ? half - first_col : kTileCols);
  const int packs = cols / V;  // cols % V == 0: half and kTileCols are multiples of V
  const int64_t bh_first = static_cast<int64_t>(blockIdx.y) * bh_per_block;
  const int64_t bh_end = bh_first + bh_per_block < bh_count ? bh_first + bh_per_block : bh_count;
  const int64_t items = (bh_end - bh_first) * packs;

  auto load = [&](int64_t q, RopeItem<T, V>& it) {
    it.valid = q < items;
    if (!it.valid) return;
    const int64_t bh = bh_first + q / packs;
    const int64_t b = bh / h_dim, h = bh - b * h_dim;
    it.col = static_cast<int>(q % packs) * V;
    const int64_t token = b * t_dim + t, in_token = h * d + first_col + it.col;
    it.x_at = token * x_stride + in_token;
    it.out_at = token * out_stride + in_token;
    it.x1 = *reinterpret_cast<const Pack<T, V>*>(x + it.x_at);
    it.x2 = *reinterpret_cast<const Pack<T, V>*>(x + it.x_at + half);
  };
  // The same expressions as the CPU reference, in A, each rounded to T once.
  auto rotate_store = [&](const RopeItem<T, V>& it) {
    if (!it.valid) return;
    Pack<T, V> o1, o2;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A r1, r2;
      RotatePair(ToAcc(it.x1.v[k]), ToAcc(it.x2.v[k]), cos_tab[it.col + k], sin_tab[it.col + k], r1,
                 r2);
      o1.v[k] = FromAcc<T>(r1);
      o2.v[k] = FromAcc<T>(r2);
    }
    *reinterpret_cast<Pack<T, V>*>(out + it.out_at) = o1;
    *reinterpret_cast<Pack<T, V>*>(out + it.out_at + half) = o2;
  };

  // The first loads go out before the f64 table work, to overlap it.
  const int64_t step = blockDim.x;
  RopeItem<T, V> batch[kItemsInFlight];
#pragma unroll
  for (int r = 0; r < kItemsInFlight; ++r) load(threadIdx.x + r * step, batch[r]);

  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    A c, s;
    RopeAngle(theta, t, first_col + j, d, c, s);
    cos_tab[j] = c;
    sin_tab[j] = sign > 0 ? s : -s;  // −(s rounded) is (−s) rounded
  }
  __syncthreads();

  for (int64_t q = threadIdx.x; q < items; q += kItemsInFlight * step) {
#pragma unroll
    for (int r = 0; r < kItemsInFlight; ++r) rotate_store(batch[r]);
#pragma unroll
    for (int r = 0; r < kItemsInFlight; ++r) load(q + (kItemsInFlight + r) * step, batch[r]);
  }
}

// One item a thread, grid-stride: an item is V columns of x1 and the
// matching V of x2 (D/2 further) of one head vector, items in (token, head,
// pack) order so a warp reads adjacent 16-byte chunks. Token b·T + t at
// x_stride / out_stride elements; its cos and sin from rows t and
// table_t + t of table [2, table_t, half]. No shared memory and no
// synchronization: each thread loads, rotates and stores. 32-bit index
// math (64-bit division is emulated, and the kernel has little else to
// do): items < 2^31, the launcher checks. V as RopeKernel's (the table
// then on 16 bytes too).
template <typename T, int V>
__global__ void RopeFromTableKernel(unsigned items, unsigned packs, unsigned h_dim, unsigned t_dim,
                                    int64_t half, int64_t x_stride, int64_t out_stride,
                                    int64_t table_t, bool forward, const Acc<T>* __restrict__ table,
                                    const T* x, T* out) {
  using A = Acc<T>;
  for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < items; e += gridDim.x * blockDim.x) {
    const unsigned row = e / packs;  // token · H + head
    const unsigned col = (e - row * packs) * V;
    const unsigned token = row / h_dim;
    const unsigned t = token % t_dim;
    const int64_t in_token = (row - token * h_dim) * 2 * half + col;
    const int64_t x_at = token * x_stride + in_token, out_at = token * out_stride + in_token;
    const Pack<T, V> x1 = *reinterpret_cast<const Pack<T, V>*>(x + x_at);
    const Pack<T, V> x2 = *reinterpret_cast<const Pack<T, V>*>(x + x_at + half);
    A c[V], s[V];
    LoadPack<V>(table, t * half + col, V, c);
    LoadPack<V>(table, (table_t + t) * half + col, V, s);
    // RopeKernel's arithmetic, so its bits.
    Pack<T, V> o1, o2;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      A r1, r2;
      RotatePair(ToAcc(x1.v[k]), ToAcc(x2.v[k]), c[k], forward ? s[k] : -s[k], r1, r2);
      o1.v[k] = FromAcc<T>(r1);
      o2.v[k] = FromAcc<T>(r2);
    }
    *reinterpret_cast<Pack<T, V>*>(out + out_at) = o1;
    *reinterpret_cast<Pack<T, V>*>(out + out_at + half) = o2;
  }
}

// table [2, t_dim, half]: cos, then sin, of every position and pair column.
template <typename A>
__global__ void RopeTableKernel(int64_t t_dim, int64_t half, double theta, A* table) {
  const int64_t n = t_dim * half;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    RopeAngle(theta, e / half, e % half, 2 * half, table[e], table[n + e]);
  }
}

// ---------------------------------------------------------------- launchers

// launch(Tag<T>, V) for x's element type T and the pack both kernels take:
// 16-byte packs where every head vector's halves start on one (V divides
// D/2 and both token strides, every pointer on 16 bytes: the table's rows
// then too), else one element at a time.
template <typename Launch>
void DispatchPacks(const Tensor& x, int64_t half, int64_t x_stride, int64_t out_stride,
                   std::initializer_list<const void*> ptrs, Launch&& launch) {
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    LaunchPacked<T>(std::gcd(half, std::gcd(x_stride, out_stride)), ptrs,
                    [&](auto pack_tag) { launch(tag, pack_tag); });
  });
}

// The token stride of x [B, T, H, D] or of out (x's shape when
// token-strided; any shape of x's numel when contiguous), on the device.
int64_t CheckTokenStride(const ExecContext& ctx, const char* op, const Tensor& x, const Tensor& t,
                         const char* what) {
  if (t.is_contiguous()) {
    CheckOnDevice(ctx, t, op, what);
    return x.dim(2) * x.dim(3);
  }
  SM_CHECK_MSG(t.shape() == x.shape(), op, " token-strided ", what, " ", t.DebugString(), " for x ",
               x.DebugString(), " (same shape)");
  return CheckHeadRowsOnDevice(ctx, t, op, what).stride;
}

// Rope or RopeBackward (sign) by table's cos and sin: RopeFromTableKernel.
void RunFromTable(const ExecContext& ctx, const char* op, const Tensor& x, int64_t x_stride,
                  const Tensor& out, int64_t out_stride, const Tensor& table, double sign) {
  CheckOnDevice(ctx, table, op, "rope_table");  // a contiguous CUDA tensor
  ops::CheckRopeTableArgs(op, x, table);
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), half = x.dim(3) / 2;
  if (b * t * h * half == 0) return;
  SM_CHECK_MSG(b * t * h * half <= std::numeric_limits<int>::max(), op, " x ", x.DebugString(),
               " has more pairs than one launch covers");
  DispatchPacks(x, half, x_stride, out_stride, {x.raw_data(), out.raw_data(), table.raw_data()},
                [&](auto tag, auto pack_tag) {
                  using T = typename decltype(tag)::type;
                  constexpr int V = decltype(pack_tag)::value;
                  const int64_t items = b * t * h * (half / V);
                  RopeFromTableKernel<T, V><<<Blocks(items), kThreads, 0, Stream(ctx)>>>(
                      static_cast<unsigned>(items), static_cast<unsigned>(half / V),
                      static_cast<unsigned>(h), static_cast<unsigned>(t), half, x_stride,
                      out_stride, table.dim(1), sign > 0, Ptr<const Acc<T>>(table), Ptr<const T>(x),
                      Ptr<T>(out));
                });
  SM_CHECK_LAUNCH(ctx, op, "RopeFromTableKernel");
}

void Run(const ExecContext& ctx, const char* op, const Tensor& x, double theta, double sign,
         const Tensor& out, const Tensor& table) {
  SM_CHECK_MSG(x.ndim() == 4, op, " x must be [B, T, H, D], got ", x.DebugString());
  SM_CHECK_MSG(x.dim(3) % 2 == 0, op, " head dim must be even, got ", x.DebugString());
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype(), op, " out ", out.DebugString(),
               " for x ", x.DebugString());
  const int64_t x_stride = CheckTokenStride(ctx, op, x, x, "x");
  const int64_t out_stride = CheckTokenStride(ctx, op, x, out, "out");
  // In place needs the same layout: else a thread could overwrite elements
  // that another has yet to read.
  SM_CHECK_MSG(!x.SharesDataWith(out) || x_stride == out_stride, op, " out ", out.DebugString(),
               " aliases x ", x.DebugString(), " with another token stride (", out_stride, " vs ",
               x_stride, ")");
  if (table.defined()) {
    RunFromTable(ctx, op, x, x_stride, out, out_stride, table, sign);
    return;
  }
  const int64_t b = x.dim(0), t = x.dim(1), h = x.dim(2), d = x.dim(3);
  const int64_t half = d / 2, bh = b * h;
  if (t * half == 0 || bh == 0) return;
  const int64_t tiles = (half + kTileCols - 1) / kTileCols;
  SM_CHECK_MSG(t * tiles < (int64_t{1} << 31), op, " x ", x.DebugString(),
               " has more positions than one launch covers");
  DispatchPacks(
      x, half, x_stride, out_stride, {x.raw_data(), out.raw_data()}, [&](auto tag, auto pack_tag) {
        using T = typename decltype(tag)::type;
        constexpr int V = decltype(pack_tag)::value;
        // About kItemsInFlight items per thread; at most 65535 head ranges.
        const int64_t packs = std::min<int64_t>(half, kTileCols) / V;
        const int64_t bh_per_block = std::max<int64_t>(
            std::max<int64_t>(kItemsInFlight * kThreads / packs, 1), (bh + 65534) / 65535);
        const dim3 grid(static_cast<unsigned>(t * tiles),
                        static_cast<unsigned>((bh + bh_per_block - 1) / bh_per_block));
        RopeKernel<T, V><<<grid, kThreads, 0, Stream(ctx)>>>(t, h, bh, bh_per_block, d, x_stride,
                                                             out_stride, theta, sign,
                                                             Ptr<const T>(x), Ptr<T>(out));
      });
  SM_CHECK_LAUNCH(ctx, op, "RopeKernel");
}

}  // namespace

void Rope(const ExecContext& ctx, const Tensor& x, double theta, const Tensor& out,
          const Tensor& table) {
  Run(ctx, "Rope", x, theta, 1.0, out, table);
}

void RopeBackward(const ExecContext& ctx, const Tensor& d_out, double theta, const Tensor& d_x,
                  const Tensor& table) {
  Run(ctx, "RopeBackward", d_out, theta, -1.0, d_x, table);
}

void RopeTable(const ExecContext& ctx, double theta, const Tensor& table) {
  constexpr const char* kOp = "RopeTable";
  CheckOnDevice(ctx, table, kOp, "table");
  SM_CHECK_MSG(table.ndim() == 3 && table.dim(0) == 2 && table.is_contiguous() &&
                   (table.dtype() == DType::kF32 || table.dtype() == DType::kF64),
               kOp, " table must be a contiguous f32 or f64 [2, T, D/2], got ",
               table.DebugString());
  const int64_t t = table.dim(1), half = table.dim(2);
  if (t * half == 0) return;
  if (table.dtype() == DType::kF32) {
    RopeTableKernel<float>
        <<<Blocks(t * half), kThreads, 0, Stream(ctx)>>>(t, half, theta, Ptr<float>(table));
  } else {
    RopeTableKernel<double>
        <<<Blocks(t * half), kThreads, 0, Stream(ctx)>>>(t, half, theta, Ptr<double>(table));
  }
  SM_CHECK_LAUNCH(ctx, kOp, "RopeTableKernel");
}

}  // namespace scalemoe::cuda
