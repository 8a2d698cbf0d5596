// Which backend moves a run's device tensors: NCCL (device to device) or the
// host communicator (MPI, staging device buffers through host memory). The
// config asks (parallel.communicator: AUTO, MPI or NCCL); the facts of the
// launch decide AUTO and can refuse NCCL. Pure: no CUDA, no MPI (the facts
// are gathered by parallel/nccl_process_groups.h), so it is tested on any
// machine.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace scalemoe {

enum class CommunicatorRequest : uint8_t { kAuto = 0, kMpi, kNccl };

struct CommunicatorFacts {
  bool cuda = false;  // the run computes on CUDA (train.device: CUDA)
  int world = 1;
  // Empty when every rank has a GPU of its own; else which ranks share one
  // ("ranks 0 and 1 share GPU ..."): NCCL refuses two ranks on one GPU.
  std::string shared_gpus;
  // OK when libnccl loads on every rank; else why not (no CUDA backend in
  // this build, no library, too old).
  Status nccl_available;
};

struct CommunicatorDecision {
  bool nccl = false;
  std::string why;  // one line for the log ("NCCL: 4 ranks, a GPU each")
};

// MPI: always the host backend. NCCL: NCCL, or an error naming
// parallel.communicator and the fix when the facts forbid it. AUTO: NCCL
// when the run is on CUDA, with more than one rank, every rank on its own
// GPU and NCCL available; else the host backend (a world of one has nothing
// to send across GPUs), with the reason.
StatusOr<CommunicatorDecision> ChooseCommunicator(CommunicatorRequest request,
                                                  const CommunicatorFacts& facts);

}  // namespace scalemoe
