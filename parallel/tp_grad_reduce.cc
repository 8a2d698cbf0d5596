#include "parallel/tp_grad_reduce.h"

#include <vector>

namespace scalemoe {
namespace {

Status SumOverGroup(const std::vector<const Param*>& params, Communicator& comm) {
  if (params.empty() || comm.size() == 1) return absl::OkStatus();
  int64_t total = 0;
  for (const Param* p : params) total += p->local_numel();
  const Tensor& like = params.front()->grad;
  Tensor packed = Tensor::Empty({total}, like.dtype(), like.device());
  int64_t offset = 0;
  for (const Param* p : params) {
    packed.Narrow(0, offset, p->local_numel()).CopyFrom(p->grad.View({p->local_numel()}));
    offset += p->local_numel();
  }
  SM_RETURN_IF_ERROR(comm.AllReduce(packed));
  offset = 0;
  for (const Param* p : params) {
    p->grad.View({p->local_numel()}).CopyFrom(packed.Narrow(0, offset, p->local_numel()));
    offset += p->local_numel();
  }
  return absl::OkStatus();
}

}  // namespace

Status SumPartialGradsOverTp(const ParamRegistry& registry, size_t first, size_t end,
                             Communicator& tp, Communicator& etp) {
  if (tp.size() == 1 && etp.size() == 1) return absl::OkStatus();
  std::vector<const Param*> dense, expert;
  const auto& params = registry.params();
  for (size_t i = first; i < end && i < params.size(); ++i) {
    const Param& p = *params[i];
    if (!p.spec.layout.tp_partial_grad || p.local_numel() == 0) continue;
    (p.spec.layout.tp_group == TpGroup::kExpert ? expert : dense).push_back(&p);
  }
  SM_RETURN_IF_ERROR(SumOverGroup(dense, tp));
  return SumOverGroup(expert, etp);
}

}  // namespace scalemoe
