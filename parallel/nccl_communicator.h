// NcclCommunicator: a Communicator whose collectives on CUDA tensors run in
// NCCL on the device, without staging through host memory. Built only with
// the CUDA backend; the launcher creates them through
// parallel/nccl_process_groups.h (one per process group, split from one
// world communicator bootstrapped over MPI).
//
// What goes where:
// - CUDA tensors (a CUDA context): NCCL, on the shared communication stream
//   of parallel/nccl_runtime.h, ordered by events: the call records an event
//   on the context's stream, the communication stream waits for it, runs the
//   collective and records a second event; a synchronous call makes the
//   context's stream wait for that at once, an asynchronous one
//   (AllReduceAsync, ReduceScatterAsync) only in Work::Wait, so that the
//   compute queued in between (the rest of the backward pass) overlaps the
//   communication. Neither blocks the host. Users today: GradSync's buckets
//   (parallel/grad_sync.h) are AllReduceAsync, so a finished layer's
//   gradients reduce while the compute stream finishes the layers below;
//   ZeRO-1's reduce-scatter and all-gather (optim/distributed_optimizer.cc)
//   are synchronous calls after backward and before the next forward;
//   issuing ReduceScatterAsync per bucket from GradientsReady would overlap
//   them the same way.
// - CPU tensors (a CPU context) and the host collectives (*Host, Barrier):
//   the group's host communicator given at construction (MPI; a
//   LocalCommunicator for a world of one). A CPU tensor with a CUDA context
//   is a broken invariant (the base class checks it).
// Dtypes: f32, f64, bf16, i32, i64, reductions included (bf16 is reduced by
// NCCL in bf16). AllToAllV is grouped ncclSend/ncclRecv from the counts
// (zero counts send nothing); the part a rank keeps is a device copy.
// Errors (a bad argument, an NCCL result, an asynchronous NCCL error, a
// collective past the timeout) become a Status naming the collective, the
// group and the rank.
// Threading: one thread calls into it (as MPI's FUNNELED).
// Lifetime: destroy before the host communicator's MPI is finalised.
#pragma once

#include <nccl.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "parallel/communicator.h"
#include "parallel/nccl_runtime.h"

namespace scalemoe {

class NcclCommunicator : public Communicator, private DeviceCollectives {
 public:
  // Takes `comm` (this group's NCCL communicator, on runtime's device) and
  // `host` (the same group's host communicator; same ranks, same order).
  // On an error both stay with the caller (`host` is not moved from).
  static StatusOr<std::unique_ptr<NcclCommunicator>> Create(std::unique_ptr<Communicator>&& host,
                                                            ncclComm_t comm,
                                                            std::shared_ptr<NcclRuntime> runtime);
  ~NcclCommunicator() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  const std::string& name() const override { return host_->name(); }

  // A host barrier (the host communicator's); device work is not waited for.
  Status Barrier() override { return host_->Barrier(); }

 protected:
  DeviceCollectives* device_collectives() override { return this; }

  // Host memory: the host communicator.
  Status HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostAllReduceAsync(const Tensor& tensor,
                                                     const AllReduceOptions& options) override;
  Status HostReduceScatter(const Tensor& input, const Tensor& output,
                           const ReduceScatterOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) override;
  Status HostAllGather(const Tensor& input, const Tensor& output,
                       const AllGatherOptions& options) override;
  Status HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                       const Tensor& output, const std::vector<int64_t>& recv_counts,
                       const AllToAllOptions& options) override;
  Status HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) override;
  Status HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) override;
  Status HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) override;

 private:
  NcclCommunicator(std::unique_ptr<Communicator> host, std::shared_ptr<NcclRuntime> runtime,
                   NcclRuntime::Tracked* tracked)
      : host_(std::move(host)), runtime_(std::move(runtime)), tracked_(tracked) {}

  // Device memory: NCCL (parallel/nccl_communicator.cc).
  Status DeviceAllReduce(const ExecContext& ctx, const Tensor& tensor,
                         const AllReduceOptions& options) override;
  StatusOr<std::unique_ptr<Work>> DeviceAllReduceAsync(const ExecContext& ctx, const Tensor& tensor,
                                                       const AllReduceOptions& options) override;
  Status DeviceReduceScatter(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                             const ReduceScatterOptions& options) override;
  StatusOr<std::unique_ptr<Work>> DeviceReduceScatterAsync(
      const ExecContext& ctx, const Tensor& input, const Tensor& output,
      const ReduceScatterOptions& options) override;
  Status DeviceAllGather(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                         const AllGatherOptions& options) override;
  Status DeviceAllToAllV(const ExecContext& ctx, const Tensor& input,
                         const std::vector<int64_t>& send_counts, const Tensor& output,
                         const std::vector<int64_t>& recv_counts,
                         const AllToAllOptions& options) override;
  Status DeviceBroadcast(const ExecContext& ctx, const Tensor& tensor,
                         const BroadcastOptions& options) override;
  Status DeviceSend(const ExecContext& ctx, const Tensor& tensor, int peer,
                    const SendRecvOptions& options) override;
  Status DeviceRecv(const ExecContext& ctx, const Tensor& tensor, int peer,
                    const SendRecvOptions& options) override;

  // A collective: `run` issues the NCCL call(s) on the communication stream
  // between the two events. With `async`, returns the Work that makes the
  // context's stream wait (holding `buffers` until then); else null.
  using IssueFn = std::function<ncclResult_t(ncclComm_t comm, cudaStream_t stream)>;
  StatusOr<std::unique_ptr<Work>> Issue(const ExecContext& ctx, const char* op, bool async,
                                        std::vector<Tensor> buffers, const IssueFn& run);
  StatusOr<std::unique_ptr<Work>> IssueReduceScatter(const ExecContext& ctx, const char* op,
                                                     bool async, const Tensor& input,
                                                     const Tensor& output,
                                                     const ReduceScatterOptions& options);
  Status Error(const char* op, const std::string& why) const;
  Status CheckTensor(const char* op, const Tensor& t) const;
  Status CheckChunks(const char* op, const Tensor& chunk, const Tensor& whole) const;
  Status CheckPeer(const char* op, int peer) const;

  std::unique_ptr<Communicator> host_;
  ExecContext host_ctx_;  // a CPU context for the host communicator's tensor calls
  std::shared_ptr<NcclRuntime> runtime_;
  NcclRuntime::Tracked* tracked_;  // owned by runtime_; its comm is ours
};

}  // namespace scalemoe
