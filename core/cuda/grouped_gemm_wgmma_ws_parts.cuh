// The parts of the grouped GEMMs' persistent warp-specialized wgmma kernel
// (sm_90a; core/cuda/grouped_gemm_wgmma_ws.cu, whose two multiplying
// warpgroups share each tile): the block's warpgroups and their register
// hand-over, the loaders' operand streams, the epilogue staged through
// shared memory and the walk over the launch's tiles. Included by that
// file only (anonymous namespace).
#pragma once

#include "core/cuda/grouped_gemm_wgmma_tiles.cuh"
#include "core/cuda/mbarrier.cuh"
#include "core/cuda/swiglu_math.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

// A block: a warpgroup of loaders, then two of multipliers.
constexpr int kLoaders = 128, kMultipliers = 256, kWsThreads = kLoaders + kMultipliers;
// The registers a thread keeps after the hand-over. Their sum cannot
// exceed what the block was launched with (ptxas gives each of the 384
// threads 168), or the multipliers' claim waits forever.
constexpr int kLaunchRegisters = 168, kLoaderRegisters = 48, kMultiplierRegisters = 224;
static_assert(kLoaders * kLoaderRegisters + kMultipliers * kMultiplierRegisters <=
                  kWsThreads * kLaunchRegisters,
              "the block's registers");

// One loader's share of an operand's tile (LoadChunk's chunks and layout),
// its addresses worked out once per output tile: its chunks are kIters
// copies kRowStep smem rows apart, and a k step costs a pointer bump.
template <int kMn, bool kKMajor>
struct OperandStream {
  static constexpr int kChunks = kMn * kTileK / 8, kChunksPerRow = kKMajor ? 8 : kMn / 8;
  static_assert(kChunks % kLoaders == 0 && kLoaders % kChunksPerRow == 0, "whole rows a pass");
  static constexpr int kIters = kChunks / kLoaders, kRowStep = kLoaders / kChunksPerRow;
  const bf16* base;  // the operand (an address for the zero-fills)
  const bf16* src;   // this loader's first chunk at k step 0
  int64_t it_step;   // elements from one of its chunks to the next
  int64_t k_step;    // ... from one k step to the next
  int64_t mn_room;   // K-major: rows left below mn_lim at its first chunk; else > 0 if in
  int64_t k_room;    // K-major: > 0 if its k column is in at k step 0; else rows left
  int row0, col;     // its first chunk's smem row and 16-byte column

  __device__ __forceinline__ OperandStream(const bf16* b, int64_t ld, int64_t mn0, int64_t mn_lim,
                                           int64_t k_lim, int loader)
      : base(b), it_step(kRowStep * ld) {
    row0 = loader / kChunksPerRow;
    col = loader % kChunksPerRow;
    if constexpr (kKMajor) {  // a row: one mn, 64 of k
      src = b + (mn0 + row0) * ld + col * 8;
      k_step = kTileK;
      mn_room = mn_lim - (mn0 + row0);
      k_room = k_lim - col * 8;
    } else {  // a row: one k, kMn of mn
      src = b + row0 * ld + mn0 + col * 8;
      k_step = kTileK * ld;
      mn_room = mn_lim - (mn0 + col * 8);
      k_room = k_lim - row0;
    }
  }

  // k step t into `tile`.
  __device__ __forceinline__ void Load(unsigned char* tile, int64_t t) const {
    const bf16* q = src + t * k_step;
    const int64_t k_left = k_room - t * kTileK;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowStep;
      int offset;
      bool valid;
      if constexpr (kKMajor) {
        offset = row * 128 + ((col ^ (row % 8)) * 16);
        valid = it * kRowStep < mn_room && k_left > 0;
      } else {
        offset = (col / 8) * 8192 + row * 128 + (((col % 8) ^ (row % 8)) * 16);
        valid = mn_room > 0 && it * kRowStep < k_left;
      }
      CpAsync16(tile + offset, valid ? q : base, valid);
      q += it_step;
    }
  }
};

// OperandStream<kMn, true> of an operand whose rows are gathered
// (RowGather: the forward's a): the same chunks in the same places, each
// row read from the source row its index names. The source rows are found
// once per output tile (-1: past the group's rows, zero-filled). `rows`
// points at the index of the group's first row.
template <int kMn>
struct GatheredRowStream {
  using Plain = OperandStream<kMn, true>;
  static constexpr int kIters = Plain::kIters, kRowStep = Plain::kRowStep;
  const bf16* base;  // the source
  int64_t ld;
  int64_t k_room;  // > 0 if its k column is in at k step 0
  int32_t src_row[kIters];
  int row0, col;

  __device__ __forceinline__ GatheredRowStream(const bf16* x, int64_t x_ld, const int32_t* rows,
                                               int divisor, int64_t mn0, int64_t mn_lim,
                                               int64_t k_lim, int loader)
      : base(x), ld(x_ld) {
    row0 = loader / Plain::kChunksPerRow;
    col = loader % Plain::kChunksPerRow;
    k_room = k_lim - col * 8;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int64_t m = mn0 + row0 + it * kRowStep;
      const int32_t index = m < mn_lim ? __ldg(rows + m) : -1;
      src_row[it] = index < 0 ? -1 : index / divisor;
    }
  }

  __device__ __forceinline__ void Load(unsigned char* tile, int64_t t) const {
    const int64_t k_left = k_room - t * kTileK;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowStep;
      const int offset = row * 128 + ((col ^ (row % 8)) * 16);
      const bool valid = src_row[it] >= 0 && k_left > 0;
      const bf16* q = valid ? base + src_row[it] * ld + col * 8 + t * kTileK : base;
      CpAsync16(tile + offset, q, valid);
    }
  }
};

// OperandStream<kMn, false> of an operand whose rows, the reduction's, are
// gathered (RowGather: the weight gradient's b): the same chunks in the
// same places, each k row read from the source row its index names, the
// indices read at every k step. `rows` points at the index of the group's
// first row.
template <int kMn>
struct GatheredKStream {
  using Plain = OperandStream<kMn, false>;
  static constexpr int kIters = Plain::kIters, kRowStep = Plain::kRowStep;
  const bf16* base;      // the source (an address for the zero-fills)
  const bf16* col_base;  // its column of this loader's chunks
  const int32_t* rows;   // the index of this loader's first k row
  int64_t ld;
  int64_t mn_room;  // > 0 if its columns are in
  int64_t k_room;   // k rows left from its first
  int divisor, row0, col;

  __device__ __forceinline__ GatheredKStream(const bf16* x, int64_t x_ld, const int32_t* group_rows,
                                             int row_divisor, int64_t mn0, int64_t mn_lim,
                                             int64_t k_lim, int loader)
      : base(x), ld(x_ld), divisor(row_divisor) {
    row0 = loader / Plain::kChunksPerRow;
    col = loader % Plain::kChunksPerRow;
    col_base = x + mn0 + col * 8;
    rows = group_rows + row0;
    mn_room = mn_lim - (mn0 + col * 8);
    k_room = k_lim - row0;
  }

  __device__ __forceinline__ void Load(unsigned char* tile, int64_t t) const {
    const int32_t* r = rows + t * kTileK;
    const int64_t k_left = k_room - t * kTileK;
    // A batch's indices all loaded before its first copy waits on one; 8 a
    // batch (all 16 of the 256-wide tile at once spilled 24 bytes at the
    // loaders' 48 registers; 8 or 4 spill 4).
    constexpr int kBatch = kIters < 8 ? kIters : 8;
    static_assert(kIters % kBatch == 0, "whole batches");
#pragma unroll
    for (int b0 = 0; b0 < kIters; b0 += kBatch) {
      int32_t index[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int it = b0 + i;
        index[i] = mn_room > 0 && it * kRowStep < k_left ? __ldg(r + it * kRowStep) : -1;
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int row = row0 + (b0 + i) * kRowStep;
        const int offset = (col / 8) * 8192 + row * 128 + (((col % 8) ^ (row % 8)) * 16);
        const bool valid = index[i] >= 0;
        const bf16* q = valid ? col_base + static_cast<int64_t>(index[i] / divisor) * ld : base;
        CpAsync16(tile + offset, q, valid);
      }
    }
  }
};

// OperandStream<256, true> over the experts' stacked gate|up weights [2F,
// C] for the SwiGLU epilogue: the tile's rows 0-127 are W rows n0 + r (gate
// features), rows 128-255 W rows F + n0 + r - 128 (the same up features),
// all in (n0 + 128 <= F).
struct GateUpRowStream {
  using Plain = OperandStream<256, true>;
  static constexpr int kIters = Plain::kIters, kRowStep = Plain::kRowStep;
  static_assert(kIters * kRowStep == 256 && kIters % 2 == 0,
                "the up half from iteration kIters / 2");
  const bf16* base;  // an address for the zero-fills
  const bf16* src;   // this loader's first chunk at k step 0
  int64_t it_step;   // elements from one of its chunks to the next
  int64_t up_step;   // ... and the extra step into the up half
  int64_t k_room;    // > 0 if its k column is in at k step 0
  int row0, col;

  __device__ __forceinline__ GateUpRowStream(const bf16* w, int64_t ld, int64_t n0, int64_t f,
                                             int64_t k_lim, int loader)
      : base(w), it_step(kRowStep * ld), up_step((f - 128) * ld) {
    row0 = loader / Plain::kChunksPerRow;
    col = loader % Plain::kChunksPerRow;
    src = w + (n0 + row0) * ld + col * 8;
    k_room = k_lim - col * 8;
  }

  __device__ __forceinline__ void Load(unsigned char* tile, int64_t t) const {
    const bf16* q = src + t * kTileK;
    const bool valid = k_room - t * kTileK > 0;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      if (it == kIters / 2) q += up_step;
      const int row = row0 + it * kRowStep;
      const int offset = row * 128 + ((col ^ (row % 8)) * 16);
      CpAsync16(tile + offset, valid ? q : base, valid);
      q += it_step;
    }
  }
};

// Syncs the 128 threads of one multiplying warpgroup (named barriers 1, 2).
__device__ __forceinline__ void WarpgroupSync(int warpgroup) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + warpgroup) : "memory");
}

// The f32 rows of one pass of the staged epilogue: + 8 floats keeps the
// fragments' float2 writes free of bank conflicts (rows 8 words apart).
template <int kPassCols>
constexpr int kPassPitch = kPassCols + 8;

// Pass `pass` of the staged epilogues into `buf` (pitch kPassPitch), once
// the warpgroup's last reads of buf are done; on return the whole
// warpgroup sees it. The pass holds fragment columns jj = pass · kPassCols
// / 8 + j of this warpgroup's 64 rows; value(jj, h) gives the pair of row
// half h (rows +0 / +8) there: the accumulators acc[4 jj + 2 h] and
// acc[4 jj + 2 h + 1] for a plain tile (AccPair). The SwiGLU epilogues
// use it; StoreTileStaged keeps its own copy of the loop, since through
// this function ptxas compiled 9 of the plain kernels differently, until a
// GPU can time them.
template <int kPassCols, typename Value>
__device__ __forceinline__ void StagePass(int pass, int warpgroup, float* buf, const Value& value) {
  constexpr int kPitch = kPassPitch<kPassCols>;
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  WarpgroupSync(warpgroup);  // the last pass's (or tile's) reads of buf are done
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = warp * 16 + h * 8 + lane / 4;
#pragma unroll
    for (int j = 0; j < kPassCols / 8; ++j) {
      *reinterpret_cast<float2*>(buf + row * kPitch + 8 * j + (lane % 4) * 2) =
          value(pass * (kPassCols / 8) + j, h);
    }
  }
  WarpgroupSync(warpgroup);
}
template <int kAcc>
__device__ __forceinline__ float2 AccPair(const float (&acc)[kAcc], int jj, int h) {
  return make_float2(acc[4 * jj + 2 * h], acc[4 * jj + 2 * h + 1]);
}

// The epilogue staged through shared memory: the 64 rows of a tile that
// this thread's warpgroup holds (rows 64 * row_block of the tile at w.m0)
// into c through `buf`, the warpgroup's own buffer of 64 rows by kPassCols
// columns (kTileN / kPassCols passes). The f32 fragments go there, then
// each thread stores 16-byte runs of a row, as the block-per-tile kernel's
// staged epilogue does (the weight gradients' beta = 1 loads then batch as
// runs too). Where c's rows are not 16-byte aligned, the direct store.
template <typename OutT, int kTileN, int kPassCols>
__device__ __forceinline__ void StoreTileStaged(const Problem& p, const BlockWork<bf16, OutT>& w,
                                                int64_t n0, const float (&acc)[kTileN / 2],
                                                int row_block, int warpgroup, float* buf) {
  constexpr int kVec = 16 / sizeof(OutT), kPitch = kPassPitch<kPassCols>;
  const bool vec = p.ldc % kVec == 0 && reinterpret_cast<uintptr_t>(w.c) % 16 == 0;
  if (!vec) return StoreTileDirect<OutT, kTileN>(p, w, n0, acc, row_block);
  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  // Runs in batches whose old values are loaded before any is stored; 4 a
  // batch (8 spilled at the multipliers' 224 registers).
  constexpr int kRuns = kPassCols / kVec, kPerThread = 64 * kRuns / 128, kBatch = 4;
  static_assert(kTileN % kPassCols == 0 && kPerThread % kBatch == 0, "whole passes and batches");
#pragma unroll
  for (int pass = 0; pass < kTileN / kPassCols; ++pass) {
    WarpgroupSync(warpgroup);  // the last pass's (or tile's) reads of buf are done
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 16 + h * 8 + lane / 4;
#pragma unroll
      for (int j = 0; j < kPassCols / 8; ++j) {
        const int jj = pass * (kPassCols / 8) + j;
        *reinterpret_cast<float2*>(buf + row * kPitch + 8 * j + (lane % 4) * 2) =
            make_float2(acc[4 * jj + 2 * h], acc[4 * jj + 2 * h + 1]);
      }
    }
    WarpgroupSync(warpgroup);
    auto batch = [&](int b0) {  // runs b0 .. b0 + kBatch of the pass
      uint4 old[kBatch];
      OutT* dst[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        const int64_t gm = w.m0 + row_block * 64 + row, gn = n0 + pass * kPassCols + col;
        // n is a multiple of 8: a run is all in or all out.
        dst[i] = gm < w.m_lim && gn < p.n ? w.c + gm * p.ldc + gn : nullptr;
        old[i] = dst[i] && p.beta != 0.0f ? LoadVec16(dst[i]) : uint4{};
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        if (dst[i]) StoreVec16(dst[i], buf + row * kPitch + col, p.beta, old[i]);
      }
    };
    for (int b0 = 0; b0 < kPerThread; b0 += kBatch) batch(b0);
  }
}

// h = g·σ(g)·u of one accumulator pair, as SwiGluPacked computes it from
// the bf16 gate and up the product stores (core/cuda/swiglu.cu): the same
// rounding of each, the same f32 operations in the same order.
__device__ __forceinline__ float SwiGluOfAcc(float gate_acc, float up_acc) {
  const float g = __bfloat162float(__float2bfloat16_rn(gate_acc));
  const float u = __bfloat162float(__float2bfloat16_rn(up_acc));
  return SwiGluOf(g, u);
}

// The SwiGLU epilogue of a 128 x 256 gate|up tile (GateUpRowStream's): the
// 64 rows this warpgroup holds, through `buf` (as StoreTileStaged) in three
// passes of 128 columns: the gate half into c's columns n0.., the up half
// into c's columns F + n0.., then h = SwiGLU of the pair into h's columns
// n0... bf16 c and h, beta 0, 16-byte rows (the launcher checks).
template <int kPassCols>
__device__ __forceinline__ void StoreTileSwiGlu(const Problem& p, const SwiGluOut& sw,
                                                const BlockWork<bf16, bf16>& w, int64_t n0,
                                                const float (&acc)[128], int row_block,
                                                int warpgroup, float* buf) {
  static_assert(kPassCols == 128, "a pass is one half of the tile");
  constexpr int kVec = 8, kPitch = kPassPitch<kPassCols>, kHalf = kPassCols / 8;
  const int t = threadIdx.x % 128;
  constexpr int kRuns = kPassCols / kVec, kPerThread = 64 * kRuns / 128;
  bf16* const h_rows = sw.h + w.r0 * sw.ldh;
#pragma unroll
  for (int pass = 0; pass < 3; ++pass) {
    // Passes 0 and 1 hold the gate and the up columns as they are; pass 2
    // their SwiGLU, from the gate (jj - 2 kHalf) and up (jj - kHalf) pairs.
    StagePass<kPassCols>(pass, warpgroup, buf, [&](int jj, int h) {
      if (jj < 2 * kHalf) return AccPair(acc, jj, h);
      const int g = 4 * (jj - 2 * kHalf) + 2 * h, u = g + 4 * kHalf;
      return make_float2(SwiGluOfAcc(acc[g], acc[u]), SwiGluOfAcc(acc[g + 1], acc[u + 1]));
    });
    bf16* const out = pass == 2 ? h_rows : w.c;
    const int64_t ld = pass == 2 ? sw.ldh : p.ldc, col0 = pass == 1 ? sw.f + n0 : n0;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int c = t + i * 128, row = c / kRuns, col = (c % kRuns) * kVec;
      const int64_t gm = w.m0 + row_block * 64 + row;
      if (gm < w.m_lim) StoreVec16(out + gm * ld + col0 + col, buf + row * kPitch + col, 0.0f, {});
    }
  }
}

// The SwiGLU backward epilogue of the down projection's data gradient
// (ops::GroupedGemmSwiGluBackward): the tile is d_h (rows x F columns from
// n0), never stored; from each 16-byte run of it (rounded to bf16, as d_h
// would be stored) and the same run of the forward's gate and up, this
// writes the runs of d_gate and d_up into d_gate_up, with SwiGluPackedBackward's
// expressions. Through `buf` in passes of kPassCols columns as
// StoreTileStaged; gate and up loaded 4 runs at a time before any is used
// (their latency, as the weight gradients' old values). bf16, beta 0,
// 16-byte rows (the launcher checks).
template <int kTileN, int kPassCols>
__device__ __forceinline__ void StoreTileSwiGluGrad(const Problem& p, const SwiGluOut& sw,
                                                    const BlockWork<bf16, bf16>& w, int64_t n0,
                                                    const float (&acc)[kTileN / 2], int row_block,
                                                    int warpgroup, float* buf) {
  constexpr int kVec = 8, kPitch = kPassPitch<kPassCols>;
  const int t = threadIdx.x % 128;
  constexpr int kRuns = kPassCols / kVec, kPerThread = 64 * kRuns / 128, kBatch = 4;
  static_assert(kTileN % kPassCols == 0 && kPerThread % kBatch == 0, "whole passes and batches");
  const int64_t ld = 2 * sw.f;
  const bf16* const gate_rows = sw.gate_up + w.r0 * ld;
  bf16* const grad_rows = sw.d_gate_up + w.r0 * ld;
#pragma unroll
  for (int pass = 0; pass < kTileN / kPassCols; ++pass) {
    StagePass<kPassCols>(pass, warpgroup, buf, [&](int jj, int h) { return AccPair(acc, jj, h); });
    for (int b0 = 0; b0 < kPerThread; b0 += kBatch) {
      uint4 g_raw[kBatch], u_raw[kBatch];
      int64_t at[kBatch];  // the run's offset in gate_up's rows; -1: out
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        const int64_t gm = w.m0 + row_block * 64 + row, gn = n0 + pass * kPassCols + col;
        at[i] = gm < w.m_lim && gn < p.n ? gm * ld + gn : -1;  // n: a multiple of 8
        g_raw[i] = at[i] >= 0 ? *reinterpret_cast<const uint4*>(gate_rows + at[i]) : uint4{};
        u_raw[i] = at[i] >= 0 ? *reinterpret_cast<const uint4*>(gate_rows + at[i] + sw.f) : uint4{};
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        if (at[i] < 0) continue;
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        const float* dh = buf + row * kPitch + col;
        const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&g_raw[i]);
        const auto* u2 = reinterpret_cast<const __nv_bfloat162*>(&u_raw[i]);
        uint4 dg_raw, du_raw;
        auto* dg2 = reinterpret_cast<__nv_bfloat162*>(&dg_raw);
        auto* du2 = reinterpret_cast<__nv_bfloat162*>(&du_raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 g = __bfloat1622float2(g2[e]), u = __bfloat1622float2(u2[e]);
          const float2 d = __bfloat1622float2(__floats2bfloat162_rn(dh[2 * e], dh[2 * e + 1]));
          float dg_lo, du_lo, dg_hi, du_hi;
          SwiGluGradOf(g.x, u.x, d.x, dg_lo, du_lo);
          SwiGluGradOf(g.y, u.y, d.y, dg_hi, du_hi);
          dg2[e] = __floats2bfloat162_rn(dg_lo, dg_hi);
          du2[e] = __floats2bfloat162_rn(du_lo, du_hi);
        }
        *reinterpret_cast<uint4*>(grad_rows + at[i]) = dg_raw;
        *reinterpret_cast<uint4*>(grad_rows + at[i] + sw.f) = du_raw;
      }
    }
  }
}

// The tiles one launch covers and where tile i's work is.
struct TileSpace {
  int64_t col_tiles = 0;  // across n
  int64_t row_tiles = 0;  // forward: every group's (an upper bound); weight grad: per group
  int64_t groups = 1;     // weight grad only
  __host__ __device__ int64_t size() const { return col_tiles * row_tiles * groups; }
};

// Tile `tile`'s rows (kRows of them) and reduction, and its column tile in
// `col`. Column tiles vary fastest: neighbouring blocks share a's row tile.
// A block's tiles come in increasing order: `cursor` carries its walk over
// the groups.
template <typename OutT, bool kWeightGrad, int kRows>
__device__ __forceinline__ BlockWork<bf16, OutT> TileWork(const Problem& p, const TileSpace& s,
                                                          int64_t tile, int64_t& col,
                                                          GroupCursor& cursor) {
  col = tile % s.col_tiles;
  const int64_t rest = tile / s.col_tiles;
  if constexpr (kWeightGrad) {
    return FindWorkAt<bf16, OutT, true>(p, kRows, rest % s.row_tiles,
                                        static_cast<int>(rest / s.row_tiles), cursor);
  } else {
    return FindWorkAt<bf16, OutT, false>(p, kRows, rest, 0, cursor);
  }
}

// The loaders' part of a block (its first warpgroup, this thread loader
// `threadIdx.x` of them): the k steps of every tile of the block's walk (A
// tiles of kRows rows), in order, into the ring, a stage once its "empty"
// barrier says its last reader is done, completing its "full" barrier when
// the copies land. The walk stops where TileWork finds no work, as the
// multipliers' does.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, int kRows>
__device__ __forceinline__ void LoadWalk(const Problem& p, const TileSpace& space,
                                         const Ring<S>& ring, uint64_t (&full)[S::kStages],
                                         uint64_t (&empty)[S::kStages]) {
  ReleaseRegisters<kLoaderRegisters>();
  RingPosition<S::kStages> pos;
  GroupCursor cursor;
  const int loader = threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x) {
    int64_t col;
    const BlockWork<bf16, OutT> w = TileWork<OutT, kWeightGrad, kRows>(p, space, tile, col, cursor);
    if (!w.valid) break;
    const int64_t n0 = col * S::kTileN, k_tiles = (w.k_len + kTileK - 1) / kTileK;
    const OperandStream<kRows, kAKMajor> a(w.a, p.lda, w.m0, w.m_lim, w.k_len, loader);
    const OperandStream<S::kTileN, kBKMajor> b(w.b, p.ldb, n0, p.n, w.k_len, loader);
    for (int64_t t = 0; t < k_tiles; ++t) {
      MbarrierWait(&empty[pos.stage], pos.parity ^ 1);
      a.Load(ring.a(pos.stage), t);
      b.Load(ring.b(pos.stage), t);
      CpAsyncMbarrierArrive(&full[pos.stage]);
      pos.Advance();
    }
  }
  CpAsyncWait<0>();  // nothing lands after its thread has exited
}

// The loaders' k steps of one output tile (w, columns from n0) of the
// kernel's variants: the row-stacked operand gathered (kGather: the
// forward's a, the weight gradient's b) and the forward's gate|up tile for
// the SwiGLU epilogue (kSwiGlu: b's rows from both halves). The loop of
// LoadWalk on those streams.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kGather,
          bool kSwiGlu>
__device__ __forceinline__ void LoadVariantTile(
    const Problem& p, const RowGather& gather, const SwiGluOut& swiglu,
    const BlockWork<bf16, OutT>& w, int64_t n0, int64_t k_tiles, int loader, const Ring<S>& ring,
    uint64_t (&full)[S::kStages], uint64_t (&empty)[S::kStages], RingPosition<S::kStages>& pos) {
  static_assert(kWeightGrad ? !kBKMajor && kGather && !kSwiGlu : kAKMajor,
                "the gathered operand's rows are a's m or b's k; SwiGLU only in the forward");
  static_assert(!kSwiGlu || (kBKMajor && S::kTileN == 256), "SwiGLU: x·Wᵀ on 128 x 256 tiles");
  auto steps = [&](const auto& a, const auto& b) {
    for (int64_t t = 0; t < k_tiles; ++t) {
      MbarrierWait(&empty[pos.stage], pos.parity ^ 1);
      a.Load(ring.a(pos.stage), t);
      b.Load(ring.b(pos.stage), t);
      CpAsyncMbarrierArrive(&full[pos.stage]);
      pos.Advance();
    }
  };
  const int32_t* rows = gather.rows + w.r0;
  if constexpr (kWeightGrad) {
    steps(OperandStream<kTileM, kAKMajor>(w.a, p.lda, w.m0, w.m_lim, w.k_len, loader),
          GatheredKStream<S::kTileN>(static_cast<const bf16*>(p.b), p.ldb, rows, gather.divisor, n0,
                                     p.n, w.k_len, loader));
  } else {
    auto b_stream = [&] {
      if constexpr (kSwiGlu) {
        return GateUpRowStream(w.b, p.ldb, n0, swiglu.f, w.k_len, loader);
      } else {
        return OperandStream<S::kTileN, kBKMajor>(w.b, p.ldb, n0, p.n, w.k_len, loader);
      }
    };
    if constexpr (kGather) {
      steps(GatheredRowStream<kTileM>(static_cast<const bf16*>(p.a), p.lda, rows, gather.divisor,
                                      w.m0, w.m_lim, w.k_len, loader),
            b_stream());
    } else {
      steps(OperandStream<kTileM, kAKMajor>(w.a, p.lda, w.m0, w.m_lim, w.k_len, loader),
            b_stream());
    }
  }
}

// A persistent kernel of `bytes` of dynamic shared memory over `space`: one
// block an SM, none beyond the tiles.
template <typename Kernel>
void LaunchOnSms(const ExecContext& ctx, Kernel kernel, int bytes, const Problem& p,
                 const TileSpace& space, const RowGather& gather, const SwiGluOut& swiglu,
                 const char* op, const char* name) {
  const int64_t blocks = std::min<int64_t>(space.size(), std::max(MultiprocessorCount(ctx, op), 1));
  if (blocks <= 0) return;
  kernel<<<static_cast<unsigned>(blocks), kWsThreads, bytes, Stream(ctx)>>>(p, space, gather,
                                                                            swiglu);
  SM_CHECK_LAUNCH(ctx, op, name);
}

// Whether ptxas gave the kernel the registers its hand-over counts on (a
// different compiler might give fewer: the claim would then wait forever).
template <typename Kernel>
bool HasLaunchRegisters(Kernel kernel) {
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
         attributes.numRegs >= kLaunchRegisters;
}

}  // namespace
}  // namespace scalemoe::cuda::grouped_gemm
