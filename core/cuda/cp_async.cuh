// cp.async (sm_80+): 16-byte global -> shared copies that bypass registers,
// for the double-buffered tiles of the tensor-core kernels (grouped GEMM,
// attention). Commit groups and wait until at most kPending are in flight.
#pragma once

namespace scalemoe::cuda {

// A 16-byte copy into shared memory; `valid` false zero-fills the 16 bytes
// and reads nothing (gmem must still be a valid address).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace scalemoe::cuda
