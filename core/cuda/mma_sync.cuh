// Warp-level tensor-core primitives (sm_80+): ldmatrix fragment loads from
// shared memory and the bf16 mma.sync m16n8k16 with f32 accumulators.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"), lane t, g = t / 4, q = t % 4:
// - A (16 x 16, row): a0 = A[g][2q..], a1 = A[g+8][2q..], a2 = A[g][2q+8..],
//   a3 = A[g+8][2q+8..] (each register two bf16 along k);
// - B (16 x 8, col): b0 = B[2q..][g], b1 = B[2q+8..][g];
// - C (16 x 8, f32): c0, c1 = C[g][2q], C[g][2q+1]; c2, c3 = C[g+8][...].
// The loaders below take a shared-memory tile with either dim contiguous
// (".trans" when the contiguous dim is not the fragment's pair dim) and
// compute each lane's row address, so kernels only say where the 16 x 16
// block starts.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {

__device__ __forceinline__ void LdMatrixX4(unsigned (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddress(row)));
}
__device__ __forceinline__ void LdMatrixX4Trans(unsigned (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddress(row)));
}

// The A fragment of the 16 x 16 block at (m0, k0) of a tile whose element
// (m, k) is at tile[m * ld + k] (kKMajor) or tile[k * ld + m].
template <bool kKMajor>
__device__ __forceinline__ void LoadFragmentA(unsigned (&a)[4], const __nv_bfloat16* tile, int ld,
                                              int m0, int k0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, r = lane % 8;
  if constexpr (kKMajor) {
    // Matrices a0..a3: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
    LdMatrixX4(a, tile + (m0 + r + (mat % 2) * 8) * ld + k0 + (mat / 2) * 8);
  } else {
    LdMatrixX4Trans(a, tile + (k0 + r + (mat / 2) * 8) * ld + m0 + (mat % 2) * 8);
  }
}

// The B fragments of two adjacent n8 blocks, (k0.., n0..n0+7) in b[0..1]
// and (k0.., n0+8..n0+15) in b[2..3], of a tile whose element (k, n) is at
// tile[n * ld + k] (kKMajor) or tile[k * ld + n].
template <bool kKMajor>
__device__ __forceinline__ void LoadFragmentsB(unsigned (&b)[4], const __nv_bfloat16* tile, int ld,
                                               int n0, int k0) {
  const int lane = threadIdx.x % 32, mat = lane / 8, r = lane % 8;
  // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
  if constexpr (kKMajor) {
    LdMatrixX4(b, tile + (n0 + r + (mat / 2) * 8) * ld + k0 + (mat % 2) * 8);
  } else {
    LdMatrixX4Trans(b, tile + (k0 + r + (mat % 2) * 8) * ld + n0 + (mat / 2) * 8);
  }
}

// c += a · b for one m16n8k16 block (bf16 operands, f32 accumulators).
__device__ __forceinline__ void MmaBf16(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                        unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace scalemoe::cuda
