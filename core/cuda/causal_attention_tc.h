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

// Shared with the mma.sync kernels (causal_attention_mma.cu).
// x as a bf16 tensor with 16-byte aligned rows (cp.async): x itself when it
// already is one, else a converted copy (scratch of this call).
Tensor AttentionBf16Operand(const ExecContext& ctx, const Tensor& x);
// D = rowsum(d_out ⊙ out) in f32, [B, H, T] like lse (scratch of this
// call); out and d_out [B, T, H, D] of one dtype, f32 or bf16.
Tensor AttentionRowDot(const ExecContext& ctx, const Tensor& out, const Tensor& d_out,
                       const char* op);

}  // namespace scalemoe::cuda
