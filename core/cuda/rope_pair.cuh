// Rope's rotation of one pair, and its table, shared by core/cuda/rope.cu
// and the per-head norm that rotates its own output
// (core/cuda/scaled_rms_normalize.cu): the same instructions in both, so
// ScaledRmsNormalizeRope gives Rope's bits. Both products are rounded, then
// added (the CPU reference's arithmetic: no fused multiply-add, which the
// compiler could otherwise contract differently in each kernel).
#pragma once

#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {

// o1 = x1·c − x2·s and o2 = x2·c + x1·s (s already carries the direction's
// sign: RopeBackward rotates by −angle).
__device__ __forceinline__ void RotatePair(float x1, float x2, float c, float s, float& o1,
                                           float& o2) {
  o1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
  o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}
__device__ __forceinline__ void RotatePair(double x1, double x2, double c, double s, double& o1,
                                           double& o2) {
  o1 = __dsub_rn(__dmul_rn(x1, c), __dmul_rn(x2, s));
  o2 = __dadd_rn(__dmul_rn(x2, c), __dmul_rn(x1, s));
}

// One lane's half of a pair: `own` is x1 (first = true) or x2, `other` the
// element it pairs with. The same bits as RotatePair's o1 or o2.
template <typename A>
__device__ __forceinline__ A RotateHalf(bool first, A own, A other, A c, A s) {
  A o1, o2;
  if (first) {
    RotatePair(own, other, c, s, o1, o2);
    return o1;
  }
  RotatePair(other, own, c, s, o1, o2);
  return o2;
}

// cos and sin of t · theta^(−2i/D), the angle in f64, each rounded once to A.
template <typename A>
__device__ __forceinline__ void RopeAngle(double theta, int64_t t, int64_t i, int64_t d, A& c,
                                          A& s) {
  const double inv_freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
  double sin_d, cos_d;
  sincos(static_cast<double>(t) * inv_freq, &sin_d, &cos_d);
  c = static_cast<A>(cos_d);
  s = static_cast<A>(sin_d);
}

}  // namespace scalemoe::cuda
