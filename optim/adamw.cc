#include "optim/adamw.h"

#include <utility>
#include <vector>

#include "core/host_values.h"

namespace scalemoe {

AdamW::AdamW(const AdamWOptions& options, const ParamGroups& groups, int64_t begin, int64_t end,
             DType dtype, const ExecContext& ctx)
    : AdamW(options, groups, {{begin, end, 0}}, end - begin, dtype, ctx) {}

AdamW::AdamW(const AdamWOptions& options, const ParamGroups& groups, std::vector<Piece> pieces,
             int64_t length, DType dtype, const ExecContext& ctx)
    : options_(options), pieces_(std::move(pieces)), length_(length) {
  SM_CHECK_MSG(dtype == DType::kF32 || dtype == DType::kF64, "AdamW state dtype ",
               DTypeName(dtype), ": f32 or f64");
  std::vector<int64_t> rows;
  std::vector<double> coefficients;
  for (const Piece& piece : pieces_) {
    SM_CHECK_MSG(piece.flat_begin <= piece.flat_end && piece.offset >= 0 &&
                     piece.offset + (piece.flat_end - piece.flat_begin) <= length_,
                 "AdamW piece [", piece.flat_begin, ", ", piece.flat_end, ") at ", piece.offset,
                 " outside a buffer of ", length_);
    for (const FlatSegment& s : groups.SegmentsIn(piece.flat_begin, piece.flat_end)) {
      const ParamGroup& g = groups.group(s.group);
      if (g.rule != UpdateRule::kAdamW) continue;
      const int64_t begin = piece.offset + (s.begin - piece.flat_begin);
      const int64_t end = piece.offset + (s.end - piece.flat_begin);
      // The update's chunks start at their row's first element: a row that
      // starts off a kLineElements boundary (behind a scalar β, say) would
      // put every chunk of the matrices in it off the memory lines, so its
      // head up to the boundary goes as a row of its own (the same update
      // per element either way).
      const int64_t line = (begin + kLineElements - 1) / kLineElements * kLineElements;
      const auto add = [&](int64_t row_begin, int64_t row_end) {
        rows.push_back(row_begin);
        rows.push_back(row_end);
        coefficients.push_back(g.lr_mult);
        coefficients.push_back(g.EffectiveWeightDecay(options_.weight_decay));
      };
      if (line > begin && line < end) {
        add(begin, line);
        add(line, end);
      } else {
        add(begin, end);
      }
    }
  }
  num_segments_ = static_cast<int64_t>(rows.size() / 2);
  segments_ = TableToDevice(ctx, {num_segments_, 2}, rows);
  coefficients_ = TableToDevice(ctx, {num_segments_, 2}, coefficients);
  m_ = ctx.Zeros({length_}, dtype);
  v_ = ctx.Zeros({length_}, dtype);
}

int64_t AdamW::begin() const { return pieces_.empty() ? 0 : pieces_.front().flat_begin; }
int64_t AdamW::end() const { return pieces_.empty() ? 0 : pieces_.back().flat_end; }

void AdamW::Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
                 const ops::StepControl& control) {
  SM_CHECK_MSG(values.numel() == length_ && grads.numel() == length_, "AdamW::Step values ",
               values.DebugString(), ", grads ", grads.DebugString(), ": need ", length_,
               " elements");
  if (num_segments_ == 0) return;
  ops::AdamWUpdate(ctx, values, grads, m_, v_, segments_, coefficients_,
                   {.lr = lr, .beta1 = options_.beta1, .beta2 = options_.beta2,
                    .eps = options_.eps},
                   control);
}

}  // namespace scalemoe
