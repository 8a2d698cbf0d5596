// The experts' gate|up forward with SwiGLU in the epilogue
// (ops::GroupedGemmSwiGlu) on the persistent warp-specialized wgmma kernel
// (core/cuda/grouped_gemm_wgmma_ws_kernel.cuh): each 128 x 256 tile takes
// 128 gate features and the same 128 up features (GateUpRowStream), so
// every thread holds both inputs of its h elements, and the epilogue stores
// gate | up and then h (StoreTileSwiGlu). And the down projection's data
// gradient with SwiGLU's backward in the epilogue
// (ops::GroupedGemmSwiGluBackward, StoreTileSwiGluGrad). Their own
// translation unit, as the gathering kernels have (the plain kernels' code
// stays as it was).
#include "core/cuda/grouped_gemm_wgmma.cuh"
#include "core/cuda/grouped_gemm_wgmma_ws_kernel.cuh"

namespace scalemoe::cuda::grouped_gemm {

bool WsSwiGlus() {
  return VariantKernelsSelected() &&
         HasLaunchRegisters(
             GroupedGemmWgmmaWsKernel<bf16, true, true, false, WideStaged, true, false, true>) &&
         HasLaunchRegisters(
             GroupedGemmWgmmaWsKernel<bf16, true, true, false, WideStaged, true, true, true>);
}

bool RunWgmmaWsSwiGlu(const ExecContext& ctx, const Problem& p, const RowGather& gather,
                      const SwiGluOut& swiglu, unsigned row_tiles, const char* op) {
  if (!VariantKernelsSelected()) return false;
  if (gather.rows != nullptr) {
    return LaunchWs<bf16, true, true, false, WideStaged, true, true, true>(ctx, p, row_tiles, 1, op,
                                                                           gather, swiglu);
  }
  return LaunchWs<bf16, true, true, false, WideStaged, true, false, true>(ctx, p, row_tiles, 1, op,
                                                                          gather, swiglu);
}

bool WsSwiGluGrads() {
  return VariantKernelsSelected() &&
         HasLaunchRegisters(GroupedGemmWgmmaWsKernel<bf16, true, false, false, WideStaged, true,
                                                     false, false, true>) &&
         HasLaunchRegisters(GroupedGemmWgmmaWsKernel<bf16, true, false, false, NarrowStaged, true,
                                                     false, false, true>);
}

bool RunWgmmaWsSwiGluGrad(const ExecContext& ctx, const Problem& p, const SwiGluOut& swiglu,
                          unsigned row_tiles, const char* op) {
  if (!VariantKernelsSelected()) return false;
  if (p.n > 128) {
    return LaunchWs<bf16, true, false, false, WideStaged, true, false, false, true>(
        ctx, p, row_tiles, 1, op, {}, swiglu);
  }
  return LaunchWs<bf16, true, false, false, NarrowStaged, true, false, false, true>(
      ctx, p, row_tiles, 1, op, {}, swiglu);
}

}  // namespace scalemoe::cuda::grouped_gemm
