// Token permutation on the GPU, the contracts of core/ops.h and the
// arithmetic of core/cpu/permute_rows.cc and topk_routing.cc (CapacityDrop):
// SortByExpert, CapacityDrop, GatherRows, GatherScaledRows, ScatterAddRows,
// GatheredRowDot.
//
// Everything that groups rows is a stable radix sort (CUB's
// DeviceRadixSort, LSD and stable; its scratch from ctx.Empty) of
// (key, flat index) pairs, so equal keys keep index order exactly like the
// CPU's counting sort and stable_sort:
// - SortByExpert sorts the kept slots by expert with CUB (dropped ones
//   last), and counts[e] are two binary searches in the sorted keys. Under
//   SCALEMOE_SORT_BY_EXPERT=counting (not yet run on a GPU, so not the
//   default) it is a counting sort over E + 1 bins (the experts, then the
//   dropped slots) for E <= kCountingSortMaxExperts: per tile of slots a
//   histogram, one scan of the (bin, tile) counts in bin-major order, then
//   each tile places its slots in order (a warp's equal keys ranked by
//   __match_any_sync, the warps before it by their counts in shared
//   memory). Both give the CPU's stable order.
// - CapacityDrop sorts by priority (descending), then stably by expert: a
//   slot's place in its expert's run is its rank, ties to the earlier slot.
// - ScatterAddRows sorts the rows by destination, and each destination row
//   adds its sources in index order: the CPU's order, no atomics.
// Index values the CPU SM_CHECKs (expert ids out of range) cannot be checked
// without a host read: such slots are treated as dropped.
#include <climits>
#include <cub/device/device_radix_sort.cuh>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

#define SM_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// First position in sorted[0, n) whose value is >= v.
template <typename K>
__device__ __forceinline__ int64_t LowerBound(const K* sorted, int64_t n, K v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (sorted[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// keys[i] = expert of slot i if kept (kept null: all) and in range, else E.
__global__ void ExpertKeysKernel(int64_t m, int num_experts, const int32_t* ids,
                                 const int32_t* kept, const int32_t* order, uint32_t* keys,
                                 int32_t* values) {
  SM_GRID_STRIDE(g, m) {
    const int32_t i = order ? order[g] : static_cast<int32_t>(g);
    const int32_t id = ids[i];
    const bool keep = (kept == nullptr || kept[i] != 0) && id >= 0 && id < num_experts;
    keys[g] = keep ? static_cast<uint32_t>(id) : static_cast<uint32_t>(num_experts);
    values[g] = i;
  }
}

// counts[e] = number of sorted keys equal to e.
__global__ void CountRunsKernel(int num_experts, int64_t m, const uint32_t* sorted,
                                int64_t* counts) {
  SM_GRID_STRIDE(e, num_experts) {
    const uint32_t key = static_cast<uint32_t>(e);
    counts[e] = LowerBound(sorted, m, key + 1) - LowerBound(sorted, m, key);
  }
}

// perm_slot[g] = slot of sorted row g, −1 past the kept ones.
__global__ void PermSlotKernel(int64_t m, int num_experts, const uint32_t* keys,
                               const int32_t* values, int32_t* perm_slot) {
  SM_GRID_STRIDE(g, m) {
    perm_slot[g] = keys[g] < static_cast<uint32_t>(num_experts) ? values[g] : -1;
  }
}

// Order-preserving unsigned keys, descending: larger priority sorts first;
// −0 and +0 are one key (equal, as the CPU compares them).
__device__ __forceinline__ uint32_t DescendingKey(float v) {
  const uint32_t bits = __float_as_uint(v == 0.0f ? 0.0f : v);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ordered;
}
__device__ __forceinline__ unsigned long long DescendingKey(double v) {
  const unsigned long long bits =
      static_cast<unsigned long long>(__double_as_longlong(v == 0.0 ? 0.0 : v));
  const unsigned long long sign = 1ull << 63;
  const unsigned long long ordered = (bits & sign) ? ~bits : (bits | sign);
  return ~ordered;
}

template <typename T, typename K>
__global__ void PriorityKeysKernel(int64_t m, const T* priority, K* keys, int32_t* values) {
  SM_GRID_STRIDE(i, m) {
    keys[i] = DescendingKey(priority[i]);
    values[i] = static_cast<int32_t>(i);
  }
}

__global__ void KeepAllKernel(int64_t m, int32_t* kept) {
  SM_GRID_STRIDE(i, m) { kept[i] = 1; }
}

// Sorted by (expert, priority descending, slot): a slot is kept when its
// place in its expert's run is below capacity.
__global__ void CapacityKeepKernel(int64_t m, int num_experts, int64_t capacity,
                                   const uint32_t* keys, const int32_t* slots, int32_t* kept) {
  SM_GRID_STRIDE(g, m) {
    const uint32_t e = keys[g];
    const int64_t rank = g - LowerBound(keys, m, e);
    kept[slots[g]] = e < static_cast<uint32_t>(num_experts) && rank < capacity ? 1 : 0;
  }
}

// out row i = x row idx[i] / divisor (zeros when the index is negative or
// past x), moved in words of U (16 bytes where the rows allow): a copy of
// bits, whatever the rows' dtype.
template <typename U>
__global__ void GatherRowsKernel(int64_t m, int64_t words, int64_t x_rows, const U* x,
                                 const int32_t* idx, int divisor, U* out) {
  SM_GRID_STRIDE(e, m * words) {
    const int64_t i = e / words, j = e - i * words;
    const int32_t index = idx[i];
    const int64_t r = index < 0 ? -1 : index / divisor;
    U v{};
    if (r >= 0 && r < x_rows) v = x[r * words + j];
    out[e] = v;
  }
}

// out row i = w[idx[i]] · x row idx[i] / divisor (zeros when the index is
// negative or past x), V elements a thread: ScaleRowsCols's product (in the
// compute type, rounded once) of GatherRows's row. W is T or f32 for bf16 T.
template <typename T, typename W, int V>
__global__ void GatherScaledRowsKernel(int64_t m, int64_t c, int64_t x_rows, const T* x,
                                       const int32_t* idx, int divisor, const W* w, T* out) {
  using A = Acc<T>;
  const int64_t packs = c / V;
  SM_GRID_STRIDE(e, m * packs) {
    const int64_t i = e / packs, j = (e - i * packs) * V;
    const int32_t index = idx[i];
    const int64_t r = index < 0 ? -1 : index / divisor;
    A v[V];
    if (r >= 0 && r < x_rows) {
      const A wi = ToAcc(w[index]);
      LoadPack<V>(x + r * c, j, V, v);
#pragma unroll
      for (int q = 0; q < V; ++q) v[q] = wi * v[q];
    } else {
#pragma unroll
      for (int q = 0; q < V; ++q) v[q] = A(0);
    }
    StorePack<V>(out + i * c, j, V, v);
  }
}

// keys[i] = destination row of source row i, out_rows when it has none.
__global__ void DestinationKeysKernel(int64_t m, int64_t out_rows, const int32_t* idx, int divisor,
                                      uint32_t* keys, int32_t* values) {
  SM_GRID_STRIDE(i, m) {
    const int64_t r = idx[i] < 0 ? out_rows : idx[i] / divisor;
    keys[i] = static_cast<uint32_t>(r < out_rows ? r : out_rows);
    values[i] = static_cast<int32_t>(i);
  }
}

// begins[r] = first sorted position of destination r (r in [0, R]).
__global__ void RunBeginsKernel(int64_t out_rows, int64_t m, const uint32_t* sorted,
                                int64_t* begins) {
  SM_GRID_STRIDE(r, out_rows + 1) { begins[r] = LowerBound(sorted, m, static_cast<uint32_t>(r)); }
}

// out[r, j] += Σ over the sources of r in index order of w·y (the CPU's
// sequence of additions, in the element type).
template <typename T>
__global__ void ScatterAddKernel(int64_t out_rows, int64_t c, const int64_t* begins,
                                 const int32_t* sources, const T* y, const T* w, T* out) {
  SM_GRID_STRIDE(e, out_rows * c) {
    const int64_t r = e / c, j = e - r * c;
    const int64_t begin = begins[r], end = begins[r + 1];
    if (begin == end) continue;
    T o = out[e];
    for (int64_t g = begin; g < end; ++g) {
      const int64_t i = sources[g];
      const T wi = w ? w[i] : T(1);
      o += wi * y[i * c + j];
    }
    out[e] = o;
  }
}

// One warp per row i: out[i] = <x[idx[i] / divisor], y[i]>.
template <typename T>
__global__ void GatheredDotKernel(int64_t m, int64_t c, int64_t x_rows, const T* x,
                                  const int32_t* idx, int divisor, const T* y, T* out) {
  const int lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t i = first; i < m; i += warps) {
    const int32_t index = idx[i];
    const int64_t r = index < 0 ? -1 : index / divisor;
    T acc = 0;
    if (r >= 0 && r < x_rows) {
      for (int64_t j = lane; j < c; j += 32) acc += x[r * c + j] * y[i * c + j];
    }
    acc = WarpSum(acc);
    if (lane == 0) out[i] = acc;
  }
}

// ---------------------------------------------------------------- SortByExpert's counting sort

// A block counts and then places one tile of kSortItems x kSortThreads
// slots: item j of thread t is slot tile_first + j·kSortThreads + t, so the
// items of a chunk j are consecutive slots, lane order within a warp and
// warp order within the block.
constexpr int kSortThreads = 256;
constexpr int kSortWarps = kSortThreads / 32;
constexpr int kSortItems = 4;
constexpr int64_t kSortTile = int64_t{kSortItems} * kSortThreads;
constexpr int kScanThreads = 1024;
// (1 + kSortWarps)·(E + 1) ints of shared memory stay within the default 48 KB.
constexpr int kCountingSortMaxExperts = 1024;

// The bin of slot i: its expert if kept and in range, else num_experts.
__device__ __forceinline__ uint32_t SlotBin(int64_t i, int num_experts, const int32_t* ids,
                                            const int32_t* kept) {
  const int32_t id = ids[i];
  const bool keep = kept[i] != 0 && id >= 0 && id < num_experts;
  return keep ? static_cast<uint32_t>(id) : static_cast<uint32_t>(num_experts);
}

// The bins of this thread's items (kNoBin past m), loaded together.
constexpr uint32_t kNoBin = 0xffffffffu;
__device__ __forceinline__ void LoadTileBins(int64_t m, int num_experts, const int32_t* ids,
                                             const int32_t* kept, uint32_t (&bins)[kSortItems]) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSortTile + threadIdx.x;
#pragma unroll
  for (int j = 0; j < kSortItems; ++j) {
    const int64_t i = first + int64_t{j} * kSortThreads;
    bins[j] = i < m ? SlotBin(i, num_experts, ids, kept) : kNoBin;
  }
}

// tile_counts[bin · tiles + tile] = the tile's slots in bin (E + 1 bins).
// Dynamic shared memory: E + 1 ints.
__global__ void TileBinCountsKernel(int64_t m, int num_experts, const int32_t* ids,
                                    const int32_t* kept, int32_t* tile_counts) {
  extern __shared__ int32_t hist[];
  const int bins = num_experts + 1;
  for (int x = threadIdx.x; x < bins; x += blockDim.x) hist[x] = 0;
  uint32_t bin[kSortItems];
  LoadTileBins(m, num_experts, ids, kept, bin);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kSortItems; ++j) {
    if (bin[j] != kNoBin) atomicAdd(&hist[bin[j]], 1);
  }
  __syncthreads();
  for (int x = threadIdx.x; x < bins; x += blockDim.x) {
    tile_counts[static_cast<int64_t>(x) * gridDim.x + blockIdx.x] = hist[x];
  }
}

// One block of kScanThreads: counts [n] (bin-major (bin, tile) counts)
// become their exclusive prefix sums in place, each thread scanning its
// own stretch; then counts_out[e] = the run of bin e (e < E).
__global__ void BinOffsetsKernel(int64_t n, int64_t tiles, int num_experts, int32_t* counts,
                                 int64_t* counts_out) {
  __shared__ int64_t warp_sums[kScanThreads / 32];
  const int64_t per = (n + kScanThreads - 1) / kScanThreads;
  const int64_t first = threadIdx.x * per;
  const int64_t last = first + per < n ? first + per : n;
  int64_t own = 0;
  for (int64_t i = first; i < last; ++i) own += counts[i];
  // Exclusive scan of the threads' sums: within each warp, then the warps'.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t inclusive = own;
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, d);
    if (lane >= d) inclusive += up;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int64_t w = warp_sums[lane];
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int64_t up = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += up;
    }
    warp_sums[lane] = w;  // inclusive over the warps
  }
  __syncthreads();
  int64_t running = inclusive - own + (warp > 0 ? warp_sums[warp - 1] : 0);
  for (int64_t i = first; i < last; ++i) {
    const int64_t c = counts[i];
    counts[i] = static_cast<int32_t>(running);
    running += c;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    counts_out[e] = static_cast<int64_t>(counts[(e + 1) * tiles]) - counts[e * tiles];
  }
}

// Each tile's slots into their places: perm_slot[offset(bin, tile) + the
// slot's rank among the tile's earlier slots of its bin] = the slot (−1
// for the dropped bin). Chunk by chunk: a lane's rank among its warp's
// equal bins from __match_any_sync, plus the counts of the warps before it
// (warp_counts), plus the chunks before (next). Dynamic shared memory:
// (1 + kSortWarps)·(E + 1) ints.
__global__ void PlaceTileSlotsKernel(int64_t m, int num_experts, const int32_t* ids,
                                     const int32_t* kept, const int32_t* offsets,
                                     int32_t* perm_slot) {
  extern __shared__ int32_t smem[];
  const int bins = num_experts + 1;
  int32_t* next = smem;                // [bins]: where the tile's next slot of each bin goes
  int32_t* warp_counts = smem + bins;  // [kSortWarps][bins], zero between chunks
  for (int x = threadIdx.x; x < bins; x += blockDim.x) {
    next[x] = offsets[static_cast<int64_t>(x) * gridDim.x + blockIdx.x];
    for (int w = 0; w < kSortWarps; ++w) warp_counts[w * bins + x] = 0;
  }
  uint32_t bin[kSortItems];
  LoadTileBins(m, num_experts, ids, kept, bin);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned lanes_before = (1u << lane) - 1;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kSortTile + threadIdx.x;
#pragma unroll
  for (int j = 0; j < kSortItems; ++j) {
    const uint32_t b = bin[j];
    // Past m a lane's kNoBin matches no slot's bin.
    const unsigned peers = __match_any_sync(0xffffffffu, b);
    const int rank = __popc(peers & lanes_before);
    const bool leader = b != kNoBin && rank == 0;
    if (leader) warp_counts[warp * bins + b] = __popc(peers);
    __syncthreads();
    if (b != kNoBin) {
      int32_t pos = next[b] + rank;
      for (int w = 0; w < warp; ++w) pos += warp_counts[w * bins + b];
      const int64_t i = first + int64_t{j} * kSortThreads;
      perm_slot[pos] = b < static_cast<uint32_t>(num_experts) ? static_cast<int32_t>(i) : -1;
    }
    __syncthreads();
    if (leader) {
      atomicAdd(&next[b], __popc(peers));
      warp_counts[warp * bins + b] = 0;
    }
    __syncthreads();
  }
}

#undef SM_GRID_STRIDE

// ---------------------------------------------------------------- launchers

// Bits that hold every key in [0, max_key].
int KeyBits(int64_t max_key) {
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) <= max_key) ++bits;
  return bits;
}

// Stable sort of (keys, values) pairs by the low `bits` bits of the keys,
// on ctx's stream, scratch from ctx.Empty. Returns the sorted pair buffers.
template <typename K>
std::pair<Tensor, Tensor> StableSortPairs(const ExecContext& ctx, const char* op,
                                          const Tensor& keys, const Tensor& values, int bits) {
  const int64_t n = keys.numel();
  SM_CHECK_MSG(n <= INT32_MAX, op, ": ", n, " items do not fit the sort's i32 count");
  Tensor keys_out = ctx.Empty(keys.shape(), keys.dtype());
  Tensor values_out = ctx.Empty(values.shape(), values.dtype());
  size_t scratch_bytes = 0;
  SM_CHECK_CUDA_CALL(
      ctx,
      cub::DeviceRadixSort::SortPairs(nullptr, scratch_bytes, Ptr<const K>(keys), Ptr<K>(keys_out),
                                      Ptr<const int32_t>(values), Ptr<int32_t>(values_out),
                                      static_cast<int>(n), 0, bits, Stream(ctx)),
      op);
  Tensor scratch = ctx.Empty({static_cast<int64_t>((scratch_bytes + 7) / 8) + 1}, DType::kI64);
  SM_CHECK_CUDA_CALL(ctx,
                     cub::DeviceRadixSort::SortPairs(
                         scratch.raw_data(), scratch_bytes, Ptr<const K>(keys), Ptr<K>(keys_out),
                         Ptr<const int32_t>(values), Ptr<int32_t>(values_out), static_cast<int>(n),
                         0, bits, Stream(ctx)),
                     op);
  return {keys_out, values_out};
}

void CheckIndex(const ExecContext& ctx, const char* op, const char* what, const Tensor& t,
                DType dtype) {
  CheckOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(t.dtype() == dtype, op, ": ", what, " must be ", DTypeName(dtype), ", got ",
               t.DebugString());
}

// rows [M, C] indexed by indices [M] into table [*, C].
void CheckIndexed(const ExecContext& ctx, const char* op, const Tensor& rows, const Tensor& indices,
                  const Tensor& table, int divisor) {
  CheckOnDevice(ctx, rows, op, "rows");
  CheckOnDevice(ctx, table, op, "table");
  CheckIndex(ctx, op, "indices", indices, DType::kI32);
  SM_CHECK_MSG(indices.numel() == rows.dim(0) && rows.ndim() == 2 && table.ndim() == 2 &&
                   rows.dim(1) == table.dim(1) && rows.dtype() == table.dtype() && divisor >= 1,
               op, ": rows ", rows.DebugString(), " indices ", indices.DebugString(), " table ",
               table.DebugString(), " divisor ", divisor);
}

// SortByExpert's counting sort (m > 0 slots, E + 1 bins): the tiles'
// counts, their offsets and the experts' counts, then the placing.
void SortByExpertCounting(const ExecContext& ctx, const char* op, const Tensor& expert_ids,
                          const Tensor& kept, int num_experts, const Tensor& perm_slot,
                          const Tensor& counts) {
  const int64_t m = expert_ids.numel(), bins = num_experts + 1;
  const int64_t tiles = (m + kSortTile - 1) / kSortTile;
  SM_CHECK_MSG(tiles * bins <= INT32_MAX, op, ": ", tiles, " tiles x ", bins,
               " bins do not fit the sort's i32 scratch");
  Tensor tile_counts = ctx.Empty({tiles * bins}, DType::kI32);
  const auto grid = static_cast<unsigned>(tiles);
  const int32_t *ids = Ptr<const int32_t>(expert_ids), *keep = Ptr<const int32_t>(kept);
  TileBinCountsKernel<<<grid, kSortThreads, bins * sizeof(int32_t), Stream(ctx)>>>(
      m, num_experts, ids, keep, Ptr<int32_t>(tile_counts));
  SM_CHECK_LAUNCH(ctx, op, "TileBinCountsKernel");
  BinOffsetsKernel<<<1, kScanThreads, 0, Stream(ctx)>>>(
      tiles * bins, tiles, num_experts, Ptr<int32_t>(tile_counts), Ptr<int64_t>(counts));
  SM_CHECK_LAUNCH(ctx, op, "BinOffsetsKernel");
  PlaceTileSlotsKernel<<<grid, kSortThreads, (1 + kSortWarps) * bins * sizeof(int32_t),
                         Stream(ctx)>>>(m, num_experts, ids, keep, Ptr<const int32_t>(tile_counts),
                                        Ptr<int32_t>(perm_slot));
  SM_CHECK_LAUNCH(ctx, op, "PlaceTileSlotsKernel");
}

}  // namespace

void SortByExpert(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept,
                  int num_experts, const Tensor& perm_slot, const Tensor& counts) {
  const char* op = "SortByExpert";
  const int64_t m = expert_ids.numel();
  CheckIndex(ctx, op, "expert_ids", expert_ids, DType::kI32);
  CheckIndex(ctx, op, "kept", kept, DType::kI32);
  CheckIndex(ctx, op, "perm_slot", perm_slot, DType::kI32);
  CheckIndex(ctx, op, "counts", counts, DType::kI64);
  SM_CHECK_MSG(kept.numel() == m && perm_slot.numel() == m && counts.numel() == num_experts &&
                   num_experts >= 1,
               op, ": ids ", expert_ids.DebugString(), " kept ", kept.DebugString(), " perm_slot ",
               perm_slot.DebugString(), " counts ", counts.DebugString());
  SM_CHECK_MSG(m <= INT32_MAX, op, ": ", m, " slots do not fit perm_slot's i32 values");
  static const bool counting = EnvEquals("SCALEMOE_SORT_BY_EXPERT", "counting");
  if (m > 0 && num_experts <= kCountingSortMaxExperts && counting) {
    SortByExpertCounting(ctx, op, expert_ids, kept, num_experts, perm_slot, counts);
    return;
  }
  Tensor keys = ctx.Empty({m}, DType::kI32);
  Tensor values = ctx.Empty({m}, DType::kI32);
  if (m > 0) {
    ExpertKeysKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, num_experts, Ptr<const int32_t>(expert_ids), Ptr<const int32_t>(kept), nullptr,
        Ptr<uint32_t>(keys), Ptr<int32_t>(values));
    SM_CHECK_LAUNCH(ctx, op, "ExpertKeysKernel");
    auto [sorted_keys, sorted_values] =
        StableSortPairs<uint32_t>(ctx, op, keys, values, KeyBits(num_experts));
    keys = sorted_keys;
    PermSlotKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, num_experts, Ptr<const uint32_t>(keys), Ptr<const int32_t>(sorted_values),
        Ptr<int32_t>(perm_slot));
    SM_CHECK_LAUNCH(ctx, op, "PermSlotKernel");
  }
  CountRunsKernel<<<Blocks(num_experts), kThreads, 0, Stream(ctx)>>>(
      num_experts, m, Ptr<const uint32_t>(keys), Ptr<int64_t>(counts));
  SM_CHECK_LAUNCH(ctx, op, "CountRunsKernel");
}

void CapacityDrop(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& priority,
                  int num_experts, int64_t capacity, const Tensor& kept) {
  const char* op = "CapacityDrop";
  CheckIndex(ctx, op, "expert_ids", expert_ids, DType::kI32);
  CheckIndex(ctx, op, "kept", kept, DType::kI32);
  CheckOnDevice(ctx, priority, op, "priority");
  const int64_t m = expert_ids.numel();
  SM_CHECK_MSG(expert_ids.ndim() == 2 && kept.shape() == expert_ids.shape() &&
                   priority.numel() == m && num_experts >= 1,
               op, ": expert_ids ", expert_ids.DebugString(), " kept ", kept.DebugString(),
               " priority ", priority.DebugString());
  if (m == 0) return;
  if (capacity <= 0) {
    KeepAllKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(m, Ptr<int32_t>(kept));
    SM_CHECK_LAUNCH(ctx, op, "KeepAllKernel");
    return;
  }
  DispatchF32F64(op, priority, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // f32 priorities sort as u32 keys, f64 as u64 (i64 buffers of the same bits).
    using K = std::conditional_t<sizeof(T) == 4, uint32_t, unsigned long long>;
    const DType key_dtype = sizeof(T) == 4 ? DType::kI32 : DType::kI64;
    Tensor keys = ctx.Empty({m}, key_dtype);
    Tensor values = ctx.Empty({m}, DType::kI32);
    PriorityKeysKernel<T, K><<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, Ptr<const T>(priority), Ptr<K>(keys), Ptr<int32_t>(values));
    SM_CHECK_LAUNCH(ctx, op, "PriorityKeysKernel");
    auto by_priority = StableSortPairs<K>(ctx, op, keys, values, static_cast<int>(8 * sizeof(K)));
    Tensor expert_keys = ctx.Empty({m}, DType::kI32);
    Tensor slots = ctx.Empty({m}, DType::kI32);
    // Every slot takes part (kept = null); out-of-range ids sort last.
    ExpertKeysKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, num_experts, Ptr<const int32_t>(expert_ids), nullptr,
        Ptr<const int32_t>(by_priority.second), Ptr<uint32_t>(expert_keys), Ptr<int32_t>(slots));
    SM_CHECK_LAUNCH(ctx, op, "ExpertKeysKernel");
    auto by_expert = StableSortPairs<uint32_t>(ctx, op, expert_keys, slots, KeyBits(num_experts));
    CapacityKeepKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, num_experts, capacity, Ptr<const uint32_t>(by_expert.first),
        Ptr<const int32_t>(by_expert.second), Ptr<int32_t>(kept));
    SM_CHECK_LAUNCH(ctx, op, "CapacityKeepKernel");
  });
}

void GatherRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                const Tensor& out) {
  CheckIndexed(ctx, "GatherRows", out, indices, x, divisor);
  const int64_t m = out.dim(0), c = out.dim(1);
  if (m * c == 0) return;
  SM_CHECK_MSG(x.dtype() == DType::kF32 || x.dtype() == DType::kF64 || x.dtype() == DType::kBF16,
               "GatherRows: rows must be f32, f64 or bf16, got ", x.DebugString());
  const int64_t row_bytes = c * static_cast<int64_t>(DTypeSize(x.dtype()));
  auto launch = [&](auto word) {
    using U = decltype(word);
    const int64_t words = row_bytes / static_cast<int64_t>(sizeof(U));
    GatherRowsKernel<U><<<Blocks(m * words), kThreads, 0, Stream(ctx)>>>(
        m, words, x.dim(0), static_cast<const U*>(x.raw_data()), Ptr<const int32_t>(indices),
        divisor, static_cast<U*>(out.raw_data()));
  };
  const auto aligned = [&](int64_t n) {
    return row_bytes % n == 0 && reinterpret_cast<uintptr_t>(x.raw_data()) % n == 0 &&
           reinterpret_cast<uintptr_t>(out.raw_data()) % n == 0;
  };
  if (aligned(16)) {
    launch(uint4{});
  } else if (aligned(4)) {
    launch(uint32_t{});
  } else {
    launch(uint16_t{});  // bf16 rows of an odd width
  }
  SM_CHECK_LAUNCH(ctx, "GatherRows", "GatherRowsKernel");
}

void GatherScaledRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                      const Tensor& weights, const Tensor& out) {
  const char* op = "GatherScaledRows";
  CheckIndexed(ctx, op, out, indices, x, divisor);
  CheckOnDevice(ctx, weights, op, "weights");
  const bool f32_weights = weights.dtype() == DType::kF32 && x.dtype() == DType::kBF16;
  SM_CHECK_MSG(
      weights.numel() == x.dim(0) * divisor && (weights.dtype() == x.dtype() || f32_weights), op,
      ": weights ", weights.DebugString(), " for x ", x.DebugString(), " and divisor ", divisor,
      " (x's dtype, or f32 for bf16 x)");
  const int64_t m = out.dim(0), c = out.dim(1);
  if (m * c == 0) return;
  const auto launch = [&](auto x_tag, auto w_tag) {
    using T = typename decltype(x_tag)::type;
    using W = typename decltype(w_tag)::type;
    LaunchPacked<T>(c, {x.raw_data(), out.raw_data()}, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      GatherScaledRowsKernel<T, W, V><<<Blocks(m * c / V), kThreads, 0, Stream(ctx)>>>(
          m, c, x.dim(0), Ptr<const T>(x), Ptr<const int32_t>(indices), divisor,
          Ptr<const W>(weights), Ptr<T>(out));
    });
  };
  if (f32_weights) {
    launch(Tag<__nv_bfloat16>{}, Tag<float>{});
  } else {
    DispatchFloat(x, [&](auto tag) { launch(tag, tag); });
  }
  SM_CHECK_LAUNCH(ctx, op, "GatherScaledRowsKernel");
}

void ScatterAddRows(const ExecContext& ctx, const Tensor& y, const Tensor& indices, int divisor,
                    const Tensor& weights, const Tensor& out) {
  const char* op = "ScatterAddRows";
  CheckIndexed(ctx, op, y, indices, out, divisor);
  if (weights.defined()) {
    CheckOnDevice(ctx, weights, op, "weights");
    SM_CHECK_MSG(weights.numel() == y.dim(0) && weights.dtype() == y.dtype(), op, " weights ",
                 weights.DebugString());
  }
  const int64_t m = y.dim(0), c = y.dim(1), out_rows = out.dim(0);
  SM_CHECK_MSG(out_rows < INT32_MAX, op, ": ", out_rows, " output rows");
  if (m == 0 || c == 0 || out_rows == 0) return;
  DispatchF32F64(op, y, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Tensor keys = ctx.Empty({m}, DType::kI32);
    Tensor values = ctx.Empty({m}, DType::kI32);
    DestinationKeysKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, out_rows, Ptr<const int32_t>(indices), divisor, Ptr<uint32_t>(keys),
        Ptr<int32_t>(values));
    SM_CHECK_LAUNCH(ctx, op, "DestinationKeysKernel");
    auto sorted = StableSortPairs<uint32_t>(ctx, op, keys, values, KeyBits(out_rows));
    Tensor begins = ctx.Empty({out_rows + 1}, DType::kI64);
    RunBeginsKernel<<<Blocks(out_rows + 1), kThreads, 0, Stream(ctx)>>>(
        out_rows, m, Ptr<const uint32_t>(sorted.first), Ptr<int64_t>(begins));
    SM_CHECK_LAUNCH(ctx, op, "RunBeginsKernel");
    ScatterAddKernel<T><<<Blocks(out_rows * c), kThreads, 0, Stream(ctx)>>>(
        out_rows, c, Ptr<const int64_t>(begins), Ptr<const int32_t>(sorted.second), Ptr<const T>(y),
        Ptr<const T>(weights), Ptr<T>(out));
    SM_CHECK_LAUNCH(ctx, op, "ScatterAddKernel");
  });
}

void GatheredRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                    const Tensor& y, const Tensor& out) {
  CheckIndexed(ctx, "GatheredRowDot", y, indices, x, divisor);
  CheckOnDevice(ctx, out, "GatheredRowDot", "out");
  SM_CHECK_MSG(out.numel() == y.dim(0) && out.dtype() == y.dtype(), "GatheredRowDot out ",
               out.DebugString());
  const int64_t m = y.dim(0), c = y.dim(1);
  if (m == 0) return;
  DispatchF32F64("GatheredRowDot", y, [&](auto tag) {
    using T = typename decltype(tag)::type;
    GatheredDotKernel<T><<<Blocks(m * 32), kThreads, 0, Stream(ctx)>>>(
        m, c, x.dim(0), Ptr<const T>(x), Ptr<const int32_t>(indices), divisor, Ptr<const T>(y),
        Ptr<T>(out));
  });
  SM_CHECK_LAUNCH(ctx, "GatheredRowDot", "GatheredDotKernel");
}

}  // namespace scalemoe::cuda
