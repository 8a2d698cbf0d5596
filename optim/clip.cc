#include "optim/clip.h"

#include "core/host_values.h"

namespace scalemoe {

void GradNormRanges::Add(const Tensor& buffer, const std::vector<Range>& ranges) {
  Run run;
  run.buffer = buffer;
  for (const auto& [begin, end] : ranges) {
    SM_CHECK_MSG(0 <= begin && begin <= end && end <= buffer.numel(), "GradNormRanges: [",
                 begin, ", ", end, ") outside ", buffer.DebugString());
    if (begin == end) continue;
    run.rows.push_back(begin);
    run.rows.push_back(end);
  }
  if (!run.rows.empty()) runs_.push_back(std::move(run));
}

void GradNormRanges::Upload(const ExecContext& ctx) {
  for (Run& run : runs_) {
    run.segments =
        TableToDevice(ctx, {static_cast<int64_t>(run.rows.size() / 2), 2}, run.rows);
  }
}

void GradNormRanges::Accumulate(const ExecContext& ctx, const Tensor& sum) const {
  for (const Run& run : runs_) {
    SM_CHECK_MSG(run.segments.defined(), "GradNormRanges::Accumulate before Upload");
    ops::SegmentSumOfSquares(ctx, run.buffer, run.segments, sum);
  }
}

std::vector<GradNormRanges::Range> TrainedRanges(const ParamGroups& groups) {
  std::vector<GradNormRanges::Range> out;
  for (const ParamGroupEntry& e : groups.entries()) {
    const Param& p = *e.param;
    if (groups.group(e.group).rule == UpdateRule::kNone || p.local_numel() == 0) continue;
    out.emplace_back(p.flat_offset, p.flat_offset + p.local_numel());
  }
  return out;
}

NormCheck CheckGradNorm(const ExecContext& ctx, const Tensor& sum_of_squares, double max_norm,
                        const Tensor& num_updates) {
  NormCheck out;
  out.grad_norm = ctx.Empty({1}, DType::kF64);
  out.control.clip_factor = ctx.Empty({1}, DType::kF64);
  out.control.nonfinite = ctx.Empty({1}, DType::kI32);
  out.control.num_updates = num_updates;
  ops::GradNormControl(ctx, sum_of_squares, max_norm, out.grad_norm, out.control);
  return out;
}

}  // namespace scalemoe
