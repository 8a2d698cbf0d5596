// The grouped GEMMs on the persistent warp-specialized wgmma kernel
// (core/cuda/grouped_gemm_wgmma_ws_kernel.cuh describes it): its launches
// for the forward, the data gradient and the weight gradient.
#include "core/cuda/grouped_gemm_wgmma_ws_kernel.cuh"

namespace scalemoe::cuda::grouped_gemm {

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaWs(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
                const char* op) {
  // The epilogue through shared memory, unless
  // SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct stores from the registers (A/B
  // timings; bench/grouped_gemm_check.sh): staged was 1.05-1.44x faster on
  // every expert shape on the H200 (bench/RESULTS.md).
  static const bool staged = !EnvEquals("SCALEMOE_GROUPED_GEMM_WS_EPILOGUE", "direct");
  if (staged) {
    if (p.n > 128) {
      return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, WideStaged, true>(ctx, p, row_tiles,
                                                                               groups, op);
    }
    return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, NarrowStaged, true>(ctx, p, row_tiles,
                                                                               groups, op);
  }
  if (p.n > 128) {
    return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, Wide, false>(ctx, p, row_tiles, groups,
                                                                        op);
  }
  return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, Narrow, false>(ctx, p, row_tiles, groups,
                                                                        op);
}

// The three products (forward, data gradient, weight gradient) into bf16 or f32.
#define SM_INSTANTIATE(OutT)                                                                       \
  template bool RunWgmmaWs<OutT, true, true, false>(const ExecContext&, const Problem&, unsigned,  \
                                                    unsigned, const char*);                        \
  template bool RunWgmmaWs<OutT, true, false, false>(const ExecContext&, const Problem&, unsigned, \
                                                     unsigned, const char*);                       \
  template bool RunWgmmaWs<OutT, false, false, true>(const ExecContext&, const Problem&, unsigned, \
                                                     unsigned, const char*);
SM_INSTANTIATE(bf16)
SM_INSTANTIATE(float)
#undef SM_INSTANTIATE

}  // namespace scalemoe::cuda::grouped_gemm
