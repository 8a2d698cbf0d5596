// The tensor-core path of CausalAttention and its backward
// (core/cuda/causal_attention_tc.cu), taken by core/cuda/causal_attention.cu
// when AttentionOptions::bf16_operands asks for it. Internal to the CUDA
// backend.
#pragma once

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::cuda {

// Whether the tensor-core path takes these tensors: head dim 64 or 128,
// f32 or bf16 (f64 keeps the exact kernels).
bool AttentionTcFits(const Tensor& q);

// The ops' contract (core/ops.h) with bf16 operands and f32 accumulation.
// Preconditions (the caller's checks): shapes, dtypes and devices as
// CausalAttention requires, AttentionTcFits(q), q non-empty.
void CausalAttentionTc(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& out, const Tensor& lse);
void CausalAttentionBackwardTc(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& out, const Tensor& lse,
                               const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                               const Tensor& d_v);

}  // namespace scalemoe::cuda
