// The shared communication stream, its events, and the monitor thread.
#include "parallel/nccl_runtime.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "parallel/nccl_api.h"

namespace scalemoe {

Status NcclCudaStatus(cudaError_t error, const char* what, int ordinal) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " on CUDA device ", ordinal,
                                          " (NCCL backend): ", cudaGetErrorName(error), ": ",
                                          cudaGetErrorString(error)));
}

StatusOr<std::shared_ptr<NcclRuntime>> NcclRuntime::Create(int ordinal, NcclOptions options) {
  std::shared_ptr<NcclRuntime> runtime(new NcclRuntime(ordinal, std::move(options)));
  SM_RETURN_IF_ERROR(NcclCudaStatus(cudaSetDevice(ordinal), "cudaSetDevice", ordinal));
  SM_RETURN_IF_ERROR(
      NcclCudaStatus(cudaStreamCreateWithFlags(&runtime->stream_, cudaStreamNonBlocking),
                     "cudaStreamCreateWithFlags (the communication stream)", ordinal));
  runtime->monitor_ = std::thread([raw = runtime.get()] { raw->Loop(); });
  return runtime;
}

NcclRuntime::~NcclRuntime() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  // Every communicator untracked itself before the last reference went.
  for (cudaEvent_t event : free_events_) cudaEventDestroy(event);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

StatusOr<NcclRuntime::Tracked*> NcclRuntime::Track(ncclComm_t comm, std::string group,
                                                   int group_rank) {
  auto tracked = std::make_unique<Tracked>();
  tracked->comm = comm;
  tracked->group = std::move(group);
  tracked->group_rank = group_rank;
  SM_RETURN_IF_ERROR(
      NcclCudaStatus(cudaEventCreateWithFlags(&tracked->done, cudaEventDisableTiming),
                     "cudaEventCreate", ordinal_));
  std::lock_guard<std::mutex> lock(mu_);
  tracked_.push_back(std::move(tracked));
  return tracked_.back().get();
}

void NcclRuntime::Untrack(Tracked* tracked) {
  std::lock_guard<std::mutex> lock(mu_);
  // Destroy waits for this communicator's queued work; an aborted one is gone.
  if (tracked->comm != nullptr) (void)nccl::CommDestroy(tracked->comm);
  cudaEventDestroy(tracked->done);
  tracked_.erase(std::find_if(tracked_.begin(), tracked_.end(),
                              [&](const auto& t) { return t.get() == tracked; }));
}

StatusOr<cudaEvent_t> NcclRuntime::TakeEvent() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!free_events_.empty()) {
    cudaEvent_t event = free_events_.back();
    free_events_.pop_back();
    return event;
  }
  cudaEvent_t event = nullptr;
  SM_RETURN_IF_ERROR(NcclCudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                                    "cudaEventCreate", ordinal_));
  return event;
}

void NcclRuntime::ReturnEvent(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(mu_);
  free_events_.push_back(event);
}

std::string NcclRuntime::FailLocked(const Tracked& culprit, const std::string& why) {
  const std::string message = absl::StrCat(
      "NCCL: rank ", options_.world_rank, ": ", culprit.last_op ? culprit.last_op : "a collective",
      " on ", culprit.group, " (group rank ", culprit.group_rank, ") ", why,
      "; every NCCL communicator of this rank was aborted");
  error_ = absl::AbortedError(message);
  for (auto& t : tracked_) {
    if (t->comm != nullptr) (void)nccl::CommAbort(t->comm);
    t->comm = nullptr;
  }
  return message;
}

void NcclRuntime::Loop() {
  // Event queries need the device current on this thread.
  cudaSetDevice(ordinal_);
  const auto poll = options_.timeout.count() > 0
                        ? std::clamp<std::chrono::milliseconds>(options_.timeout / 10,
                                                                std::chrono::milliseconds(10),
                                                                std::chrono::milliseconds(1000))
                        : std::chrono::milliseconds(1000);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, poll);
    if (stop_ || !error_.ok()) continue;
    std::string message;
    for (auto& t : tracked_) {
      if (t->comm == nullptr) continue;
      ncclResult_t async = ncclSuccess;
      if (nccl::CommGetAsyncError(t->comm, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress) {
        message = FailLocked(*t, absl::StrCat("failed: ", nccl::ErrorText(async, t->comm)));
        break;
      }
      if (t->last_op == nullptr) continue;
      const cudaError_t query = cudaEventQuery(t->done);
      if (query == cudaSuccess) {
        t->last_op = nullptr;  // done, and so is everything queued before it
      } else if (query != cudaErrorNotReady) {
        message = FailLocked(*t, absl::StrCat("failed on the device: ", cudaGetErrorName(query),
                                              ": ", cudaGetErrorString(query)));
        break;
      } else if (options_.timeout.count() > 0 &&
                 std::chrono::steady_clock::now() - t->queued > options_.timeout) {
        message = FailLocked(
            *t, absl::StrCat("has not finished ",
                             std::chrono::duration<double>(options_.timeout).count(),
                             " s after it was queued (", options_.timeout_setting, "): a rank of ",
                             t->group, " has died or stopped, or its node is unreachable"));
        break;
      }
    }
    if (message.empty()) continue;
    if (ctx_) ctx_->Fail(error_);
    lock.unlock();
    SM_LOG(kError, message);
    if (options_.on_failure) options_.on_failure(message);
    lock.lock();
  }
}

}  // namespace scalemoe
