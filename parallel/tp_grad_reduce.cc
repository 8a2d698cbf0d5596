#include "parallel/tp_grad_reduce.h"

#include <vector>

#include "core/ops.h"

namespace scalemoe {
namespace {

Status SumOverGroup(const ExecContext& ctx, const std::vector<const Param*>& params,
                    Communicator& comm) {
  if (params.empty() || comm.size() == 1) return absl::OkStatus();
  int64_t total = 0;
  for (const Param* p : params) total += p->local_numel();
  const Tensor& like = params.front()->grad;
  Tensor packed = ctx.Empty({total}, like.dtype());
  int64_t offset = 0;
  for (const Param* p : params) {
    ops::Copy(ctx, p->grad.View({p->local_numel()}), packed.Narrow(0, offset, p->local_numel()));
    offset += p->local_numel();
  }
  SM_RETURN_IF_ERROR(comm.AllReduce(ctx, packed));
  offset = 0;
  for (const Param* p : params) {
    ops::Copy(ctx, packed.Narrow(0, offset, p->local_numel()), p->grad.View({p->local_numel()}));
    offset += p->local_numel();
  }
  return absl::OkStatus();
}

}  // namespace

Status SumPartialGradsOverTp(const ExecContext& ctx, const ParamRegistry& registry, size_t first,
                             size_t end, Communicator& tp, Communicator& etp) {
  if (tp.size() == 1 && etp.size() == 1) return absl::OkStatus();
  std::vector<const Param*> dense, expert;
  const auto& params = registry.params();
  for (size_t i = first; i < end && i < params.size(); ++i) {
    const Param& p = *params[i];
    if (!p.spec.layout.tp_partial_grad || p.local_numel() == 0) continue;
    (p.spec.layout.tp_group == TpGroup::kExpert ? expert : dense).push_back(&p);
  }
  SM_RETURN_IF_ERROR(SumOverGroup(ctx, dense, tp));
  return SumOverGroup(ctx, expert, etp);
}

}  // namespace scalemoe
