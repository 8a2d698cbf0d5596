// What the grouped GEMMs on the GPU (core/cuda/grouped_gemm.cu) choose at
// run time, for tests and benchmarks.
#pragma once

namespace scalemoe::cuda {

// Whether the grouped GEMMs on tensor cores run on the wgmma kernels: an
// sm_90 device, a build with sm_90a code, SCALEMOE_GROUPED_GEMM not "mma".
bool GroupedGemmOnWgmma();

// Whether ops::GroupedGemmGathered and ops::GroupedGemmWeightGradGathered
// gather the rows in the kernel's loads for bf16 operands on this device:
// sm_90 with the persistent kernel and its staged epilogue (the defaults).
// Otherwise they gather a copy first, then run the plain op.
bool GroupedGemmGathersInLoads();

// Whether ops::GroupedGemmSwiGlu computes h in the grouped kernel's
// epilogue on this device for bf16 (F a multiple of 128): sm_90 with the
// persistent kernel and its staged epilogue. Otherwise GroupedGemm, then
// SwiGluPacked.
bool GroupedGemmSwiGluInEpilogue();
// The same for ops::GroupedGemmSwiGluBackward (any F a multiple of 8).
bool GroupedGemmSwiGluGradInEpilogue();

}  // namespace scalemoe::cuda
