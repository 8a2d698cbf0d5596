// Without the CUDA backend there is no NCCL: AUTO keeps the host backend and
// parallel.communicator=NCCL is refused with this reason.
#include "parallel/nccl_process_groups.h"

namespace scalemoe {
namespace {

Status NoCuda() {
  return absl::FailedPreconditionError(
      "this scalemoe was built without the CUDA backend, so without NCCL: rebuild where nvcc "
      "is found (-DSCALEMOE_CUDA=ON)");
}

}  // namespace

Status NcclAvailableEverywhere(Communicator&) { return NoCuda(); }

StatusOr<std::string> DescribeSharedGpus(Communicator&, const ExecContext&) {
  return std::string();
}

Status UseNcclCommunicators(ProcessGroups&, const ExecContext&, const NcclOptions&) {
  return NoCuda();
}

}  // namespace scalemoe
