// NCCL bootstrap over the host communicators: availability, shared GPUs, the
// world communicator and its splits.
#include "parallel/nccl_process_groups.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/group_name.h"
#include "parallel/nccl_api.h"
#include "parallel/nccl_communicator.h"
#include "parallel/nccl_runtime.h"

namespace scalemoe {
namespace {

std::unique_ptr<Communicator>& Slot(ProcessGroups& groups, Axis axis) {
  switch (axis) {
    case Axis::kWorld:
      return groups.world;
    case Axis::kTp:
      return groups.tp;
    case Axis::kDp:
      return groups.dp;
    case Axis::kPp:
      return groups.pp;
    case Axis::kEtp:
      return groups.etp;
    case Axis::kEp:
      return groups.ep;
    case Axis::kEdp:
      return groups.edp;
  }
  return groups.world;
}

Status NcclError(ncclResult_t result, const std::string& what, ncclComm_t comm = nullptr) {
  return absl::InternalError(absl::StrCat(what, ": ", nccl::ErrorText(result, comm)));
}

}  // namespace

Status NcclAvailableEverywhere(Communicator& world) {
  const Status here = nccl::Load();
  int32_t everywhere = here.ok() ? 1 : 0;
  Tensor flag = Tensor::FromBlob(&everywhere, {1}, DType::kI32, Device::kCPU);
  SM_RETURN_IF_ERROR(world.AllReduceHost(flag, {.op = ReduceOp::kMin}));
  if (!here.ok()) return here;
  if (everywhere == 0) {
    return absl::FailedPreconditionError(
        "libnccl.so.2 cannot be loaded on another rank (that rank's log says why)");
  }
  return absl::OkStatus();
}

StatusOr<std::string> DescribeSharedGpus(Communicator& world, const ExecContext& ctx) {
  cudaDeviceProp prop{};
  SM_RETURN_IF_ERROR(NcclCudaStatus(cudaGetDeviceProperties(&prop, ctx.device_ordinal()),
                                    "cudaGetDeviceProperties", ctx.device_ordinal()));
  int64_t uuid[2];
  static_assert(sizeof(uuid) == sizeof(prop.uuid.bytes));
  std::memcpy(uuid, prop.uuid.bytes, sizeof(uuid));
  const int n = world.size();
  std::vector<int64_t> all(2 * n);
  SM_RETURN_IF_ERROR(
      world.AllGatherHost(Tensor::FromBlob(uuid, {2}, DType::kI64, Device::kCPU),
                          Tensor::FromBlob(all.data(), {2 * n}, DType::kI64, Device::kCPU)));
  for (int a = 0; a < n; ++a) {
    for (int b = a + 1; b < n; ++b) {
      if (all[2 * a] == all[2 * b] && all[2 * a + 1] == all[2 * b + 1]) {
        return absl::StrCat("ranks ", a, " and ", b, " of ", world.name(), " share one GPU");
      }
    }
  }
  return std::string();
}

Status UseNcclCommunicators(ProcessGroups& groups, const ExecContext& ctx,
                            const NcclOptions& options) {
  SM_RETURN_IF_ERROR(nccl::Load());
  if (ctx.device() != Device::kCUDA) {
    return absl::InvalidArgumentError("UseNcclCommunicators needs a CUDA context");
  }
  if (dynamic_cast<NcclCommunicator*>(groups.world.get()) != nullptr) return absl::OkStatus();
  setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  const int ordinal = ctx.device_ordinal();
  SM_RETURN_IF_ERROR(NcclCudaStatus(cudaSetDevice(ordinal), "cudaSetDevice", ordinal));

  // Rank 0's unique id to every rank: [made (0/1), the id's bytes].
  Communicator& world = *groups.world;
  ncclUniqueId id{};
  constexpr int64_t kIdWords = (sizeof(ncclUniqueId) + 7) / 8;
  std::vector<int64_t> words(1 + kIdWords, 0);
  Status made;
  if (world.rank() == 0) {
    if (ncclResult_t r = nccl::GetUniqueId(&id); r != ncclSuccess) {
      made = NcclError(r, "ncclGetUniqueId on world rank 0");
    } else {
      words[0] = 1;
      std::memcpy(&words[1], &id, sizeof(id));
    }
  }
  SM_RETURN_IF_ERROR(WithContext(world.BroadcastHost(Tensor::FromBlob(words.data(), {1 + kIdWords},
                                                                      DType::kI64, Device::kCPU)),
                                 "sending NCCL's unique id"));
  if (words[0] == 0) {
    if (!made.ok()) return made;
    return absl::InternalError("world rank 0 could not make NCCL's unique id (its log says why)");
  }
  std::memcpy(&id, &words[1], sizeof(id));

  ncclComm_t world_comm = nullptr;
  if (ncclResult_t r = nccl::CommInitRank(&world_comm, world.size(), id, world.rank());
      r != ncclSuccess) {
    return NcclError(r, absl::StrCat("ncclCommInitRank for ", world.name(), " (rank ", world.rank(),
                                     " of ", world.size(), ", CUDA device ", ordinal, ")"));
  }
  StatusOr<std::shared_ptr<NcclRuntime>> runtime = NcclRuntime::Create(ordinal, options);
  if (!runtime.ok()) {
    (void)nccl::CommDestroy(world_comm);
    return runtime.status();
  }
  // The world communicator first: once it is adopted, the splits' parent
  // lives as long as the groups.
  const int me = groups.coords.global;
  for (Axis axis : kAllAxes) {
    ncclComm_t comm = world_comm;
    if (axis != Axis::kWorld) {
      const std::vector<std::vector<int>> all = groups.grid.Groups(axis);
      const std::vector<int> mine = groups.grid.GroupOf(axis, me);
      int color = 0;
      while (all[color] != mine) ++color;
      const int key = static_cast<int>(std::find(mine.begin(), mine.end(), me) - mine.begin());
      if (ncclResult_t r = nccl::CommSplit(world_comm, color, key, &comm, nullptr);
          r != ncclSuccess) {
        return NcclError(
            r, absl::StrCat("ncclCommSplit for ", GroupName(axis, mine), " (global rank ", me, ")"),
            world_comm);
      }
    }
    std::unique_ptr<Communicator>& slot = Slot(groups, axis);
    SM_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> nccl_comm,
                        NcclCommunicator::Create(std::move(slot), comm, *runtime));
    slot = std::move(nccl_comm);
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
