// The grouped GEMMs' wgmma kernels (sm_90a; core/cuda/grouped_gemm_wgmma.cu
// and grouped_gemm_wgmma_ws.cu), launched by core/cuda/grouped_gemm.cu for
// bf16 inputs on tensor cores.
#pragma once

#include "core/context.h"
#include "core/cuda/grouped_gemm_problem.cuh"

namespace scalemoe::cuda::grouped_gemm {

// Whether the wgmma kernels run: an sm_90 device, a build with sm_90a code
// (CMake defines SCALEMOE_HAVE_SM90A), and SCALEMOE_GROUPED_GEMM unset or not
// "mma" (which keeps the mma.sync kernel, for A/B timings).
bool UseWgmma();

// C_g = A_g · B_g (+ beta C_g) for every group of `p` on wgmma: the
// persistent warp-specialized kernel (core/cuda/grouped_gemm_wgmma_ws.cu)
// where it runs, else, or with SCALEMOE_GROUPED_GEMM=tile, the
// block-per-tile one
// (core/cuda/grouped_gemm_wgmma.cu). kAKMajor / kBKMajor as in the other
// kernels (A(m, k) at a[m * lda + k], else a[k * lda + m]; B(k, n) at
// b[n * ldb + k], else b[k * ldb + n]); kWeightGrad: the groups are the
// outputs, the reduction over each group's rows. row_tiles: the row tiles
// of 128 (GroupedGemm: an upper bound over all groups; the weight grad:
// ceil(m / 128) per group); groups: the weight grad's groups.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
void RunWgmma(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
              const char* op);

// The persistent warp-specialized kernel alone (RunWgmma calls it); false
// when it cannot run (its build gave it too few registers), having done
// nothing.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaWs(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
                const char* op);

// The persistent kernel with the row-stacked operand gathered (`gather`:
// the forward's a, <OutT, true, true, false>, or the weight gradient's b,
// <OutT, false, false, true>; p.a or p.b is then the source matrix); false
// when it cannot run (RunWgmmaWs's reasons, SCALEMOE_GROUPED_GEMM=tile, the
// direct epilogue), having done nothing: the caller then gathers a copy.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaWsGathered(const ExecContext& ctx, const Problem& p, const RowGather& gather,
                        unsigned row_tiles, unsigned groups, const char* op);

// Whether RunWgmmaWsGathered runs (on an sm_90 device): the default
// kernel and epilogue, and registers enough for its hand-over.
bool WsGathers();

// The experts' gate|up forward x·Wᵀ into bf16 c = gate | up [rows, 2F]
// with h = SwiGLU(gate, up) in the persistent kernel's epilogue (`swiglu`;
// a's rows gathered when gather.rows is set); p.n = 2F with F a multiple
// of 128, beta 0, c and h in 16-byte rows. False when it cannot run
// (RunWgmmaWsGathered's reasons), having done nothing.
bool RunWgmmaWsSwiGlu(const ExecContext& ctx, const Problem& p, const RowGather& gather,
                      const SwiGluOut& swiglu, unsigned row_tiles, const char* op);
// Whether RunWgmmaWsSwiGlu runs (on an sm_90 device).
bool WsSwiGlus();
// The down projection's data gradient d_h = d_y·W_g (p: GroupedGemm's,
// trans_b no; c unused) with d_gate_up = SwiGLU's backward of d_h and the
// forward's gate_up in the persistent kernel's epilogue (`swiglu`'s
// gate_up, d_gate_up, f = p.n); beta 0, 16-byte rows. False when it cannot
// run, having done nothing.
bool RunWgmmaWsSwiGluGrad(const ExecContext& ctx, const Problem& p, const SwiGluOut& swiglu,
                          unsigned row_tiles, const char* op);
bool WsSwiGluGrads();

// The row tile every GroupedGemm kernel on tensor cores uses.
constexpr int kWgmmaTileM = 128;

}  // namespace scalemoe::cuda::grouped_gemm
