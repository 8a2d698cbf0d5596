// The grouped GEMMs' wgmma kernel (sm_90a; core/cuda/grouped_gemm_wgmma.cu),
// launched by core/cuda/grouped_gemm.cu for bf16 inputs on tensor cores.
#pragma once

#include "core/context.h"
#include "core/cuda/grouped_gemm_problem.cuh"

namespace scalemoe::cuda::grouped_gemm {

// Whether the wgmma kernel runs: an sm_90 device, a build with sm_90a code
// (CMake defines SCALEMOE_HAVE_SM90A), and SCALEMOE_GROUPED_GEMM unset or not
// "mma" (which keeps the mma.sync kernel, for A/B timings).
bool UseWgmma();

// C_g = A_g · B_g (+ beta C_g) for every group of `p` on wgmma. kAKMajor /
// kBKMajor as in the other kernels (A(m, k) at a[m * lda + k], else
// a[k * lda + m]; B(k, n) at b[n * ldb + k], else b[k * ldb + n]);
// kWeightGrad: grid z = the group, the reduction over its rows. row_tiles:
// grid y (the row tiles of 128 that GroupedGemm sizes; the weight grad's
// ceil(m / 128)); groups: grid z.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
void RunWgmma(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
              const char* op);

// The row tile every GroupedGemm kernel on tensor cores uses.
constexpr int kWgmmaTileM = 128;

}  // namespace scalemoe::cuda::grouped_gemm
