// AdamW (Loshchilov & Hutter) with decoupled weight decay, as PyTorch's
// torch.optim.AdamW applies it, on a contiguous range [begin, end) of the
// registry's flat index space, so that the ZeRO-1 optimizer reuses it on its
// shard and a world of one uses [0, total).
//
// Per element of a kAdamW group g, with lr_g = lr·g.lr_mult and
// wd_g = g.EffectiveWeightDecay(weight_decay), at update count t (1-based):
//   p ← p·(1 − lr_g·wd_g)
//   m ← β1·m + (1−β1)·grad
//   v ← β2·v + (1−β2)·grad²
//   p ← p − (lr_g / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + ε)
// Elements of other rules (Muon, untrained) in the range are left alone and
// their m, v stay zero. State m, v: flat buffers of length end − begin,
// element i holding the state of flat index begin + i; dtype = the
// parameters' (f32 or f64), CPU.
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
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
  // Zero state for [begin, end) of `groups`' flat index space.
  AdamW(const AdamWOptions& options, const ParamGroups& groups, int64_t begin, int64_t end,
        DType dtype, Device device = Device::kCPU);

  // One update. `values` and `grads` are contiguous 1-D tensors covering
  // exactly [begin, end) (e.g. flat_values().Narrow(0, begin, end - begin)).
  // `lr` is the scheduled rate before role multipliers; `t` >= 1 the number
  // of updates including this one (bias correction).
  void Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
            int64_t t);

  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  // Live state (handles alias it; writing into them restores a checkpoint).
  const Tensor& exp_avg() const { return m_; }
  const Tensor& exp_avg_sq() const { return v_; }

 private:
  AdamWOptions options_;
  int64_t begin_;
  int64_t end_;
  std::vector<ParamGroup> groups_;      // copy: no lifetime tie to ParamGroups
  std::vector<FlatSegment> segments_;   // kAdamW segments in [begin, end), flat indices
  Tensor m_;  // [end - begin] first moment
  Tensor v_;  // [end - begin] second moment
};

}  // namespace scalemoe
