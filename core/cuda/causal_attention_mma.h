// The mma.sync path of CausalAttention and its backward
// (core/cuda/causal_attention_mma.cu), the A/B alternative to the WMMA
// kernels of causal_attention_tc.cu for AttentionOptions::bf16_operands.
// Internal to the CUDA backend.
#pragma once

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::cuda {

// Whether SCALEMOE_ATTENTION=mma asks for these kernels (read once per
// process); the WMMA kernels stay the default until a GPU has validated
// these.
bool UseAttentionMma();

// The same contract and preconditions as CausalAttentionTc and
// CausalAttentionBackwardTc (causal_attention_tc.h).
void CausalAttentionMma(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse);
void CausalAttentionBackwardMma(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                                const Tensor& v, const Tensor& out, const Tensor& lse,
                                const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                                const Tensor& d_v);

}  // namespace scalemoe::cuda
