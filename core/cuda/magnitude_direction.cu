// Dot products into a device scalar and the magnitude–direction
// reparameterisation of a scale vector on the GPU (core/ops.h; SCALE_VECTORS.md,
// "OR"): γ = β·α·s with s = 1, or s = √(dim/‖α‖²) in the normalized form.
// f32/f64; β, ‖α‖² and the dots are read on the device. Dot is a
// deterministic two-pass f64 sum (as ops::Sum); the rest is elementwise in
// the CPU reference's precision. The plain form's group ops run every
// vector of a MatrixGroup in one launch (the backward's dot one block's
// fixed-order f64 sum per vector).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/matrix_group_checks.h"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Pass 1: partials[block] = this block's grid-stride share of Σ x·y (f64).
template <typename T>
__global__ void DotPartialsKernel(int64_t n, const T* x, const T* y, double* partials) {
  double s = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    s += static_cast<double>(x[i]) * static_cast<double>(y[i]);
  }
  s = BlockSum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Pass 2 (one block): out[0] = Σ partials.
__global__ void DotFinishKernel(int parts, const double* partials, double* out) {
  double s = 0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += partials[i];
  s = BlockSum(s);
  if (threadIdx.x == 0) out[0] = s;
}

// gamma = β·s·α; s as the CPU reference (β·√(dim/‖α‖²) in f64, rounded to T).
template <typename T>
__global__ void MagnitudeDirectionKernel(int64_t n, const T* alpha, const T* beta,
                                         const double* norm_sq, double dim, T* gamma) {
  T scale = *beta;
  if (norm_sq != nullptr) scale = static_cast<T>(scale * sqrt(dim / *norm_sq));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += stride) {
    gamma[j] = scale * alpha[j];
  }
}

// dots = {‖α‖², <α,dγ> whole, <α,dγ> this slice}. Plain (dim <= 0):
// dα += β·dγ, dβ += dots[2]. Normalized: dβ += s·dots[2],
// dα += β·s·(dγ − α·dots[1]/dots[0]) in f64, s = √(dim/dots[0]).
template <typename T>
__global__ void MagnitudeDirectionBackwardKernel(int64_t n, const T* alpha, const T* beta,
                                                 const double* dots, int64_t dim, const T* d_gamma,
                                                 T* d_alpha, T* d_beta) {
  const T b = *beta;
  const double s0 = dots[0], s1 = dots[1], s2 = dots[2];
  const double scale = dim > 0 ? sqrt(static_cast<double>(dim) / s0) : 1.0;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *d_beta += dim > 0 ? static_cast<T>(scale * s2) : static_cast<T>(s2);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += stride) {
    if (dim > 0) {
      d_alpha[j] += static_cast<T>(b * scale * (d_gamma[j] - alpha[j] * s1 / s0));
    } else {
      d_alpha[j] += b * d_gamma[j];
    }
  }
}

// The plain form over G vectors of d elements, found through MatrixGroup
// address tables: gamma_g[j] = β_g·α_g[j].
template <typename T>
__global__ void MagnitudeDirectionGroupKernel(int64_t n, int64_t d, const int64_t* alpha,
                                              const int64_t* beta, const int64_t* gamma) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t g = i / d, j = i - g * d;
    const T scale = *reinterpret_cast<const T*>(beta[g]);
    reinterpret_cast<T*>(gamma[g])[j] = scale * reinterpret_cast<const T*>(alpha[g])[j];
  }
}

// Block g (grid-stride over the G vectors): dα_g += β_g·dγ_g and dβ_g +=
// <α_g, dγ_g>, the dot summed in f64 by the block in a fixed order.
template <typename T>
__global__ void MagnitudeDirectionBackwardGroupKernel(int64_t groups, int64_t d,
                                                      const int64_t* alpha, const int64_t* beta,
                                                      const int64_t* d_gamma,
                                                      const int64_t* d_alpha,
                                                      const int64_t* d_beta) {
  __shared__ double warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = static_cast<int>(blockDim.x / 32);
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {  // block-uniform
    const T* a = reinterpret_cast<const T*>(alpha[g]);
    const T* dg = reinterpret_cast<const T*>(d_gamma[g]);
    T* da = reinterpret_cast<T*>(d_alpha[g]);
    const T b = *reinterpret_cast<const T*>(beta[g]);
    double s = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      s += static_cast<double>(a[j]) * static_cast<double>(dg[j]);
      da[j] += b * dg[j];
    }
    s = WarpSum(s);
    if (lane == 0) warp_sums[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0;
      for (int w = 0; w < warps; ++w) total += warp_sums[w];
      T* db = reinterpret_cast<T*>(d_beta[g]);
      *db += static_cast<T>(total);
    }
    __syncthreads();  // warp_sums is free for the next vector
  }
}

// ---------------------------------------------------------------- launchers

void CheckF64(const ExecContext& ctx, const Tensor& t, int64_t n, const char* op,
              const char* what) {
  CheckOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(t.dtype() == DType::kF64 && t.numel() == n, op, " ", what, " must be f64[", n,
               "], got ", t.DebugString());
}

const int64_t* Table(const MatrixGroup& g) {
  return static_cast<const int64_t*>(g.addresses.raw_data());
}

}  // namespace

void Dot(const ExecContext& ctx, const Tensor& x, const Tensor& y, const Tensor& out) {
  constexpr const char* kOp = "Dot";
  CheckOnDevice(ctx, x, kOp, "x");
  CheckOnDevice(ctx, y, kOp, "y");
  SM_CHECK_MSG(x.numel() == y.numel() && x.dtype() == y.dtype(), "Dot ", x.DebugString(), " . ",
               y.DebugString());
  CheckF64(ctx, out, 1, kOp, "out");
  const int64_t n = x.numel();
  // The number of partials depends on n only: the order of the additions
  // (and the result's bits) does not change from run to run.
  constexpr int kMaxParts = 1024;
  const int parts =
      static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxParts));
  Tensor partials = ctx.Empty({parts}, DType::kF64);
  DispatchF32F64(kOp, x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    DotPartialsKernel<T><<<parts, kThreads, 0, Stream(ctx)>>>(n, Ptr<const T>(x), Ptr<const T>(y),
                                                              Ptr<double>(partials));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "DotPartialsKernel");
  DotFinishKernel<<<1, 1024, 0, Stream(ctx)>>>(parts, Ptr<const double>(partials),
                                               Ptr<double>(out));
  SM_CHECK_LAUNCH(ctx, kOp, "DotFinishKernel");
}

void MagnitudeDirection(const ExecContext& ctx, const Tensor& alpha, const Tensor& beta,
                        const Tensor& norm_sq, int64_t dim, const Tensor& gamma) {
  constexpr const char* kOp = "MagnitudeDirection";
  CheckOnDevice(ctx, alpha, kOp, "alpha");
  CheckOnDevice(ctx, beta, kOp, "beta");
  CheckOnDevice(ctx, gamma, kOp, "gamma");
  SM_CHECK_MSG(gamma.numel() == alpha.numel() && gamma.dtype() == alpha.dtype() &&
                   beta.numel() == 1 && beta.dtype() == alpha.dtype(),
               "MagnitudeDirection α ", alpha.DebugString(), " β ", beta.DebugString(), " γ ",
               gamma.DebugString());
  if (norm_sq.defined()) CheckF64(ctx, norm_sq, 1, kOp, "‖α‖²");
  const int64_t n = alpha.numel();
  if (n == 0) return;
  DispatchF32F64(kOp, alpha, [&](auto tag) {
    using T = typename decltype(tag)::type;
    MagnitudeDirectionKernel<T><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
        n, Ptr<const T>(alpha), Ptr<const T>(beta), Ptr<const double>(norm_sq),
        static_cast<double>(dim), Ptr<T>(gamma));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MagnitudeDirectionKernel");
}

void MagnitudeDirectionBackward(const ExecContext& ctx, const Tensor& alpha, const Tensor& beta,
                                const Tensor& dots, int64_t dim, const Tensor& d_gamma,
                                const Tensor& d_alpha, const Tensor& d_beta) {
  constexpr const char* kOp = "MagnitudeDirectionBackward";
  CheckOnDevice(ctx, alpha, kOp, "alpha");
  CheckOnDevice(ctx, beta, kOp, "beta");
  CheckOnDevice(ctx, d_gamma, kOp, "d_gamma");
  CheckOnDevice(ctx, d_alpha, kOp, "d_alpha");
  CheckOnDevice(ctx, d_beta, kOp, "d_beta");
  SM_CHECK_MSG(d_gamma.numel() == alpha.numel() && d_alpha.numel() == alpha.numel() &&
                   d_beta.numel() == 1 && beta.numel() == 1 && d_gamma.dtype() == alpha.dtype() &&
                   d_alpha.dtype() == alpha.dtype() && beta.dtype() == alpha.dtype() &&
                   d_beta.dtype() == alpha.dtype(),
               "MagnitudeDirectionBackward α ", alpha.DebugString(), " β ", beta.DebugString(),
               " dγ ", d_gamma.DebugString(), " dα ", d_alpha.DebugString(), " dβ ",
               d_beta.DebugString());
  CheckF64(ctx, dots, 3, kOp, "dots");
  const int64_t n = alpha.numel();
  DispatchF32F64(kOp, alpha, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // At least one block: d_beta is updated even for an empty slice.
    MagnitudeDirectionBackwardKernel<T><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
        n, Ptr<const T>(alpha), Ptr<const T>(beta), Ptr<const double>(dots), dim,
        Ptr<const T>(d_gamma), Ptr<T>(d_alpha), Ptr<T>(d_beta));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MagnitudeDirectionBackwardKernel");
}

void MagnitudeDirectionGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                             const MatrixGroup& beta, const MatrixGroup& gamma) {
  constexpr const char* kOp = "MagnitudeDirectionGroup";
  ops::CheckMagnitudeDirectionGroup(alpha, beta, gamma, Device::kCUDA);
  const int64_t groups = alpha.size(), d = alpha.cols;
  const int64_t n = groups * d;
  if (n == 0) return;
  DispatchF32F64(kOp, alpha.matrices[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    MagnitudeDirectionGroupKernel<T>
        <<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, d, Table(alpha), Table(beta), Table(gamma));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MagnitudeDirectionGroupKernel");
}

void MagnitudeDirectionBackwardGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                                     const MatrixGroup& beta, const MatrixGroup& d_gamma,
                                     const MatrixGroup& d_alpha, const MatrixGroup& d_beta) {
  constexpr const char* kOp = "MagnitudeDirectionBackwardGroup";
  ops::CheckMagnitudeDirectionBackwardGroup(alpha, beta, d_gamma, d_alpha, d_beta, Device::kCUDA);
  const int64_t groups = alpha.size(), d = alpha.cols;
  if (groups == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(groups, kMaxBlocks));
  DispatchF32F64(kOp, alpha.matrices[0], [&](auto tag) {
    using T = typename decltype(tag)::type;
    MagnitudeDirectionBackwardGroupKernel<T><<<blocks, kThreads, 0, Stream(ctx)>>>(
        groups, d, Table(alpha), Table(beta), Table(d_gamma), Table(d_alpha), Table(d_beta));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "MagnitudeDirectionBackwardGroupKernel");
}

}  // namespace scalemoe::cuda
