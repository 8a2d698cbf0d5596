// Shared-memory mbarriers (sm_80+; the register hand-over needs sm_90a) for
// kernels whose warps produce and consume a ring of shared-memory stages
// without block-wide barriers: a stage's "full" barrier completes when the
// producers' cp.async copies into it have landed, its "empty" barrier when
// the consumers have finished reading it.
//
// Phases: a barrier's phase completes when its expected arrivals are in,
// and waits name the parity of the phase they wait for. A ring position
// carries (stage, parity); producers wait for "empty" with the parity
// flipped, so that the first pass over a fresh ring does not wait.
#pragma once

#include <cstdint>

#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {

// One thread initializes; the block syncs before anyone arrives.
__device__ __forceinline__ void MbarrierInit(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddress(bar)), "r"(arrivals)
               : "memory");
}

__device__ __forceinline__ void MbarrierArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddress(bar))
               : "memory");
}

// Arrives once every cp.async this thread has issued so far has landed. The
// arrival is one of the barrier's expected ones (.noinc): count the
// producer threads in MbarrierInit.
__device__ __forceinline__ void CpAsyncMbarrierArrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(SmemAddress(bar))
               : "memory");
}

// Returns once the phase of parity `parity` has completed (acquire: the
// writes released by its arrivals are visible).
__device__ __forceinline__ void MbarrierWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = SmemAddress(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

// A position in a ring of kStages stages: the stage and the parity of its
// barriers' current phase.
template <int kStages>
struct RingPosition {
  int stage = 0;
  uint32_t parity = 0;
  __device__ __forceinline__ void Advance() {
    if (++stage == kStages) stage = 0, parity ^= 1;
  }
};

// Hands registers between a block's warpgroups (sm_90a): producers give
// theirs back, consumers take them. Every warp of a warpgroup executes it.
// The block keeps the registers it was launched with: the new counts,
// summed over its threads, must fit in them, or the claim waits forever.
template <int kRegisters>
__device__ __forceinline__ void ReleaseRegisters() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void ClaimRegisters() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

}  // namespace scalemoe::cuda
