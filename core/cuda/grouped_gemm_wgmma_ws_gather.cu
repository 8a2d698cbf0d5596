// The persistent warp-specialized grouped GEMMs whose row-stacked operand
// is gathered through a row index (ops::GroupedGemmGathered: the forward's
// a; ops::GroupedGemmWeightGradGathered: the weight gradient's b): the
// kernel of core/cuda/grouped_gemm_wgmma_ws_kernel.cuh with its loaders
// reading each row where the index says (GatheredRowStream,
// GatheredKStream); the multipliers, the epilogue and the barriers are the
// plain kernel's, and so are the bits.
#include "core/cuda/grouped_gemm_wgmma.cuh"
#include "core/cuda/grouped_gemm_wgmma_ws_kernel.cuh"

namespace scalemoe::cuda::grouped_gemm {

bool WsGathers() {
  return VariantKernelsSelected() &&
         HasLaunchRegisters(
             GroupedGemmWgmmaWsKernel<bf16, true, true, false, WideStaged, true, true>) &&
         HasLaunchRegisters(
             GroupedGemmWgmmaWsKernel<float, false, false, true, WideStaged, true, true>);
}

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaWsGathered(const ExecContext& ctx, const Problem& p, const RowGather& gather,
                        unsigned row_tiles, unsigned groups, const char* op) {
  if (!VariantKernelsSelected()) return false;
  if (p.n > 128) {
    return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, WideStaged, true, true>(
        ctx, p, row_tiles, groups, op, gather);
  }
  return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, NarrowStaged, true, true>(
      ctx, p, row_tiles, groups, op, gather);
}

// The two that gather: the forward x·Wᵀ and the weight gradient.
#define SM_INSTANTIATE(OutT)                                                                  \
  template bool RunWgmmaWsGathered<OutT, true, true, false>(                                  \
      const ExecContext&, const Problem&, const RowGather&, unsigned, unsigned, const char*); \
  template bool RunWgmmaWsGathered<OutT, false, false, true>(                                 \
      const ExecContext&, const Problem&, const RowGather&, unsigned, unsigned, const char*);
SM_INSTANTIATE(bf16)
SM_INSTANTIATE(float)
#undef SM_INSTANTIATE

}  // namespace scalemoe::cuda::grouped_gemm
