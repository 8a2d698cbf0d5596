// Muon's elementwise ops on the GPU (core/ops.h): MuonMomentum (momentum and
// Nesterov into the packed update) and MuonApply (decay and the
// orthogonalised step), each one launch over the rows of a device segment
// table that reads the step control on the device; FrobeniusNormalize
// (Newton–Schulz's first step, per matrix), its norms deterministic: per
// chunk sums, then each matrix's chunks added by one block in a fixed order.
// Math in the state's / parameters' dtype as the CPU reference.
#include <cmath>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/multi_tensor.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// rows (begin, end, packed_begin): B ← μ·B + g·clip; update = g + μ·B
// (nesterov) or B.
template <typename T, typename G>
__global__ void MuonMomentumKernel(const int64_t* __restrict__ rows,
                                   const int64_t* __restrict__ plan, int64_t count, T mu,
                                   bool nesterov, const double* __restrict__ clip_factor,
                                   const int32_t* __restrict__ nonfinite, const G* __restrict__ g,
                                   T* __restrict__ b, T* __restrict__ u) {
  if (*nonfinite != 0) return;
  const T clip = static_cast<T>(*clip_factor);
  ForEachChunk(plan, count, [&](int64_t s, int64_t, int64_t offset) {
    const int64_t* r = rows + 3 * s;
    const int64_t len = r[1] - r[0];
    const int64_t last = offset + kChunk < len ? offset + kChunk : len;
    const G* gs = g + r[0];
    T* bs = b + r[0];
    T* us = u + r[2];
#pragma unroll 4
    for (int64_t i = offset + threadIdx.x; i < last; i += blockDim.x) {
      const T grad = static_cast<T>(ToAcc(gs[i])) * clip;
      const T bi = bs[i] * mu + grad;
      bs[i] = bi;
      us[i] = nesterov ? grad + mu * bi : bi;
    }
  });
}

// rows (begin, end, packed_begin), coefficients (lr multiplier, decay per
// unit lr, shape scale): p ← p·(1 − lr_s·wd_s) − lr_s·scale_s·ortho.
template <typename T, typename O>
__global__ void MuonApplyKernel(const int64_t* __restrict__ rows, const double* __restrict__ coeff,
                                const int64_t* __restrict__ plan, int64_t count, double lr,
                                const int32_t* __restrict__ nonfinite, T* __restrict__ p,
                                const O* __restrict__ ortho) {
  if (*nonfinite != 0) return;
  ForEachChunk(plan, count, [&](int64_t s, int64_t, int64_t offset) {
    const int64_t* r = rows + 3 * s;
    const double* k = coeff + 3 * s;
    const double lr_s = lr * k[0];
    const T decay = static_cast<T>(1.0 - lr_s * k[1]);
    const T step = static_cast<T>(-lr_s * k[2]);
    const int64_t len = r[1] - r[0];
    const int64_t last = offset + kChunk < len ? offset + kChunk : len;
    T* ps = p + r[0];
    const O* os = ortho + r[2];
#pragma unroll 4
    for (int64_t i = offset + threadIdx.x; i < last; i += blockDim.x) {
      ps[i] = ps[i] * decay + step * static_cast<T>(ToAcc(os[i]));
    }
  });
}

// partials[b·chunks + k] = Σ x² over chunk k of matrix b (f64), chunks of
// kChunk elements; a grid-stride over all (b, k).
template <typename S>
__global__ void FrobeniusPartialsKernel(int64_t batch, int64_t size, int64_t chunks, const S* x,
                                        double* partials) {
  for (int64_t job = blockIdx.x; job < batch * chunks; job += gridDim.x) {  // block-uniform
    const int64_t b = job / chunks, k = job - b * chunks;
    const int64_t first = b * size + k * kChunk;
    const int64_t last = first + (size - k * kChunk < kChunk ? size - k * kChunk : kChunk);
    double acc = 0;
    for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
      const double v = static_cast<double>(ToAcc(x[i]));
      acc += v * v;
    }
    acc = BlockSum(acc);
    if (threadIdx.x == 0) partials[job] = acc;
    __syncthreads();  // BlockSum's scratch is reused by the next job
  }
}

// scale[b] = 1 / (sqrt(Σ_k partials[b, k]) + eps); one block per matrix.
__global__ void FrobeniusScaleKernel(int64_t batch, int64_t chunks, const double* partials,
                                     double eps, double* scale) {
  for (int64_t b = blockIdx.x; b < batch; b += gridDim.x) {  // block-uniform
    double acc = 0;
    for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) acc += partials[b * chunks + k];
    acc = BlockSum(acc);
    if (threadIdx.x == 0) scale[b] = 1.0 / (sqrt(acc) + eps);
    __syncthreads();
  }
}

// x[b, :] *= scale[b] in the compute type; V > 1 only when size % V == 0,
// so a pack never crosses two matrices.
template <typename S, int V>
__global__ void FrobeniusApplyKernel(int64_t n, int64_t size, const double* scale, S* x) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const Acc<S> f = static_cast<Acc<S>>(scale[i / size]);
    Acc<S> v[V];
    LoadPack<V>(x, i, count, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= f;
    StorePack<V>(x, i, count, v);
  });
}

}  // namespace

// ---------------------------------------------------------------- launchers

void MuonMomentum(const ExecContext& ctx, const Tensor& grads, const Tensor& momentum,
                  const Tensor& update, const Tensor& segments,
                  const ops::MuonMomentumOptions& options, const ops::StepControl& control) {
  constexpr const char* kOp = "MuonMomentum";
  CheckOnDevice(ctx, grads, kOp, "grads");
  CheckOnDevice(ctx, momentum, kOp, "momentum");
  CheckOnDevice(ctx, update, kOp, "update");
  SM_CHECK_MSG(grads.numel() == momentum.numel() && update.dtype() == momentum.dtype(), kOp,
               ": grads ", grads.DebugString(), ", momentum ", momentum.DebugString(), ", update ",
               update.DebugString());
  CheckControl(ctx, control, kOp, /*needs_clip=*/true, /*needs_count=*/false);
  const Tensor plan =
      ChunkPlan(ctx, segments, RowKind::kBeginEndPacked, momentum.numel(), update.numel(), kOp);
  const int64_t count = segments.dim(0);
  if (count == 0) return;
  DispatchF32F64(kOp, momentum, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DispatchSameOrBf16<T>(grads, kOp, "grads", [&](auto gtag) {
      using G = typename decltype(gtag)::type;
      MuonMomentumKernel<T, G>
          <<<ChunkBlocks(ChunkBound(momentum.numel(), count)), kThreads, 0, Stream(ctx)>>>(
              Ptr<const int64_t>(segments), Ptr<const int64_t>(plan), count,
              static_cast<T>(options.momentum), options.nesterov,
              Ptr<const double>(control.clip_factor), Ptr<const int32_t>(control.nonfinite),
              Ptr<const G>(grads), Ptr<T>(momentum), Ptr<T>(update));
    });
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MuonMomentumKernel");
}

void FrobeniusNormalize(const ExecContext& ctx, const Tensor& x, double eps) {
  constexpr const char* kOp = "FrobeniusNormalize";
  CheckOnDevice(ctx, x, kOp, "x");
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, kOp, ": x must be [R, C] or [B, R, C], got ",
               x.DebugString());
  const int64_t batch = x.ndim() == 3 ? x.dim(0) : 1;
  const int64_t size = x.dim(-2) * x.dim(-1);
  if (batch == 0 || size == 0) return;
  // The chunks of a matrix depend on its size alone: the norms' bits do not
  // change from run to run.
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  Tensor partials = ctx.Empty({batch * chunks}, DType::kF64);
  Tensor scale = ctx.Empty({batch}, DType::kF64);
  DispatchFloat(x, [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* xs = Ptr<S>(x);
    FrobeniusPartialsKernel<S><<<Blocks(batch * chunks * kThreads), kThreads, 0, Stream(ctx)>>>(
        batch, size, chunks, xs, Ptr<double>(partials));
    SM_CHECK_LAUNCH(ctx, kOp, "FrobeniusPartialsKernel");
    FrobeniusScaleKernel<<<Blocks(batch * kThreads), kThreads, 0, Stream(ctx)>>>(
        batch, chunks, Ptr<const double>(partials), eps, Ptr<double>(scale));
    SM_CHECK_LAUNCH(ctx, kOp, "FrobeniusScaleKernel");
    constexpr int kV = kPack<S>;
    const int64_t n = batch * size;
    if (size % kV == 0 && Aligned16(xs)) {
      FrobeniusApplyKernel<S, kV>
          <<<Blocks(n / kV), kThreads, 0, Stream(ctx)>>>(n, size, Ptr<const double>(scale), xs);
    } else {
      FrobeniusApplyKernel<S, 1>
          <<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, size, Ptr<const double>(scale), xs);
    }
    SM_CHECK_LAUNCH(ctx, kOp, "FrobeniusApplyKernel");
  });
}

void MuonApply(const ExecContext& ctx, const Tensor& params, const Tensor& ortho,
               const Tensor& segments, const Tensor& coefficients, double lr,
               const ops::StepControl& control) {
  constexpr const char* kOp = "MuonApply";
  CheckOnDevice(ctx, params, kOp, "params");
  CheckOnDevice(ctx, ortho, kOp, "ortho");
  CheckControl(ctx, control, kOp, /*needs_clip=*/false, /*needs_count=*/false);
  const Tensor plan =
      ChunkPlan(ctx, segments, RowKind::kBeginEndPacked, params.numel(), ortho.numel(), kOp);
  const int64_t count = segments.dim(0);
  CheckCoefficients(ctx, coefficients, count, 3, kOp);
  if (count == 0) return;
  DispatchF32F64(kOp, params, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DispatchSameOrBf16<T>(ortho, kOp, "ortho", [&](auto otag) {
      using O = typename decltype(otag)::type;
      MuonApplyKernel<T, O>
          <<<ChunkBlocks(ChunkBound(params.numel(), count)), kThreads, 0, Stream(ctx)>>>(
              Ptr<const int64_t>(segments), Ptr<const double>(coefficients),
              Ptr<const int64_t>(plan), count, lr, Ptr<const int32_t>(control.nonfinite),
              Ptr<T>(params), Ptr<const O>(ortho));
    });
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MuonApplyKernel");
}

}  // namespace scalemoe::cuda
