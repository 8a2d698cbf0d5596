// AdamWUpdate on the GPU: the multi-tensor AdamW step (core/ops.h) over the
// rows of a device segment table in one launch, each row with its own lr
// multiplier and weight decay. The step's clip factor, non-finite flag and
// update count are read on the device: a non-finite step returns before
// touching anything. Math in the parameters' dtype (f32 or f64), in the CPU
// reference's order; grads that dtype or bf16. Aligned buffers move 16-byte
// packs (the kernel is memory-bound: 28 bytes per f32 parameter).
#include <cmath>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/multi_tensor.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Products and sums rounded one by one, never contracted into an FMA: the
// compiler may fuse `a * b + c` in one loop and not in another (the packed
// body and the one-by-one head and tail), and then a tensor's bits would
// depend on its alignment in the flat buffer: the last pipeline stage's copy
// of a tied embedding, updated at another offset than the first stage's
// table, would drift from it. The CPU reference (x86-64 without FMA) rounds
// each operation the same way.
__device__ __forceinline__ float Mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double Mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float Add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double Add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float Sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double Sub(double a, double b) { return __dsub_rn(a, b); }

struct AdamWScalars {
  double lr, beta1, beta2, eps;
};

// kVec: p, m, v and g 16-byte aligned, so each chunk's body moves whole
// packs (16 bytes of T, the same count of G) per load and store; the
// elements before the first aligned index and after the last whole pack go
// one by one. The same math per element either way, and the same bits (Mul,
// Add, Sub above).
template <typename T, typename G, bool kVec>
__global__ void AdamWKernel(const int64_t* __restrict__ rows, const double* __restrict__ coeff,
                            const int64_t* __restrict__ plan, int64_t count, AdamWScalars o,
                            const double* __restrict__ clip_factor,
                            const int32_t* __restrict__ nonfinite,
                            const int64_t* __restrict__ num_updates, T* __restrict__ p,
                            const G* __restrict__ g, T* __restrict__ m, T* __restrict__ v) {
  if (*nonfinite != 0) return;
  const int64_t t = *num_updates;
  if (t < 1) __trap();  // GradNormControl counts this update before it is applied
  const double bias_correction1 = 1.0 - pow(o.beta1, static_cast<double>(t));
  const double bias_correction2 = 1.0 - pow(o.beta2, static_cast<double>(t));
  const T b1 = static_cast<T>(o.beta1), b2 = static_cast<T>(o.beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - o.beta1);
  const T one_minus_b2 = static_cast<T>(1.0 - o.beta2);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / sqrt(bias_correction2));
  const T eps = static_cast<T>(o.eps);
  const T clip = static_cast<T>(*clip_factor);
  ForEachChunk(plan, count, [&](int64_t s, int64_t, int64_t offset) {
    const int64_t begin = rows[2 * s], end = rows[2 * s + 1];
    const double lr = o.lr * coeff[2 * s];
    const T decay = static_cast<T>(1.0 - lr * coeff[2 * s + 1]);
    const T step_size = static_cast<T>(lr / bias_correction1);
    const int64_t first = begin + offset;
    const int64_t last = first + kChunk < end ? first + kChunk : end;
    // One element: p, m, v updated in place (the CPU reference's order).
    const auto update = [&](T& pi, T& mi, T& vi, T grad_in) {
      const T grad = Mul(grad_in, clip);
      pi = Mul(pi, decay);
      mi = Add(Mul(b1, mi), Mul(one_minus_b1, grad));
      vi = Add(Mul(b2, vi), Mul(Mul(one_minus_b2, grad), grad));
      pi = Sub(pi, Mul(step_size, mi) / Add(Mul(sqrt(vi), inv_sqrt_bc2), eps));
    };
    const auto one = [&](int64_t i) {
      T pi = p[i], mi = m[i], vi = v[i];
      update(pi, mi, vi, static_cast<T>(ToAcc(g[i])));
      m[i] = mi;
      v[i] = vi;
      p[i] = pi;
    };
    if constexpr (kVec) {
      constexpr int V = kPack<T>;
      const int64_t head_end = (first + V - 1) / V * V < last ? (first + V - 1) / V * V : last;
      const int64_t body_end = head_end + (last - head_end) / V * V;
      for (int64_t i = first + threadIdx.x; i < head_end; i += blockDim.x) one(i);
      for (int64_t i = head_end + threadIdx.x * V; i < body_end; i += blockDim.x * V) {
        Pack<T, V> pp = *reinterpret_cast<const Pack<T, V>*>(p + i);
        Pack<T, V> mp = *reinterpret_cast<const Pack<T, V>*>(m + i);
        Pack<T, V> vp = *reinterpret_cast<const Pack<T, V>*>(v + i);
        const Pack<G, V> gp = *reinterpret_cast<const Pack<G, V>*>(g + i);
#pragma unroll
        for (int k = 0; k < V; ++k)
          update(pp.v[k], mp.v[k], vp.v[k], static_cast<T>(ToAcc(gp.v[k])));
        *reinterpret_cast<Pack<T, V>*>(m + i) = mp;
        *reinterpret_cast<Pack<T, V>*>(v + i) = vp;
        *reinterpret_cast<Pack<T, V>*>(p + i) = pp;
      }
      for (int64_t i = body_end + threadIdx.x; i < last; i += blockDim.x) one(i);
    } else {
#pragma unroll 4
      for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) one(i);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------- launcher

void AdamWUpdate(const ExecContext& ctx, const Tensor& params, const Tensor& grads,
                 const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& segments,
                 const Tensor& coefficients, const ops::AdamWUpdateOptions& options,
                 const ops::StepControl& control) {
  constexpr const char* kOp = "AdamWUpdate";
  CheckOnDevice(ctx, params, kOp, "params");
  CheckOnDevice(ctx, grads, kOp, "grads");
  CheckOnDevice(ctx, exp_avg, kOp, "exp_avg");
  CheckOnDevice(ctx, exp_avg_sq, kOp, "exp_avg_sq");
  const int64_t n = params.numel();
  SM_CHECK_MSG(grads.numel() == n && exp_avg.numel() == n && exp_avg_sq.numel() == n &&
                   exp_avg.dtype() == params.dtype() && exp_avg_sq.dtype() == params.dtype(),
               kOp, ": params ", params.DebugString(), ", grads ", grads.DebugString(),
               ", exp_avg ", exp_avg.DebugString(), ", exp_avg_sq ", exp_avg_sq.DebugString(),
               ": one index space; params and state of one dtype");
  CheckControl(ctx, control, kOp, /*needs_clip=*/true, /*needs_count=*/true);
  const Tensor plan = ChunkPlan(ctx, segments, RowKind::kBeginEnd, n, 0, kOp);
  const int64_t count = segments.dim(0);
  CheckCoefficients(ctx, coefficients, count, 2, kOp);
  if (count == 0) return;
  const AdamWScalars o{options.lr, options.beta1, options.beta2, options.eps};
  DispatchF32F64(kOp, params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DispatchSameOrBf16<T>(grads, kOp, "grads", [&](auto gtag) {
      using G = typename decltype(gtag)::type;
      const bool vec =
          AllAligned16({Ptr<T>(params), Ptr<const G>(grads), Ptr<T>(exp_avg), Ptr<T>(exp_avg_sq)});
      auto kernel = vec ? AdamWKernel<T, G, true> : AdamWKernel<T, G, false>;
      kernel<<<ChunkBlocks(ChunkBound(n, count)), kThreads, 0, Stream(ctx)>>>(
          Ptr<const int64_t>(segments), Ptr<const double>(coefficients), Ptr<const int64_t>(plan),
          count, o, Ptr<const double>(control.clip_factor), Ptr<const int32_t>(control.nonfinite),
          Ptr<const int64_t>(control.num_updates), Ptr<T>(params), Ptr<const G>(grads),
          Ptr<T>(exp_avg), Ptr<T>(exp_avg_sq));
    });
  });
  SM_CHECK_LAUNCH(ctx, kOp, "AdamWKernel");
}

}  // namespace scalemoe::cuda
