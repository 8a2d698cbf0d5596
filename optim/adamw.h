// AdamW (Loshchilov & Hutter) with decoupled weight decay, as PyTorch's
// torch.optim.AdamW applies it, over pieces of the registry's flat index
// space held in one flat buffer: a world of one steps [0, total) of the
// registry's buffers, a ZeRO-1 rank the pieces packed into its shard of the
// master weights.
//
// Per element of a kAdamW group g, with lr_g = lr·g.lr_mult and
// wd_g = g.EffectiveWeightDecay(weight_decay), at update count t (1-based)
// and g = grad·clip_factor:
//   p ← p·(1 − lr_g·wd_g)
//   m ← β1·m + (1−β1)·g
//   v ← β2·v + (1−β2)·g²
//   p ← p − (lr_g / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + ε)
// One ops::AdamWUpdate call per Step covers every kAdamW element (one row
// of its segment table per run of one group, so a piece that cuts through a
// scale vector still gives each element its role's decay). Elements of other
// rules (Muon, untrained) are left alone and their m, v stay zero. The clip
// factor, the update count t and the non-finite skip come from the step's
// ops::StepControl on the device.
//
// State m, v: flat buffers of the stepped buffer's length and of the
// parameters' dtype (f32 or f64), on the context given at construction.
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "optim/param_groups.h"

namespace scalemoe {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;  // base decay; groups scale or exempt it
};

class AdamW {
 public:
  // 256 bytes of f32: the update's chunks of a row start on a multiple.
  static constexpr int64_t kLineElements = 64;

  // Registry flat range [flat_begin, flat_end) held at element `offset` of
  // the stepped buffers.
  struct Piece {
    int64_t flat_begin = 0;
    int64_t flat_end = 0;
    int64_t offset = 0;
  };

  // Zero state for flat [begin, end) of `groups`, held at offset 0.
  AdamW(const AdamWOptions& options, const ParamGroups& groups, int64_t begin, int64_t end,
        DType dtype, const ExecContext& ctx = ExecContext());
  // Zero state for `pieces` (disjoint, inside [0, length)) in buffers of
  // `length` elements.
  AdamW(const AdamWOptions& options, const ParamGroups& groups, std::vector<Piece> pieces,
        int64_t length, DType dtype, const ExecContext& ctx = ExecContext());

  // One update. `values` and `grads` are contiguous 1-D tensors of length()
  // elements laid out like the state (e.g. flat_values().Narrow(0, begin,
  // end - begin)); grads may be bf16. `lr` is the scheduled rate before role
  // multipliers. Queued on ctx; reads nothing on the host.
  void Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
            const ops::StepControl& control);

  // Rows of the update's segment table: one per run of one group, the
  // head of a run that starts off a kLineElements boundary split off.
  int64_t num_segments() const { return num_segments_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  int64_t length() const { return length_; }
  // The span of the pieces in flat indices (the range, for the first form).
  int64_t begin() const;
  int64_t end() const;
  // Live state (handles alias it; writing into them restores a checkpoint).
  const Tensor& exp_avg() const { return m_; }
  const Tensor& exp_avg_sq() const { return v_; }

 private:
  AdamWOptions options_;
  std::vector<Piece> pieces_;
  int64_t length_;
  int64_t num_segments_ = 0;
  Tensor segments_;      // i64 [S, 2]: kAdamW runs in buffer indices
  Tensor coefficients_;  // f64 [S, 2]: (lr multiplier, weight decay per unit lr)
  Tensor m_;             // [length] first moment
  Tensor v_;             // [length] second moment
};

}  // namespace scalemoe
