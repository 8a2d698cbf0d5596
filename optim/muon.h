// Muon (Keller Jordan et al., 2024) for 2-D hidden matrices: the groups with
// UpdateRule::kMuon (kLinear/kExpertLinear, ndim == 2). Everything else is
// AdamW's (optim/adamw.h).
//
// Per matrix W [R, C] of group g, with lr_g = lr·g.lr_mult,
// wd_g = g.EffectiveWeightDecay(weight_decay) and G = grad·clip_factor:
//   B ← μ·B + G                         (momentum buffer)
//   U ← G + μ·B if nesterov, else B
//   O ← NewtonSchulz(U)                 (≈ the orthogonal factor of U)
//   W ← W·(1 − lr_g·wd_g) − lr_g·sqrt(max(1, R/C))·O
// Newton–Schulz: X = U/(‖U‖_F + 1e-7), then ns_steps times the quintic
// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ and (a, b, c) = (3.4445, −4.7750,
// 2.0315); for R > C the same iteration on Xᵀ, written as
// X ← a·X + X·(b·A + c·A²) with A = Xᵀ·X so that nothing is transposed.
//
// A Step is a fixed sequence of multi-tensor ops, whatever the number of
// matrices: ops::MuonMomentum writes every U into one packed buffer, where
// the matrices of one shape lie back to back; Newton–Schulz runs once per
// shape as batched ops::Gemm calls in the parameters' dtype; ops::MuonApply
// updates every matrix. The clip factor and the non-finite skip come from the
// step's ops::StepControl on the device.
//
// State: one momentum buffer parallel to the registry's flat buffers
// ([total], zero outside Muon matrices). Single rank: a TP- or ZeRO-split
// matrix must be gathered whole before its update (the distributed
// optimizer's job).
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "optim/param_groups.h"

namespace scalemoe {

struct MuonOptions {
  double momentum = 0.95;
  bool nesterov = true;
  int ns_steps = 5;
  double weight_decay = 0.0;  // base decay; groups scale or exempt it
};

class Muon {
 public:
  // Zero momentum for every kMuon matrix of `groups`, on ctx.
  Muon(const MuonOptions& options, const ParamGroups& groups, DType dtype,
       const ExecContext& ctx = ExecContext());

  // Updates every kMuon matrix of `values` (the registry's flat values) from
  // `grads` (its flat grads, same dtype or bf16). `lr` is the scheduled Muon
  // rate before role multipliers. Queued on ctx; reads nothing on the host.
  void Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
            const ops::StepControl& control);

  // out = NewtonSchulz(g) for g, out [R, C] or [B, R, C] (B matrices at
  // once; same dtype, distinct storage).
  static void NewtonSchulz(const ExecContext& ctx, const Tensor& g, const Tensor& out,
                           int steps);
  // x = NewtonSchulz(x), in place.
  static void NewtonSchulzInPlace(const ExecContext& ctx, const Tensor& x, int steps);

  // Live state (the handle aliases it; writing into it restores a checkpoint).
  const Tensor& momentum() const { return momentum_; }

 private:
  // The matrices of one shape, packed back to back.
  struct ShapeClass {
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t count = 0;
    int64_t packed_begin = 0;
  };

  MuonOptions options_;
  std::vector<ShapeClass> classes_;
  int64_t packed_numel_ = 0;
  int64_t total_ = 0;
  Tensor segments_;      // i64 [M, 3]: (flat begin, flat end, packed begin) per matrix
  Tensor coefficients_;  // f64 [M, 3]: (lr multiplier, weight decay per unit lr, shape scale)
  Tensor momentum_;      // [total], flat like the registry
};

}  // namespace scalemoe
