// Elementwise ops on the GPU: Copy (with f32/f64/bf16 conversion), Axpy,
// Scale, Zero, and Sum (a deterministic two-pass reduction in f64).
// f32 and bf16 compute in f32, f64 in f64; bf16 stores round to nearest even.
// Kernels take 16-byte packs when every pointer is 16-byte aligned, single
// elements otherwise.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// y = x converted; f64 -> bf16 goes through f32 (as the CPU reference).
template <typename From, typename To, int V>
__global__ void ConvertKernel(int64_t n, const From* x, To* y) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    Acc<From> in[V];
    Acc<To> out[V];
    LoadPack<V>(x, i, count, in);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = static_cast<Acc<To>>(in[k]);
    StorePack<V>(y, i, count, out);
  });
}

template <typename T, int V>
__global__ void AxpyKernel(int64_t n, Acc<T> alpha, const T* x, T* y) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    Acc<T> xv[V], yv[V];
    LoadPack<V>(x, i, count, xv);
    LoadPack<V>(y, i, count, yv);
#pragma unroll
    for (int k = 0; k < V; ++k) yv[k] += alpha * xv[k];
    StorePack<V>(y, i, count, yv);
  });
}

template <typename T, int V>
__global__ void ScaleKernel(int64_t n, Acc<T> alpha, T* x) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    Acc<T> v[V];
    LoadPack<V>(x, i, count, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] *= alpha;
    StorePack<V>(x, i, count, v);
  });
}

// Pass 1 of Sum: partials[block] = this block's grid-stride share of x.
template <typename T>
__global__ void SumPartialsKernel(int64_t n, const T* x, double* partials) {
  double s = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    s += static_cast<double>(ToAcc(x[i]));
  }
  s = BlockSum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Pass 2 (one block): out[0] = sum of the partials.
template <typename Out>
__global__ void SumFinishKernel(int parts, const double* partials, Out* out) {
  double s = 0;
  for (int i = threadIdx.x; i < parts; i += blockDim.x) s += partials[i];
  s = BlockSum(s);
  if (threadIdx.x == 0) out[0] = static_cast<Out>(s);
}

// ---------------------------------------------------------------- launchers

template <typename From, typename To>
void LaunchConvert(const ExecContext& ctx, int64_t n, const From* x, To* y) {
  constexpr int kV = kPack<From> < kPack<To> ? kPack<From> : kPack<To>;
  if (Aligned16(x) && Aligned16(y)) {
    ConvertKernel<From, To, kV><<<Blocks((n + kV - 1) / kV), kThreads, 0, Stream(ctx)>>>(n, x, y);
  } else {
    ConvertKernel<From, To, 1><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, x, y);
  }
  SM_CHECK_LAUNCH(ctx, "Copy", "ConvertKernel");
}

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kF64 || d == DType::kBF16; }

void CheckSameFloat(const ExecContext& ctx, const Tensor& x, const Tensor& y, const char* op) {
  CheckOnDevice(ctx, x, op, "x");
  CheckOnDevice(ctx, y, op, "y");
  SM_CHECK_MSG(x.numel() == y.numel() && x.dtype() == y.dtype() && IsFloat(x.dtype()), op, " ",
               x.DebugString(), " and ", y.DebugString());
}

}  // namespace

void Copy(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  CheckOnDevice(ctx, x, "Copy", "x");
  CheckOnDevice(ctx, y, "Copy", "y");
  SM_CHECK_MSG(x.numel() == y.numel(), "Copy ", x.DebugString(), " into ", y.DebugString());
  if (x.numel() == 0) return;
  if (x.dtype() == y.dtype()) {
    if (x.raw_data() == y.raw_data()) return;
    SM_CHECK_CUDA_CALL(ctx,
                       cudaMemcpyAsync(y.raw_data(), x.raw_data(), x.nbytes(),
                                       cudaMemcpyDeviceToDevice, Stream(ctx)),
                       "Copy");
    return;
  }
  SM_CHECK_MSG(IsFloat(x.dtype()) && IsFloat(y.dtype()), "Copy converts among f32, f64 and bf16: ",
               x.DebugString(), " into ", y.DebugString());
  DispatchFloat(x, [&](auto from) {
    DispatchFloat(y, [&](auto to) {
      using From = typename decltype(from)::type;
      using To = typename decltype(to)::type;
      LaunchConvert(ctx, x.numel(), Ptr<const From>(x), Ptr<To>(y));
    });
  });
}

void Axpy(const ExecContext& ctx, double alpha, const Tensor& x, const Tensor& y) {
  CheckSameFloat(ctx, x, y, "Axpy");
  const int64_t n = y.numel();
  if (n == 0) return;
  DispatchFloat(y, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kV = kPack<T>;
    const T* xs = Ptr<const T>(x);
    T* ys = Ptr<T>(y);
    const auto a = static_cast<Acc<T>>(alpha);
    if (Aligned16(xs) && Aligned16(ys)) {
      AxpyKernel<T, kV><<<Blocks((n + kV - 1) / kV), kThreads, 0, Stream(ctx)>>>(n, a, xs, ys);
    } else {
      AxpyKernel<T, 1><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, a, xs, ys);
    }
  });
  SM_CHECK_LAUNCH(ctx, "Axpy", "AxpyKernel");
}

void Scale(const ExecContext& ctx, double alpha, const Tensor& x) {
  CheckSameFloat(ctx, x, x, "Scale");
  const int64_t n = x.numel();
  if (n == 0) return;
  if (alpha == 0.0) {  // zeros, clearing NaN/Inf (as the CPU reference)
    Zero(ctx, x);
    return;
  }
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kV = kPack<T>;
    T* xs = Ptr<T>(x);
    const auto a = static_cast<Acc<T>>(alpha);
    if (Aligned16(xs)) {
      ScaleKernel<T, kV><<<Blocks((n + kV - 1) / kV), kThreads, 0, Stream(ctx)>>>(n, a, xs);
    } else {
      ScaleKernel<T, 1><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, a, xs);
    }
  });
  SM_CHECK_LAUNCH(ctx, "Scale", "ScaleKernel");
}

void Zero(const ExecContext& ctx, const Tensor& x) {
  CheckOnDevice(ctx, x, "Zero", "x");
  if (x.numel() == 0) return;
  SM_CHECK_CUDA_CALL(ctx, cudaMemsetAsync(x.raw_data(), 0, x.nbytes(), Stream(ctx)), "Zero");
}

void Sum(const ExecContext& ctx, const Tensor& x, const Tensor& out) {
  CheckOnDevice(ctx, x, "Sum", "x");
  CheckOnDevice(ctx, out, "Sum", "out");
  SM_CHECK_MSG(IsFloat(x.dtype()), "Sum of ", x.DebugString());
  SM_CHECK_MSG(out.numel() == 1 && (out.dtype() == DType::kF32 || out.dtype() == DType::kF64),
               "Sum writes one f32/f64 element, got ", out.DebugString());
  const int64_t n = x.numel();
  // The number of partials depends on n only, so the order of additions
  // (and the result's bits) does not change from run to run.
  constexpr int kMaxParts = 1024;
  const int parts = static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxParts));
  Tensor partials = ctx.Empty({parts}, DType::kF64);
  DispatchFloat(x, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SumPartialsKernel<T><<<parts, kThreads, 0, Stream(ctx)>>>(n, Ptr<const T>(x),
                                                             Ptr<double>(partials));
  });
  SM_CHECK_LAUNCH(ctx, "Sum", "SumPartialsKernel");
  if (out.dtype() == DType::kF64) {
    SumFinishKernel<double><<<1, 1024, 0, Stream(ctx)>>>(parts, Ptr<const double>(partials),
                                                         Ptr<double>(out));
  } else {
    SumFinishKernel<float><<<1, 1024, 0, Stream(ctx)>>>(parts, Ptr<const double>(partials),
                                                        Ptr<float>(out));
  }
  SM_CHECK_LAUNCH(ctx, "Sum", "SumFinishKernel");
}

}  // namespace scalemoe::cuda
