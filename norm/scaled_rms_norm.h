// ScaledRmsNorm: y = γ ⊙ x / rms(x) over the last `dim` elements, with an
// Output-Norm scale vector γ (role kOutputNormScale: no linear map follows).
// Serves QK-norm and DNP's output-side norms (per head: x [N, H*D] is viewed
// as [N*H, D], one γ [D] shared by the heads) and the sandwich norms on the
// sublayer outputs. Under scale-vector mode NONE there is no γ: y = x/rms(x).
// γ follows the configured reparameterisation (norm/scale_vector.h).
//
// Per step: PrepareStep() computes γ and zeroes its gradient; each
// Forward/Backward pair handles one micro-batch (Forward caches n and rstd;
// Backward overwrites d_x and accumulates dγ); FinishBackward() pushes dγ
// into the parameters' gradients (+=). The norm computes in PrepareStep's
// dtype (the master's); x, y and the gradients may be bf16 activations,
// converted in and out. With a γ and rows of at most 256 (the per-head
// norms) it runs as one ops::ScaledRmsNormalize per direction on x in the
// master's dtype (or bf16 for an f32 master: train.fp32_head_norm_input
// off), writing y (and d_x) in it or in bf16 directly, and keeps x
// instead of n (the backward recomputes n); with RoPE after it (q and k),
// as ops::ScaledRmsNormalizeRope, which rotates in the same pass.
#pragma once

#include <memory>
#include <string>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/forward_cache.h"
#include "core/params.h"
#include "core/tensor.h"
#include "norm/scale_options.h"
#include "norm/scale_vector.h"

namespace scalemoe {

class ScaledRmsNorm {
 public:
  // Registers "<name>.scale" (or its α/β) unless options.none().
  ScaledRmsNorm(ParamRegistry& registry, const ScaleOptions& options, std::string name,
                int64_t dim, double eps, ParamLayout layout = {});

  // RoPE on the output (the per-head q and k norms): x holds `batch`
  // sequences of `seq` tokens, each its heads' vectors of dim. table is
  // ops::RopeTable(theta) (undefined, or shorter than seq: none), with
  // which the rotation runs in the norm's own pass
  // (ops::ScaledRmsNormalizeRope); else it runs as ops::Rope after it.
  struct Rope {
    double theta = 0;
    Tensor table;
    int64_t batch = 0, seq = 0;
  };

  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // x, y: contiguous, numel a multiple of dim; y must not alias x. With
  // rope, y = Rope(norm(x)) (norm(x) rounded to y's dtype first). x may
  // also be [B, T, H, dim] token-strided (core/head_rows.h: a slice of the
  // q|k|v projection's output) where TakesHeadRows says so.
  void Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y,
               const Rope* rope = nullptr);
  // After a Forward with rope, d_y is the rotated output's gradient (and may
  // be overwritten with its inverse rotation). d_x may be token-strided
  // [B, T, H, dim] when the Forward's x was and d_x's dtype is io.
  void Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);
  // Whether Forward takes a token-strided x of dtype x_dtype with outputs
  // (y, d_y and d_x) of dtype io: the one-op path (a γ, rows of at most 256,
  // IoFits). After PrepareStep.
  bool TakesHeadRows(DType x_dtype, DType io) const;
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

  bool has_scale() const { return scale_ != nullptr; }
  const std::string& name() const { return name_; }

 private:
  // Whether ops::ScaledRmsNormalize serves x with outputs (y, or d_y and
  // d_x) of dtype io: a γ, rows of at most 256, IoFits.
  bool Fused(const Tensor& x, DType io) const;
  // x in the master's dtype with io that dtype or bf16 for an f32 master;
  // or, for an f32 master, bf16 x with bf16 io (the op computes in f32).
  bool IoFits(DType x_dtype, DType io) const;
  // rope_'s [B, T, H, dim] view of t (rows of dim).
  Tensor HeadsView(const Tensor& t) const;
  // Whether rope_'s table serves the fused op on x4.
  bool TableFits() const;
  // The rope table for ops::Rope on t where it fits t's compute dtype (the
  // same bits, no angles computed per call), else none.
  Tensor RopeTableFor(const Tensor& t) const;

  std::string name_;
  int64_t dim_;
  DType dtype_ = DType::kF32;  // PrepareStep's: n_, rstd_ and γ's
  double eps_;
  std::unique_ptr<ScaleVector> scale_;  // null under mode NONE
  Tensor gamma_;    // [dim] effective γ of this step
  Tensor d_gamma_;  // [dim] accumulated over the step's micro-batches
  Tensor x_;        // [R, dim] (or token-strided) input of the last Forward when it ran fused
  Tensor n_;        // [R, dim] normalized input of the last Forward otherwise
  Tensor rstd_;     // [R]
  Rope rope_;       // of the last Forward (batch 0: none)
};

}  // namespace scalemoe
