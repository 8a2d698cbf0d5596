#include "parallel/tp_linear.h"

#include "core/ops.h"

namespace scalemoe {
namespace {

constexpr ops::GemmOptions kXWt{.trans_b = ops::Trans::kYes};
// dW[out, in] += d_yᵀ x.
constexpr ops::GemmOptions kDyTx{.trans_a = ops::Trans::kYes, .beta = 1.0};

StatusOr<Param*> RegisterSplit(ParamRegistry& registry, ParamSpec spec, Communicator& tp, int dim,
                               const char* kind) {
  const std::string layer = absl::StrCat(kind, "(", spec.name, ")");
  if (spec.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(layer, ": weight must be 2-D [out, in], got ", ShapeString(spec.shape)));
  }
  SM_RETURN_IF_ERROR(CheckShardCoords(registry, spec.layout.tp_group, tp, layer));
  SM_RETURN_IF_ERROR(CheckSplittable(spec, dim, tp.size()));
  spec.layout.tp_split_dim = dim;
  return registry.Create(std::move(spec));
}

std::string Name(const char* kind, const Param* w) {
  return absl::StrCat(kind, "(", w->spec.name, ")");
}

// A [rows, cols] scratch of x's dtype on x's device.
Tensor Scratch(const Tensor& like, int64_t rows, int64_t cols) {
  return Tensor::Empty({rows, cols}, like.dtype(), like.device());
}

// Sums a replicated scale vector's per-shard gradient over TP, then adds it
// into the owner's accumulator. `fill` writes this shard's part into its
// argument (accumulating into zeros).
template <typename Fill>
Status ReduceReplicatedGrad(const ExecContext& ctx, Communicator& tp, const Tensor& d_owner,
                            const Fill& fill) {
  if (!d_owner.defined()) {
    fill(Tensor());
    return absl::OkStatus();
  }
  Tensor part = Tensor::Zeros(d_owner.shape(), d_owner.dtype(), d_owner.device());
  fill(part);
  SM_RETURN_IF_ERROR(tp.AllReduce(part));
  ops::Axpy(ctx, 1.0, part, d_owner);
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------- column

StatusOr<std::unique_ptr<ColumnParallelLinear>> ColumnParallelLinear::Create(
    ParamRegistry& registry, ParamSpec spec, Communicator& tp, SequenceParallel sp) {
  SM_ASSIGN_OR_RETURN(Param * w,
                      RegisterSplit(registry, std::move(spec), tp, 0, "ColumnParallelLinear"));
  return std::unique_ptr<ColumnParallelLinear>(new ColumnParallelLinear(w, tp, sp));
}

Status ColumnParallelLinear::PrepareStep(const ExecContext& ctx, const TpLinearScales& scales) {
  return fold_.Prepare(ctx, scales, Name("ColumnParallelLinear", weight()));
}

Status ColumnParallelLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  const std::string layer = Name("ColumnParallelLinear", weight());
  const DType dtype = weight()->value.dtype();
  if (!x.defined() || x.ndim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(layer, ": input must be 2-D [tokens, ", in_features(), "]"));
  }
  const int64_t n = sp_ == SequenceParallel::kOn ? x.dim(0) * tp_->size() : x.dim(0);
  SM_RETURN_IF_ERROR(CheckMatrix(x, x.dim(0), in_features(), dtype, layer + " input"));
  SM_RETURN_IF_ERROR(CheckMatrix(y, n, local_out_features(), dtype, layer + " output"));
  if (sp_ == SequenceParallel::kOn) {
    x_ = Scratch(x, n, in_features());
    SM_RETURN_IF_ERROR(GatherTokens(*tp_, x, x_));
  } else {
    x_ = x;
  }
  ops::Gemm(ctx, x_, fold_.effective(), y, kXWt);
  return absl::OkStatus();
}

Status ColumnParallelLinear::Backward(const ExecContext& ctx, const Tensor& d_y,
                                      const Tensor& d_x) {
  const std::string layer = Name("ColumnParallelLinear", weight());
  if (!x_.defined()) return absl::FailedPreconditionError(layer + ": Backward before Forward");
  const int64_t n = x_.dim(0);
  const DType dtype = x_.dtype();
  SM_RETURN_IF_ERROR(CheckMatrix(d_y, n, local_out_features(), dtype, layer + " d_y"));
  const bool sp = sp_ == SequenceParallel::kOn;
  SM_RETURN_IF_ERROR(
      CheckMatrix(d_x, sp ? n / tp_->size() : n, in_features(), dtype, layer + " d_x"));
  // This shard's part of d_x; its reduction overlaps the weight-gradient GEMM.
  const Tensor d_x_part = sp ? Scratch(x_, n, in_features()) : d_x;
  ops::Gemm(ctx, d_y, fold_.effective(), d_x_part);
  std::unique_ptr<Work> work;
  if (tp_->size() > 1) {
    if (sp) {
      SM_ASSIGN_OR_RETURN(work, tp_->ReduceScatterAsync(d_x_part, d_x));
    } else {
      SM_ASSIGN_OR_RETURN(work, tp_->AllReduceAsync(d_x));
    }
  } else if (sp) {
    Tensor(d_x).CopyFrom(d_x_part);
  }
  ops::Gemm(ctx, d_y, x_, fold_.grad_target(), kDyTx);
  return work ? work->Wait() : absl::OkStatus();
}

Status ColumnParallelLinear::FinishBackward(const ExecContext& ctx) {
  const TpLinearScales& s = fold_.scales();
  return ReduceReplicatedGrad(ctx, *tp_, s.gamma.defined() ? s.d_gamma : Tensor(),
                              [&](const Tensor& d_gamma) { fold_.Finish(ctx, d_gamma, s.d_u); });
}

// ---------------------------------------------------------------- row

StatusOr<std::unique_ptr<RowParallelLinear>> RowParallelLinear::Create(ParamRegistry& registry,
                                                                       ParamSpec spec,
                                                                       Communicator& tp,
                                                                       SequenceParallel sp) {
  SM_ASSIGN_OR_RETURN(Param * w,
                      RegisterSplit(registry, std::move(spec), tp, 1, "RowParallelLinear"));
  return std::unique_ptr<RowParallelLinear>(new RowParallelLinear(w, tp, sp));
}

Status RowParallelLinear::PrepareStep(const ExecContext& ctx, const TpLinearScales& scales) {
  return fold_.Prepare(ctx, scales, Name("RowParallelLinear", weight()));
}

Status RowParallelLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  const std::string layer = Name("RowParallelLinear", weight());
  const DType dtype = weight()->value.dtype();
  if (!x.defined() || x.ndim() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(layer, ": input must be 2-D [tokens, ", local_in_features(), "]"));
  }
  const int64_t n = x.dim(0);
  SM_RETURN_IF_ERROR(CheckMatrix(x, n, local_in_features(), dtype, layer + " input"));
  const bool sp = sp_ == SequenceParallel::kOn;
  if (sp && n % tp_->size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        layer, ": ", n, " tokens do not split over ", tp_->size(),
        " ranks under sequence parallelism: use a micro-batch token count divisible by tp"));
  }
  SM_RETURN_IF_ERROR(
      CheckMatrix(y, sp ? n / tp_->size() : n, out_features(), dtype, layer + " output"));
  x_ = x;
  const Tensor y_part = sp ? Scratch(x, n, out_features()) : y;
  ops::Gemm(ctx, x, fold_.effective(), y_part, kXWt);
  if (sp) return ReduceScatterTokens(*tp_, y_part, y);
  return tp_->size() > 1 ? tp_->AllReduce(y) : absl::OkStatus();
}

Status RowParallelLinear::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x) {
  const std::string layer = Name("RowParallelLinear", weight());
  if (!x_.defined()) return absl::FailedPreconditionError(layer + ": Backward before Forward");
  const int64_t n = x_.dim(0);
  const DType dtype = x_.dtype();
  const bool sp = sp_ == SequenceParallel::kOn;
  SM_RETURN_IF_ERROR(
      CheckMatrix(d_y, sp ? n / tp_->size() : n, out_features(), dtype, layer + " d_y"));
  SM_RETURN_IF_ERROR(CheckMatrix(d_x, n, local_in_features(), dtype, layer + " d_x"));
  Tensor d_y_full = d_y;
  if (sp) {
    d_y_full = Scratch(x_, n, out_features());
    SM_RETURN_IF_ERROR(GatherTokens(*tp_, d_y, d_y_full));
  }
  ops::Gemm(ctx, d_y_full, fold_.effective(), d_x);
  ops::Gemm(ctx, d_y_full, x_, fold_.grad_target(), kDyTx);
  return absl::OkStatus();
}

Status RowParallelLinear::FinishBackward(const ExecContext& ctx) {
  const TpLinearScales& s = fold_.scales();
  return ReduceReplicatedGrad(ctx, *tp_, s.u.defined() ? s.d_u : Tensor(),
                              [&](const Tensor& d_u) { fold_.Finish(ctx, s.d_gamma, d_u); });
}

}  // namespace scalemoe
