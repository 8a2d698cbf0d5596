#include "parallel/nccl_choice.h"

#include "absl/strings/str_cat.h"

namespace scalemoe {

StatusOr<CommunicatorDecision> ChooseCommunicator(CommunicatorRequest request,
                                                  const CommunicatorFacts& facts) {
  const std::string ranks = absl::StrCat(facts.world, facts.world == 1 ? " rank" : " ranks");
  switch (request) {
    case CommunicatorRequest::kMpi:
      return CommunicatorDecision{
          false, facts.cuda ? "MPI (parallel.communicator=MPI): device buffers staged through "
                              "the host"
                            : "MPI (parallel.communicator=MPI)"};
    case CommunicatorRequest::kNccl:
      if (!facts.cuda) {
        return absl::InvalidArgumentError(
            "parallel.communicator=NCCL needs train.device: CUDA (NCCL moves device memory): "
            "set train.device: CUDA, or parallel.communicator: AUTO or MPI");
      }
      if (!facts.shared_gpus.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "parallel.communicator=NCCL but ", facts.shared_gpus,
            ": NCCL refuses two ranks on one GPU; launch at most one rank per GPU (check "
            "CUDA_VISIBLE_DEVICES and the ranks per node), or set parallel.communicator: MPI "
            "(or AUTO) to stage device buffers through the host"));
      }
      if (!facts.nccl_available.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("parallel.communicator=NCCL but NCCL is not available: ",
                         facts.nccl_available.message()));
      }
      return CommunicatorDecision{
          true, absl::StrCat("NCCL (parallel.communicator=NCCL): ", ranks, ", a GPU each")};
    case CommunicatorRequest::kAuto:
      break;
  }
  if (!facts.cuda) return CommunicatorDecision{false, "MPI (AUTO: the run is on the CPU)"};
  if (facts.world == 1) {
    return CommunicatorDecision{false, "none needed (AUTO: a world of one sends nothing)"};
  }
  if (!facts.shared_gpus.empty()) {
    return CommunicatorDecision{
        false, absl::StrCat("MPI, device buffers staged through the host (AUTO: ",
                            facts.shared_gpus, ", and NCCL refuses two ranks on one GPU)")};
  }
  if (!facts.nccl_available.ok()) {
    return CommunicatorDecision{
        false, absl::StrCat("MPI, device buffers staged through the host (AUTO: NCCL is not "
                            "available: ",
                            facts.nccl_available.message(), ")")};
  }
  return CommunicatorDecision{true, absl::StrCat("NCCL (AUTO): ", ranks, ", a GPU each")};
}

}  // namespace scalemoe
