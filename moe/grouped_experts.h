// GroupedExperts: a group of SwiGLU expert FFNs (routed or shared), each
//   y = u_down ⊙ ((u_gate ⊙ silu((γ_gate ⊙ x) W_gateᵀ)) * (u_up ⊙ (γ_up ⊙ x) W_upᵀ)) W_downᵀ
// over its own contiguous block of input rows (the permuter groups rows by
// expert). Each projection is a ScaledLinear (norm/scaled_linear.h, the
// model's one linear map with scale vectors); Input-Norm γ's come from the
// caller's BranchScales (MoeLayer's), output-side u's (where
// ScaleOptions::OutputVector says so for GATE/UP/DOWN) are owned by the
// projections.
//
// DUAL_NORMALIZED: SCALE_VECTORS.md defines the output-side RMSNorm for
// q/k/v heads only; for experts it behaves exactly like DUAL (plain u).
//
// Gradient contract: Backward overwrites d_x and accumulates parameter (or
// folded-weight) gradients; FinishBackward adds γ/u gradients. One Forward
// cache: each Backward must follow its Forward.
//
// Under expert parallelism a group holds only the owned experts
// [first_expert, first_expert + num_experts): names and layout.expert use the
// global index, so checkpoints and the optimizer see the same parameters
// whatever the layout; local index e means global first_expert + e.
//
// Layouts (the same in every world; the registry's ShardCoords slice):
// - routed experts: everything tp_group kExpert (ETP). Each FFN is split on F
//   over ETP: w_gate, w_up [F, C] on dim 0, w_down [C, F] on dim 1, u_gate,
//   u_up [F] on dim 0 (their β tp_partial_grad; a normalized one reduces its
//   norms over `ffn_split_group`); u_down [C] replicated with
//   tp_partial_grad (each ETP rank's F slice gives a share). Rows must then
//   be every row of the ETP group (moe/expert_tp_exchange.h) and y is this
//   rank's PARTIAL output (summed over ETP by the exchange).
// - shared experts: replicated, every parameter tp_partial_grad (each TP
//   rank runs them on its own rows only).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/forward_cache.h"
#include "core/ops.h"
#include "norm/branch_scales.h"
#include "norm/scale_options.h"
#include "norm/scale_vector.h"
#include "norm/scaled_linear.h"
#include "norm/scaled_linear_group.h"

namespace scalemoe {

struct ExpertGroupOptions {
  std::string prefix;  // e.g. "layers.3.moe.experts"; params "<prefix>.<e>.w_gate"
  int num_experts = 0;   // experts this rank holds
  int first_expert = 0;  // global index of the first (expert parallel: the owned range)
  int64_t hidden = 0;  // C
  int64_t ffn = 0;     // F (global; routed experts hold F/ETP of it)
  int layer = -1;
  bool routed = true;  // routed experts set layout.expert = e
  double init_std = 0.02;
  double down_init_std = 0.02;  // output projection
  // Routed only: the ETP group F is split over (not owned; may be null when
  // the registry's etp_size is 1). Its size must match the registry's.
  Communicator* ffn_split_group = nullptr;
  // Where each expert's Input-Norm γ_gate and γ_up come from: one entry per
  // expert, in local order (a null `scales` = no γ), or empty for none.
  struct GammaSource {
    const BranchScales* scales = nullptr;
    int branch = 0;
  };
  std::vector<GammaSource> gate_gamma, up_gamma;
  bool bf16_operands = false;  // ScaledLinearOptions::bf16_operands
  // moe.fuse_gate_up: gate and up as one GEMM where their tensors allow.
  bool fuse_gate_up = true;
  // moe.fuse_swiglu: with gate and up as one GEMM and every row in a group
  // (ForwardAllRows*), SwiGLU in that GEMM (ops::GroupedGemmSwiGlu) and its
  // backward in the down projection's data gradient
  // (ops::GroupedGemmSwiGluBackward).
  bool fuse_swiglu = false;
};

class GroupedExperts {
 public:
  GroupedExperts(ParamRegistry& registry, const ScaleOptions& scale_options,
                 ExpertGroupOptions options);
  ~GroupedExperts();

  int num_experts() const { return options_.num_experts; }
  int64_t local_ffn() const { return local_ffn_; }  // F held on this rank
  // Once per step, after the γ's BranchScales' Forward: folds γ (and u) into
  // the weights (or keeps them per token), every expert of one projection
  // in one launch where they fold alike. Fails only when a split normalized
  // u's all-reduce fails.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // x [M, C] with expert e on the next counts[e] rows (Σ counts <= M); y [M, C]
  // overwritten (rows past Σ counts are zero).
  void Forward(const ExecContext& ctx, const Tensor& x, const std::vector<int64_t>& counts,
               const Tensor& y);
  // The same when every one of x's M rows belongs to an expert and the row
  // offsets [E + 1] (i64, offsets[E] = M) are on the device already
  // (ops::CountOffsets): no host value is needed. Only where
  // reads_device_offsets().
  void ForwardAllRows(const ExecContext& ctx, const Tensor& x, const Tensor& offsets,
                      const Tensor& y);
  // ForwardAllRows on x = GatherRows(n, rows, divisor) without x in memory:
  // n [N, C], rows i32 [M] (the permutation: x's row i is n[rows[i] /
  // divisor]), y [M, C]. The first GEMMs, forward and weight gradient,
  // gather the rows (ops::GroupedGemmGathered): the same bits as
  // ForwardAllRows on the gathered x. rows must stay unchanged until the
  // Backward.
  void ForwardAllRowsGathered(const ExecContext& ctx, const Tensor& n, const Tensor& rows,
                              int divisor, const Tensor& offsets, const Tensor& y);
  // Whether ForwardAllRows may be used: the grouped path (below).
  bool reads_device_offsets() const { return Grouped(); }
  // d_x [M, C] overwritten from d_y [M, C] (rows past Σ counts are zero).
  void Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

 private:
  enum Proj { kGate = 0, kUp = 1, kDown = 2, kNumProj = 3 };
  struct Expert {
    std::unique_ptr<ScaledLinear> proj[kNumProj];
  };

  // The grouped path: every expert's projection in one GEMM launch per
  // matrix (ops::GroupedGemm), when every projection lets the caller run its
  // GEMM (ScaledLinear::external_gemm_ok: the fold, or no scale vectors);
  // otherwise one ScaledLinear call per expert.
  bool Grouped() const;
  // Forward's common start: the cache of x (the gather's source when
  // gathered), M = m input rows, Σ counts = rows, and the F-wide
  // intermediates over all M rows.
  void StartForward(const ExecContext& ctx, const Tensor& x, int64_t m, int64_t rows);
  // The first GEMMs' input: x_gemm_'s rows, or those gathered by
  // gather_rows_ (ForwardAllRowsGathered): c = x·W_eᵀ. The backward's
  // dW_e += d_eᵀ·x_e reads InputRows: x_gemm_, or a copy gathered for it
  // (ops::GroupedGemmWeightGradGathered took 2.4x the plain weight gradient
  // on the H200, bench/RESULTS.md Dec 5; the copy is one GatherRows).
  void InputGemm(const ExecContext& ctx, const ops::MatrixGroup& w, const Tensor& c) const;
  Tensor InputRows(const ExecContext& ctx) const;
  void ForwardGrouped(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  void BackwardGrouped(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);
  // The grouped path's GEMMs: c = a·op(W_e) + beta·c on each expert's rows,
  // and dW_e += a_eᵀ·b_e. One expert whose rows the host knows (a shared
  // expert: every token) runs them as one dense ops::Gemm on its rows:
  // cuBLASLt splits the weight gradient's K (every token) over the SMs,
  // which a grouped kernel's few output tiles cannot (64e's shared expert:
  // 24 tiles on 132 SMs, 60-120 TFLOP/s). The CPU's grouped GEMM is that
  // Gemm per group, so the CPU's bits do not change.
  bool DenseGemms() const { return options_.num_experts == 1 && !counts_.empty(); }
  // moe.fuse_swiglu applies to this Forward (and its Backward): gate and up
  // as one GEMM, and every row in a group (ForwardAllRows*).
  bool FusedSwiGlu() const { return gate_up_packed_ && options_.fuse_swiglu && counts_.empty(); }
  void ExpertGemm(const ExecContext& ctx, const Tensor& a, const ops::MatrixGroup& w,
                  const Tensor& c, const ops::GroupedGemmOptions& options) const;
  void ExpertWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                        const ops::MatrixGroup& grads) const;
  // Refreshes the weight and gradient groups when a tensor moved (PrepareStep).
  void UpdateGroups(const ExecContext& ctx);
  // Gives the gate and up maps one [E, 2F, C] buffer for the GEMM weights
  // they form (W_eff or bf16 copies), each expert's gate rows then its up
  // rows, before their first PrepareStep.
  void ProvideGateUpStorage(const ExecContext& ctx);

  ExpertGroupOptions options_;
  int64_t local_ffn_ = 0;
  std::vector<Expert> experts_;
  // Per projection, every expert's map: the fold and unfold of all experts
  // in one launch each (norm/scaled_linear_group.h).
  std::vector<ScaledLinearGroup> folds_;
  ops::MatrixGroup weights_[kNumProj], grads_[kNumProj];  // grouped path
  // Gate and up as one GEMM per matrix over [2F, C] (the grouped path, when
  // every expert's gate and up weights and gradients lie side by side):
  // half the launches, and d_x in one GEMM with K = 2F instead of two
  // (whose sum is rounded in another order: not the bits of the separate
  // GEMMs). moe.fuse_gate_up=false keeps two.
  bool gate_up_packed_ = false;
  Tensor gate_up_storage_;  // [E, 2F, C]: the maps' own GEMM weights (when they form them)
  ops::MatrixGroup gate_up_weights_, gate_up_grads_;  // [2F, C] per expert
  // Forward cache over all M rows.
  Tensor x_;            // [M, C]; gathered: the source [N, C]
  int64_t m_ = 0;       // M
  Tensor gather_rows_;  // ForwardAllRowsGathered's rows i32 [M]; else undefined
  int64_t gather_divisor_ = 1;
  Tensor gate_, up_, h_;      // [M, F]; grouped: in the GEMMs' dtype (bf16 under bf16 operands)
  Tensor gate_up_;            // [M, 2F] instead of gate_ and up_ when gate_up_packed_
  std::vector<int64_t> counts_;
  int64_t rows_ = 0;        // Σ counts_
  Tensor offsets_;          // grouped: int64 [E+1] on the device
  // The offsets last uploaded from host counts, and those counts.
  Tensor uploaded_offsets_;
  std::vector<int64_t> uploaded_counts_;
  Tensor x_gemm_, h_gemm_;  // grouped: x and h in the GEMMs' dtype (h_gemm_ is h_)
};

}  // namespace scalemoe
