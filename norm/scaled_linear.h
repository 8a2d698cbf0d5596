// ScaledLinear: the one linear map with scale vectors, used by every
// projection of the model (attention, dense MLP, LM head) and of the MoE
// layer (router, routed and shared experts):
//   y[T, R] = u ⊙ ((γ ⊙ x[T, C]) Wᵀ)      for a weight W [R, C]
// with an optional Input-Norm γ [C] (owned by a BranchScales, one of its
// branches) and an optional output-side u [R] (DUAL placement, role
// kOutputNormScale, owned here), per SCALE_VECTORS.md ("Cost").
//
// Paths (scale_vectors.fold_into_weights):
// - fold: W_eff = diag(u)·W·diag(γ) is formed once per step, the token path
//   is one GEMM with W_eff. Backward accumulates dW_eff straight into W's
//   fp32 gradient; FinishBackward turns it into dW, dγ, du in place (the
//   vectors' sums read it before it is overwritten). A weight whose gradient
//   also collects other terms (a tied head: the embedding lookup adds into
//   the same buffer) keeps dW_eff in a buffer of its own instead.
// - fold just in time: the same, but W_eff is formed right before each GEMM
//   that reads it (forward, and the backward's d_x) and released after, so
//   only one layer's W_eff is alive at a time; dW_eff still accumulates in
//   W's gradient.
// - per token: γ and u scale the activations, their gradients accumulate
//   in Backward; W is used as is.
// Both compute the same function (tests compare them).
//
// Tensor parallel: the map is local to this rank's shard of W (its
// local_shape); the caller moves activations (model/tp_region.h). W split on
// dim 0 (column-parallel) splits u with its rows; W split on dim 1
// (row-parallel) leaves u [R] whole, its gradient a per-rank share
// (tp_partial_grad), as does a W whose own layout is tp_partial_grad (the
// MoE layer's shared experts). A replicated γ in front of a column-parallel
// map gets a share too: its owner marks it.
//
// Gradient contract: Backward overwrites or adds into d_x (GradMode) and
// accumulates parameter gradients; dγ lands in the BranchScales' d_gamma,
// which the owner pushes to the parameters after FinishBackward. One Forward
// cache: each Backward follows its Forward.
//
// Precision (train.precision): with bf16 operands the GEMMs read a bf16
// copy of the weight (W_eff itself when folded, formed from the fp32 master
// each step) and their input as it is when bf16 (the residual stream's
// norm outputs: ResidualDType), else a bf16 copy (one per input shared by
// several maps: SharedGemmInput), accumulate in fp32 and write fp32
// weight gradients; outputs are in the caller's activations' dtype (bf16
// but for the logits, the per-head norms' inputs and fp32 residual
// streams). Per-token scalings by γ and u run in the master's dtype. The
// master W, its gradient and optimizer state, γ and u stay fp32. The
// router's map stays fp32 (its logits decide the routing): on exact bf16
// parts of its operands (ScaledLinearOptions::bf16_parts).
//
// Names: construction records in the parameters' ParamSpec which weight γ
// and u fold into (ScaleVectorInfo::folds_into), for the export.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "core/context.h"
#include "core/forward_cache.h"
#include "core/params.h"
#include "core/tensor.h"
#include "norm/branch_scales.h"
#include "norm/scale_options.h"
#include "norm/scale_vector.h"

namespace scalemoe {

// Whether a Backward overwrites d_x or adds into it (several projections
// reading one input, e.g. q, k, v of one normalized n).
enum class GradMode : uint8_t { kOverwrite = 0, kAccumulate = 1 };

struct ScaledLinearOptions {
  ScalePath path = ScalePath::kFold;
  // Non-empty: an output-side u [R] is registered under this name, with
  // this reparameterisation.
  std::string u_name = {};
  Reparam reparam = config::ScaleVectorConfig::PLAIN;
  // The (E)TP group W is split over: a split normalized u reduces its norms
  // over it. May be null.
  Communicator* split_group = nullptr;
  // W's gradient also collects other terms (a tied LM head): the folded
  // gradient is kept apart and added at FinishBackward.
  bool shared_weight_grad = false;
  // The GEMMs' operands are bf16 copies (see "Precision" above).
  bool bf16_operands = false;
  // The map stays f32 (the router: its logits decide the routing) but its
  // GEMMs run on bf16 tensor cores: a bf16 x enters them as it is, and W
  // (W_eff when folded) and d_y as ops::SplitBf16's three parts, so every
  // product is exact and only the f32 accumulation rounds, as in an f32
  // GEMM. No f32 copy of x is made or kept. Only where the token path is
  // the one GEMM on a weight formed once per step (external_gemm_ok) and
  // the master is f32 without bf16_operands; else (and for an f32 x) the
  // f32 GEMMs run as before.
  bool bf16_parts = false;
};

// Whether `cfg` asks for bf16 GEMM operands (train.precision BF16).
bool Bf16Operands(const config::RunConfig& cfg);

// The dtype of the residual stream and of the activations between the
// sublayers (norm outputs, the MoE layer's permuted rows) for master weights
// of `master`: bf16 under train.precision BF16 (as Megatron's default),
// unless train.fp32_residual_connection keeps them in the master's dtype.
DType ResidualDType(const config::RunConfig& cfg, DType master);

// `x` in `dtype`: x itself when it already is, else a new copy (the GEMMs'
// bf16 operand copies).
Tensor InDType(const ExecContext& ctx, const Tensor& x, DType dtype);
// y = x (accumulate false) or y += x, converting x to y's dtype first.
void AddInto(const ExecContext& ctx, const Tensor& x, const Tensor& y, bool accumulate);

class ScaledLinear;
// The input of several maps that read the same x (q, k, v; gate, up) in
// their GEMMs' dtype, converted once: one bf16 copy for all of them instead
// of one per map (their Forward then takes it as is). x itself when a map
// scales x per token first (per-token γ) or their GEMM dtypes differ. After
// their PrepareStep.
Tensor SharedGemmInput(const ExecContext& ctx, const Tensor& x,
                       std::initializer_list<const ScaledLinear*> linears);

class ScaledLinear {
 public:
  // `scales`/`branch`: where γ comes from (nullptr: no γ).
  ScaledLinear(ParamRegistry& registry, Param* weight, const BranchScales* scales, int branch,
               const ScaledLinearOptions& options);

  // After the BranchScales' Forward (γ of this step) and before Forward;
  // `dtype` is the activations'.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // y [T, R] overwritten from x [T, C].
  void Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  // The gradients of grad_scale · d_y: the scale rides on the GEMMs' alpha
  // (the LM head's loss scale, which was a pass over the [T, vocab] d_y),
  // or, with a per-token u, scales d_y in place first.
  void Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x, GradMode mode,
                double grad_scale = 1.0);
  // Once per step after the last Backward, before the owning BranchScales'
  // Backward.
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

  Param* weight() const { return weight_; }
  int64_t out_features() const { return weight_->local_shape[0]; }
  int64_t in_features() const { return weight_->local_shape[1]; }
  // The GEMM's weight this step: the folded weight (undefined when folded
  // just in time), a bf16 copy of W, or W.
  const Tensor& effective_weight() const {
    return folded() ? w_eff_ : w_copy_.defined() ? w_copy_ : weight_->value;
  }
  // Whether a caller may run this map's GEMMs itself, on the weight
  // effective_weight() and the gradient gemm_weight_grad(), in gemm_dtype():
  // the token path is that one GEMM (no per-token γ or u) and the weight is
  // formed once per step (not just in time). The MoE layer's grouped GEMMs
  // do so for all experts at once, calling only PrepareStep and
  // FinishBackward here.
  bool external_gemm_ok() const {
    return !per_token_gamma() && !per_token_u() && !(folded() && just_in_time_);
  }
  DType gemm_dtype() const { return gemm_dtype_; }
  const Tensor& gemm_weight_grad() const { return GemmWeightGrad(); }
  // Whether Forward's GEMM reads x itself (in its dtype): no per-token γ.
  bool gemm_reads_x() const { return !per_token_gamma(); }
  // Whether Forward takes a bf16 x as it is and Backward may write a bf16
  // d_x (ScaledLinearOptions::bf16_parts in effect). After PrepareStep.
  bool takes_bf16_input() const { return UsesParts(); }
  // The dtype Forward may write y in (and Backward read d_y in) when the
  // activations are `activations`: the GEMM's (bf16 with bf16 operands: the
  // GEMM writes it directly, and a bf16 d_y enters the backward GEMMs
  // without a copy) unless a per-token u follows the GEMM (its op takes one
  // dtype for all). After PrepareStep.
  DType output_dtype(DType activations) const { return per_token_u() ? activations : gemm_dtype_; }
  // The dtype Backward takes d_y in as it is, without a converted copy: the
  // GEMMs' (bf16 with bf16 operands), or the master's when a per-token u
  // scales d_y first. A caller that makes d_y itself (the LM head's loss
  // gradient) may write it in this dtype. After PrepareStep.
  DType copy_free_d_y_dtype() const { return per_token_u() ? weight_->value.dtype() : gemm_dtype_; }
  // Whether PrepareStep gives the GEMM a weight of its own (W_eff, or W's
  // bf16 copy) rather than W itself. After the BranchScales' Forward.
  bool forms_gemm_weight() const {
    return folded() ? !just_in_time_ : bf16_operands_ && weight_->value.dtype() != DType::kBF16;
  }
  // Where PrepareStep puts that weight: a [R, C] view of the caller's buffer
  // in the GEMM's dtype (the experts' gate and up side by side, for one GEMM
  // over both); one of another dtype or shape is ignored. Before the first
  // PrepareStep.
  void set_gemm_weight_storage(Tensor storage) { weight_storage_ = std::move(storage); }

 private:
  // The fold and unfold of many maps at once (norm/scaled_linear_group.h)
  // run the parts below for each map and replace FormWeight and Unfold.
  friend class ScaledLinearGroup;

  // PrepareStep but the GEMM's weight itself: this step's u, its zeroed
  // gradient, the GEMM's dtype and the buffers (allocated, not formed).
  Status PrepareBuffers(const ExecContext& ctx, DType dtype);
  // A buffer for w_eff_ or w_copy_: weight_storage_ where it fits.
  Tensor OwnGemmWeight(const ExecContext& ctx) const;
  // PrepareStep's last part: W_eff, or the bf16 copy of an unfolded W.
  void FormGemmWeight(const ExecContext& ctx) const;
  // Whether PrepareStep forms W_eff (folded, not just in time).
  bool FoldsOncePerStep() const { return folded() && !just_in_time_; }
  // Whether PrepareStep copies an unfolded W into the GEMM's dtype.
  bool CopiesWeight() const { return !folded() && gemm_dtype_ != weight_->value.dtype(); }
  // bf16_parts in effect: see ScaledLinearOptions::bf16_parts.
  bool UsesParts() const {
    return bf16_parts_ && !bf16_operands_ && external_gemm_ok() &&
           weight_->value.dtype() == DType::kF32;
  }
  // The GEMM weight's parts (w_parts_, w_parts_rep_, allocated by
  // PrepareBuffers) from effective_weight().
  void FormWeightParts(const ExecContext& ctx) const;
  // Forward and Backward on the parts, for a bf16 x.
  void ForwardParts(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  void BackwardParts(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x, bool accumulate,
                     double alpha);
  // FinishBackward of a folded map: dW_eff into dW, du and dγ.
  void Unfold(const ExecContext& ctx);
  // FinishBackward's last part: du into u's parameters.
  Status FinishVectors(const ExecContext& ctx);
  const Tensor& Gamma() const;
  const Tensor& DGamma() const;
  bool folded() const { return fold_ && (Gamma().defined() || u_ != nullptr); }
  bool per_token_gamma() const { return !fold_ && Gamma().defined(); }
  bool per_token_u() const { return !fold_ && u_ != nullptr; }
  // Where Backward accumulates the gradient of the GEMM's weight.
  const Tensor& GemmWeightGrad() const;
  // diag(u)·W·diag(γ) of this step in the GEMM's dtype, into `out`.
  void FormWeight(const ExecContext& ctx, const Tensor& out) const;
  // The weight the GEMMs read now: effective_weight(), or a W_eff formed
  // for this one use (just in time).
  Tensor GemmWeight(const ExecContext& ctx) const;

  Param* weight_;
  const BranchScales* scales_;
  int branch_;
  bool fold_;
  bool just_in_time_;
  DType gemm_dtype_ = DType::kF32;  // of this step (PrepareStep)
  bool shared_weight_grad_;
  bool bf16_operands_;
  bool bf16_parts_;
  std::unique_ptr<ScaleVector> u_;  // null when there is no output side
  Tensor undefined_;
  Tensor u_value_;   // [R] effective u of this step
  Tensor d_u_;       // [R] accumulated over the step
  Tensor w_eff_;     // [R, C] folded weight (folded() only), in the GEMM's dtype
  Tensor w_copy_;    // [R, C] bf16 copy of W (unfolded bf16 operands only)
  Tensor weight_storage_;  // the caller's place for w_eff_ or w_copy_ (may be undefined)
  Tensor d_w_eff_;   // [R, C] folded gradient (W's dtype), shared_weight_grad only
  // bf16_parts: the GEMM weight's parts, [3R, C] (hi's rows, mid's, lo's),
  // and the same three times over, [9R, C], for d_x's one GEMM.
  Tensor w_parts_, w_parts_rep_;
  // Forward cache.
  Tensor x_;      // the input
  Tensor input_;  // the GEMM's input: γ ⊙ x per token, else x (bf16 copy with bf16 operands)
  Tensor raw_;    // the GEMM's output before u (per-token u only)
};

}  // namespace scalemoe
