// Attention: the causal self-attention sublayer of one block, fed by the
// pre-attention normalization n = x / rms(x) (computed once by the block).
//   q = W_q(γ_q ⊙ n), k = W_k(γ_k ⊙ n), v = W_v(γ_v ⊙ n)   [N, H*D], [N, KV*D]
//   optional per-head RMSNorm with scale on q, k (QK-norm or DNP; v too
//   under DNP with dnp_normalize_v), RoPE on q and k, causal GQA softmax
//   attention, out = W_o(attn) [N, C].
// The γ's (names "layers.<l>.attn_norm.scale" shared, or
// "layers.<l>.attn.gamma_q/k/v" under PER_BRANCH with hg_attention) are
// owned here through BranchScales; DUAL adds u_q/u_k/u_v/u_o
// ("layers.<l>.attn.u_q" ...) per dual_projections.
// QK-norm and DNP together: DNP's norm IS a QK-norm, so only one norm is
// applied, named "layers.<l>.attn.dnp_q.scale" (model.qk_norm is then moot).
//
// Precision: under train.precision BF16 the attention itself also takes
// bf16 operands (ops::AttentionOptions, tensor cores on the GPU); FP32 keeps
// the exact kernels.
//
// Gradient contract: Backward overwrites d_n, accumulates parameter grads;
// FinishBackward once per step after the last Backward.
//
// Tensor parallel (Megatron's pairing): W_q, W_k, W_v are column-parallel by
// heads (rank r holds heads [r*H/tp, (r+1)*H/tp) and the matching KV heads),
// W_o is row-parallel; attention runs on the local heads only. The γ's and
// the per-head norm scales are replicated with a per-rank share of their
// gradient (tp_partial_grad); u_q/u_k/u_v split with the heads, u_o whole.
// n and out are the residual stream's rows (model/tp_region.h).
#pragma once

#include <memory>
#include <optional>

#include "configs/scalemoe.pb.h"
#include "core/forward_cache.h"
#include "core/ops.h"
#include "model/tp_region.h"
#include "norm/branch_scales.h"
#include "norm/scaled_linear.h"
#include "norm/scaled_linear_group.h"
#include "norm/scaled_rms_norm.h"

namespace scalemoe {

class Attention {
 public:
  // tp must outlive the layer.
  Attention(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
            const TpRegion& tp);

  // Each returns the first failed collective's Status (TP groups).
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // n, out: this rank's residual rows of `batch` sequences of `seq` tokens
  // ([B*T, C], or [B*T/tp, C] under sequence parallelism).
  Status Forward(const ExecContext& ctx, const Tensor& n, int64_t batch, int64_t seq,
                 const Tensor& out);
  Status Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n);
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

 private:
  // The dtype of q, k, v, the attention's output and their gradients: bf16
  // under bf16 operands, where the q, k and v projections can all write it
  // (ScaledLinear::output_dtype), else the activations'. The per-head norms
  // (DNP, QK-norm) run in the master's dtype between the two.
  DType ActivationDType(DType activations) const;
  // The dtype a per-head norm reads its projection in (and keeps for its
  // backward), given the attention's `inner` dtype: the master's under
  // train.fp32_head_norm_input, where only the norm's output is rounded (a
  // bf16 input turns the exactly zero gradient of a β that the norm
  // cancels, DNP under OR, into bf16 rounding noise); else `inner`.
  DType HeadNormInputDType(DType inner) const;
  // ops::RopeTable for at least seq positions in dtype (for the per-head
  // norms, which rotate their outputs, and for ops::Rope on q and k without
  // them), made on first use.
  const Tensor& RopeTable(const ExecContext& ctx, DType dtype, int64_t seq);
  // x [B, seq, H, D] rotated in place by RoPE (forward) or its inverse
  // (the backward), cos and sin from RopeTable in x's compute dtype.
  void RotateInPlace(const ExecContext& ctx, const Tensor& x, int64_t seq, bool forward);
  // model.fuse_qkv: gives the q, k and v maps one buffer for their formed
  // weights, side by side (before their PrepareStep).
  void ProvideQkvStorage(const ExecContext& ctx);
  // After their PrepareStep: qkv_weight_ and qkv_grad_, when the three's
  // weights and gradients lie side by side and their GEMMs are one
  // ([(H + 2·KV)·D, C]).
  void JoinQkv();
  // The dtypes the fused forward's GEMM writes q and k in and v in (a
  // per-head norm's input in HeadNormInputDType, else the attention's).
  struct QkvPlan {
    DType qk, v;
    // v from a GEMM of its own (DNP's norms on q and k only, reading fp32
    // under train.fp32_head_norm_input), straight into the attention's
    // dtype.
    bool v_apart() const { return v != qk; }
  };
  // The plan for input activations of dtype `activations`, or nullopt when
  // this forward runs three GEMMs: fuse_qkv off, the three not joined, q
  // and k apart (a norm on one), or a norm that takes no token-strided
  // input.
  std::optional<QkvPlan> FusedQkvPlan(DType activations) const;
  // The three GEMMs as one (model.fuse_qkv; v's apart per the plan): q, k
  // and v from its output's slices; the backward's counterpart below (one
  // GEMM for the weight gradient, one for d_n).
  void ForwardFused(const ExecContext& ctx, const Tensor& n_in, const QkvPlan& plan, DType inner);
  // The attention on q_, k_, v_ and the output projection into out.
  Status AttendAndProject(const ExecContext& ctx, const Tensor& out, int64_t tokens, DType dt,
                          DType inner);
  // d_qkv [B, T, H + 2·KV, D]: the one GEMM's d_y, of which d_q, d_k and
  // d_v are the slices where no norm sits (the attention's backward wrote
  // them there).
  void BackwardFused(const ExecContext& ctx, const Tensor& d_q, const Tensor& d_k,
                     const Tensor& d_v, const Tensor& d_qkv, const Tensor& d_n);

  const TpRegion& tp_;
  DType dtype_ = DType::kF32;            // the master weights' (PrepareStep)
  int64_t heads_, kv_heads_, head_dim_;  // heads_ and kv_heads_: this rank's
  double rope_theta_;
  int64_t max_seq_;                          // model.seq_length: the rope table's positions
  Tensor rope_table_;                        // RopeTable's
  ops::AttentionOptions attention_options_;  // bf16 operands under train.precision BF16
  std::unique_ptr<BranchScales> scales_;  // branches q, k, v
  std::unique_ptr<ScaledLinear> q_proj_, k_proj_, v_proj_, o_proj_;
  // Their fold and unfold, same-shaped neighbours in one launch (q, k, v
  // under MHA; k, v under GQA; o too where it matches).
  std::unique_ptr<ScaledLinearGroup> projections_;
  std::unique_ptr<ScaledRmsNorm> q_norm_, k_norm_, v_norm_;  // null when absent
  bool fuse_qkv_;                                            // model.fuse_qkv
  bool fp32_head_norm_input_;                                // train.fp32_head_norm_input
  Tensor qkv_storage_;  // [(H + 2·KV)·D, C]: the three's formed weights (fuse_qkv_)
  Tensor qkv_weight_;   // this step's three weights as one (JoinQkv; else undefined)
  Tensor qkv_grad_;     // ... and their gradients
  // Forward cache.
  Tensor qkv_input_;  // the fused GEMM's input (undefined when the forward ran three)
  int64_t batch_ = 0, seq_ = 0;
  // [B, T, *, D] attention inputs (after norm and RoPE); under fuse_qkv,
  // where no norm sits, head-row slices of the one GEMM's output.
  Tensor q_, k_, v_;
  Tensor attn_;       // [B, T, H, D] attention output (the input of W_o)
  Tensor lse_;        // [B, H, T] log-sum-exp of each query row's scores
};

}  // namespace scalemoe
