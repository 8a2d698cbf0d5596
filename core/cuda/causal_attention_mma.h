// The mma.sync path of CausalAttention and its backward
// (core/cuda/causal_attention_mma.cu), the A/B alternative to the WMMA
// kernels of causal_attention_tc.cu for AttentionOptions::bf16_operands
// (the default; the WMMA ones behind SCALEMOE_ATTENTION=wmma).
// Internal to the CUDA backend.
#pragma once

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::cuda {

// Whether the BF16 attention runs on these kernels: the default (validated
// on an H200, 1.8x the WMMA forward and 2x its backward at gpu_moe_125m's
// shapes); SCALEMOE_ATTENTION=wmma keeps the WMMA kernels, for A/B timings.
// Read once per process.
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
