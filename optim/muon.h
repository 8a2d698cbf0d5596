// Muon (Keller Jordan et al., 2024) for 2-D hidden matrices: the groups with
// UpdateRule::kMuon (kLinear/kExpertLinear, ndim == 2). Everything else is
// AdamW's (optim/adamw.h).
//
// Per matrix W [R, C] of group g, with lr_g = lr·g.lr_mult and
// wd_g = g.EffectiveWeightDecay(weight_decay):
//   B ← μ·B + grad                      (momentum buffer)
//   U ← grad + μ·B if nesterov, else B
//   O ← NewtonSchulz(U)                 (≈ the orthogonal factor of U)
//   W ← W·(1 − lr_g·wd_g) − lr_g·sqrt(max(1, R/C))·O
// Newton–Schulz: X = U/(‖U‖_F + 1e-7), then ns_steps times the quintic
// X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ and (a, b, c) = (3.4445, −4.7750,
// 2.0315); for R > C the same iteration on Xᵀ, written as
// X ← a·X + X·(b·A + c·A²) with A = Xᵀ·X so that nothing is transposed.
// Products go through ops::Gemm in the parameters' dtype.
//
// State: one momentum buffer parallel to the registry's flat buffers
// ([total], zero outside Muon matrices). Single rank: a TP- or ZeRO-split
// matrix must be gathered whole before its update (the distributed
// optimizer's job).
#pragma once

#include <vector>

#include "core/context.h"
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
  // Zero momentum for every kMuon matrix of `groups` (whose Param* must
  // outlive this object).
  Muon(const MuonOptions& options, const ParamGroups& groups, DType dtype,
       Device device = Device::kCPU);

  // Updates every kMuon parameter's value from its grad. `lr` is the
  // scheduled Muon rate before role multipliers.
  void Step(const ExecContext& ctx, double lr);

  // out = NewtonSchulz(g) for g, out [R, C] (same dtype, distinct storage).
  static void NewtonSchulz(const ExecContext& ctx, const Tensor& g, const Tensor& out,
                           int steps);

  // Live state (the handle aliases it; writing into it restores a checkpoint).
  const Tensor& momentum() const { return momentum_; }

 private:
  MuonOptions options_;
  std::vector<ParamGroup> groups_;
  std::vector<ParamGroupEntry> matrices_;  // the kMuon entries
  Tensor momentum_;                        // [total], flat like the registry
};

}  // namespace scalemoe
