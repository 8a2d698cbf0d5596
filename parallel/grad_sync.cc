#include "parallel/grad_sync.h"

#include <algorithm>
#include <utility>

#include "core/context.h"
#include "core/ops.h"

namespace scalemoe {

GradSync::GradSync(const ExecContext& ctx, ParamRegistry& registry, const ProcessGroups& groups,
                   int64_t bucket_elements, std::function<bool(const Param&)> include)
    : ctx_(ctx), registry_(registry), groups_(groups) {
  SM_CHECK_MSG(registry.materialized(),
               "GradSync: the parameter registry is not materialised; call "
               "ParamRegistry::Materialize first");
  const int64_t limit = bucket_elements > 0 ? bucket_elements : registry.total_local_numel();
  int64_t previous_end = 0;  // of the previous parameter, whichever
  for (const auto& owned : registry.params()) {
    const Param& p = *owned;
    const int64_t after = std::exchange(previous_end, p.flat_offset + p.local_numel());
    if (!IsTrainable(p.spec.role) || p.local_numel() == 0) continue;
    if (include && !include(p)) continue;
    const bool expert = p.spec.layout.is_expert();
    // The zero padding right before an aligned matrix (core/params.h) joins
    // a bucket of the domain that ends where it starts: one reduction, not two.
    const bool join =
        !buckets_.empty() && buckets_.back().end == after && buckets_.back().expert == expert;
    int64_t begin = join ? after : p.flat_offset;
    const int64_t end = p.flat_offset + p.local_numel();
    while (begin < end) {
      // Extend the last bucket when adjacent, of the same domain and not full.
      if (!buckets_.empty() && buckets_.back().end == begin && buckets_.back().expert == expert &&
          buckets_.back().end - buckets_.back().begin < limit) {
        Bucket& b = buckets_.back();
        b.end = std::min(end, b.begin + limit);
        begin = b.end;
      } else {
        const int64_t stop = std::min(end, begin + limit);
        buckets_.push_back({begin, stop, expert});
        begin = stop;
      }
    }
  }
  pending_.resize(buckets_.size());
}

Status GradSync::Launch(size_t index) {
  Pending& pending = pending_[index];
  pending.launched = true;
  const Bucket& b = buckets_[index];
  Communicator& comm = b.expert ? *groups_.edp : *groups_.dp;
  if (comm.size() == 1) return absl::OkStatus();  // nothing to sum
  Tensor range = registry_.flat_grads().Narrow(0, b.begin, b.end - b.begin);
  SM_ASSIGN_OR_RETURN(pending.work, comm.AllReduceAsync(ctx_, range));
  return absl::OkStatus();
}

Status GradSync::LaunchRange(int64_t begin, int64_t end) {
  const int64_t total = registry_.total_local_numel();
  if (begin < 0 || begin > end || end > total) {
    return absl::InvalidArgumentError(absl::StrCat("GradSync::LaunchRange [", begin, ", ", end,
                                                   ") is not inside the flat grad buffer [0, ",
                                                   total, ")"));
  }
  // First bucket ending after `begin`.
  auto it = std::upper_bound(buckets_.begin(), buckets_.end(), begin,
                             [](int64_t v, const Bucket& b) { return v < b.end; });
  for (; it != buckets_.end() && it->begin < end; ++it) {
    const size_t index = static_cast<size_t>(it - buckets_.begin());
    Pending& pending = pending_[index];
    pending.ready += std::min(end, it->end) - std::max(begin, it->begin);
    if (pending.ready > it->end - it->begin || pending.launched) {
      return absl::FailedPreconditionError(absl::StrCat("GradSync::LaunchRange [", begin, ", ", end,
                                                        ") overlaps a range already marked in "
                                                        "this step (bucket [",
                                                        it->begin, ", ", it->end,
                                                        ")); mark each gradient range once "
                                                        "per step, then call WaitAll"));
    }
    if (pending.ready == it->end - it->begin) SM_RETURN_IF_ERROR(Launch(index));
  }
  return absl::OkStatus();
}

Status GradSync::WaitAll() {
  Status status;
  for (size_t i = 0; i < buckets_.size() && status.ok(); ++i) {
    if (!pending_[i].launched) status = Launch(i);
  }
  // Wait on everything that started, even after an error, so no buffer is
  // still in flight when we return.
  for (Pending& pending : pending_) {
    if (pending.work) status.Update(pending.work->Wait());
    pending = Pending{};
  }
  SM_RETURN_IF_ERROR(status);
  const double inv_dp = 1.0 / groups_.dp->size();
  if (inv_dp == 1.0) return absl::OkStatus();
  for (const Bucket& b : buckets_) {
    ops::Scale(ctx_, inv_dp, registry_.flat_grads().Narrow(0, b.begin, b.end - b.begin));
  }
  return absl::OkStatus();
}

Status GradSync::AllReduceMean() {
  // Launch in flat order; everyone does the same, so collectives match.
  Status status = LaunchRange(0, registry_.total_local_numel());
  status.Update(WaitAll());
  return status;
}

}  // namespace scalemoe
