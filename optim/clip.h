// Global gradient norm, clipping and the non-finite check, on the device.
//
// The norm counts every trained element once (kExpertBias is not trained and
// not counted). Each rank adds the squares of the gradient ranges it counts
// (GradNormRanges, fixed at set-up) into an f64 [1] tensor; the distributed
// optimizer all-reduces it over the world as a device tensor; CheckGradNorm
// turns it into the step's ops::StepControl. The clip factor is applied
// inside the update ops (gradient buffers are not rescaled), and a non-finite
// norm makes every update op a no-op, so a step is skipped on the device and
// nothing is read on the host.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "optim/param_groups.h"

namespace scalemoe {

// Ranges of flat gradient buffers whose squares make up one rank's share of
// the global norm, in a fixed order (the order of the sum: element ranges
// summed in f64, then added one by one).
class GradNormRanges {
 public:
  using Range = std::pair<int64_t, int64_t>;  // [begin, end) of a flat buffer

  // Appends `ranges` of `buffer`, a long-lived flat buffer (the registry's
  // grads, a ZeRO-1 shard) whose handle is kept. Empty ranges are dropped.
  void Add(const Tensor& buffer, const std::vector<Range>& ranges);
  // Uploads the segment tables to ctx's device; call once, after the last Add.
  void Upload(const ExecContext& ctx);
  // sum (f64 [1]) += Σ of squares over the ranges: one op per Add.
  void Accumulate(const ExecContext& ctx, const Tensor& sum) const;

 private:
  struct Run {
    Tensor buffer;
    std::vector<int64_t> rows;  // (begin, end) pairs
    Tensor segments;            // i64 [S, 2] on the device, after Upload
  };
  std::vector<Run> runs_;
};

// The flat ranges of every trained parameter (update rule other than kNone)
// with elements, in registry order: a world of one's norm over the
// registry's flat grads.
std::vector<GradNormRanges::Range> TrainedRanges(const ParamGroups& groups);

// The outcome of the norm check of one step, on ctx's device.
struct NormCheck {
  Tensor grad_norm;          // f64 [1]: the pre-clip global norm
  ops::StepControl control;  // clip factor and non-finite flag of this step
};

// From the global sum of squares (f64 [1]): the norm, the clip factor for
// max_norm (<= 0: off) and the non-finite flag (fresh tensors from ctx), and
// num_updates (i64 [1], long-lived) += 1 unless non-finite.
NormCheck CheckGradNorm(const ExecContext& ctx, const Tensor& sum_of_squares, double max_norm,
                        const Tensor& num_updates);

}  // namespace scalemoe
