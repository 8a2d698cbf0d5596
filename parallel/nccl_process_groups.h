// NCCL for a run's process groups: the facts parallel/nccl_choice.h decides
// on (is NCCL loadable on every rank, do ranks share a GPU) and the switch of
// every group to an NcclCommunicator. Declared in every build; without the
// CUDA backend (parallel/nccl_unavailable.cc) NCCL is never available.
//
// Bootstrap: rank 0 of the world makes NCCL's unique id and broadcasts it
// over the world's host communicator (MPI; nothing for a world of one);
// every rank joins one world NCCL communicator, which ncclCommSplit divides
// into the groups of every axis with the colour and key of the MPI split
// (parallel/mpi_runtime.cc), so NCCL's ranks are the groups' ranks.
// NCCL_NVLS_ENABLE is set to 0 in the process environment before the first
// NCCL communicator unless the user set it (setenv without overwrite):
// NVLink multicast (NVLS) must stay off on the shared GPU hosts we run on,
// where a program using it can put the host's GPUs out of service.
// All calls are collective over the world: every rank calls them in the
// same order.
#pragma once

#include <string>

#include "core/context.h"
#include "core/status.h"
#include "parallel/nccl_options.h"
#include "parallel/process_groups.h"

namespace scalemoe {

// OK when libnccl loads on this rank and on every other rank of `world` (an
// all-reduce of the answer, so that every rank decides alike); else why not.
Status NcclAvailableEverywhere(Communicator& world);

// "" when every rank of `world` computes on a GPU of its own (compared by
// UUID); else which ranks share one ("ranks 0 and 1 share one GPU"). `ctx`
// is this rank's CUDA context.
StatusOr<std::string> DescribeSharedGpus(Communicator& world, const ExecContext& ctx);

// Replaces every communicator of `groups` (world, tp, dp, pp, etp, ep, edp)
// by an NcclCommunicator over the same ranks on ctx's device, keeping the
// old one for host collectives. `ctx` is this rank's CUDA context; groups
// and ctx's device must outlive the new communicators' use. Groups already
// on NCCL (a second training run on the same groups) stay as they are.
Status UseNcclCommunicators(ProcessGroups& groups, const ExecContext& ctx,
                            const NcclOptions& options);

}  // namespace scalemoe
