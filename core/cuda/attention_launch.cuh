// Host-side launch helpers shared by the two tensor-core attention paths
// (causal_attention_tc.cu, WMMA; causal_attention_mma.cu, mma.sync).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <type_traits>

#include "core/cuda/kernel_util.cuh"
#include "core/tensor.h"

namespace scalemoe::cuda {

// The scores' scale 1/√D in log2 units (the kernels exponentiate with exp2).
inline float AttentionScaleLog2(int dim) {
  return 1.4426950408889634f / std::sqrt(static_cast<float>(dim));
}

// Calls f(Tag<T>, std::integral_constant<int, D>) for q's dtype (bf16, else
// f32) and head dim (64, else 128): the tensor-core paths' instances.
template <typename F>
void DispatchAttention(const Tensor& q, F&& f) {
  auto with_dim = [&](auto tag) {
    if (q.dim(3) == 64) {
      f(tag, std::integral_constant<int, 64>{});
    } else {
      f(tag, std::integral_constant<int, 128>{});
    }
  };
  if (q.dtype() == DType::kBF16) {
    with_dim(Tag<__nv_bfloat16>{});
  } else {
    with_dim(Tag<float>{});
  }
}

}  // namespace scalemoe::cuda
