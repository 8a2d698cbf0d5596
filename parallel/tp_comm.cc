#include "parallel/tp_comm.h"

#include "core/ops.h"

namespace scalemoe {
namespace {

Status CheckTokenSplit(const Communicator& tp, const Tensor& local, const Tensor& full,
                       const char* op) {
  if (!local.defined() || !full.defined() || local.ndim() != 2 || full.ndim() != 2 ||
      !local.is_contiguous() || !full.is_contiguous() || local.dtype() != full.dtype() ||
      local.dim(1) != full.dim(1) || local.dim(0) * tp.size() != full.dim(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " over ", tp.name(), ": expected contiguous local [N/", tp.size(),
                     ", C] and full [N, C] of one dtype, got local ",
                     local.defined() ? local.DebugString() : std::string("undefined"), " and full ",
                     full.defined() ? full.DebugString() : std::string("undefined"),
                     " (under sequence parallelism the token count must divide by the TP size)"));
  }
  return absl::OkStatus();
}

}  // namespace

Status GatherTokens(const ExecContext& ctx, Communicator& tp, const Tensor& local,
                    const Tensor& full) {
  SM_RETURN_IF_ERROR(CheckTokenSplit(tp, local, full, "GatherTokens"));
  if (tp.size() == 1) {
    ops::Copy(ctx, local, full);
    return absl::OkStatus();
  }
  return tp.AllGather(ctx, local, full);
}

Status ReduceScatterTokens(const ExecContext& ctx, Communicator& tp, const Tensor& full,
                           const Tensor& local) {
  SM_RETURN_IF_ERROR(CheckTokenSplit(tp, local, full, "ReduceScatterTokens"));
  if (tp.size() == 1) {
    ops::Copy(ctx, full, local);
    return absl::OkStatus();
  }
  return tp.ReduceScatter(ctx, full, local);
}

StatusOr<VocabShard> ShardVocab(int64_t vocab, int rank, int tp_size) {
  if (tp_size < 1 || rank < 0 || rank >= tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardVocab: TP rank ", rank, " is outside a TP group of ", tp_size));
  }
  if (vocab <= 0 || vocab % tp_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocabulary of ", vocab, " tokens does not split over ", tp_size,
                     " tensor-parallel ranks: pad model.vocab_size to a multiple of ", tp_size,
                     " (e.g. ", (vocab / tp_size + 1) * tp_size, ") or change the TP size"));
  }
  const int64_t size = vocab / tp_size;
  return VocabShard{rank * size, size};
}

Status CheckShardCoords(const ParamRegistry& registry, TpGroup group, const Communicator& tp,
                        const std::string& layer) {
  const ShardCoords& c = registry.coords();
  const bool expert = group == TpGroup::kExpert;
  const int rank = expert ? c.etp_rank : c.tp_rank;
  const int size = expert ? c.etp_size : c.tp_size;
  if (rank != tp.rank() || size != tp.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        layer, ": the registry slices parameters for ", expert ? "etp" : "tp", " rank ", rank,
        " of ", size, " but the communicator ", tp.name(), " is rank ", tp.rank(), " of ",
        tp.size(), ": build the ParamRegistry with ShardCoords from this rank's GridCoords"));
  }
  return absl::OkStatus();
}

Status CheckSplittable(const ParamSpec& spec, int dim, int tp_size) {
  if (dim >= static_cast<int>(spec.shape.size()) || spec.shape[dim] % tp_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        spec.name, ": dim ", dim, " of ", ShapeString(spec.shape), " does not split over ", tp_size,
        " tensor-parallel ranks: choose sizes divisible by the TP size or a smaller TP"));
  }
  return absl::OkStatus();
}

Status CheckMatrix(const Tensor& t, int64_t rows, int64_t cols, DType dtype,
                   const std::string& what) {
  if (!t.defined() || t.ndim() != 2 || t.dim(0) != rows || t.dim(1) != cols || t.dtype() != dtype ||
      !t.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected contiguous ", DTypeName(dtype), "[", rows, ", ", cols,
                     "], got ", t.defined() ? t.DebugString() : std::string("undefined")));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
