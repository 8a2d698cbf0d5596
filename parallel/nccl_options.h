// NcclOptions: how the NCCL communicators of a run watch for failure
// (parallel/nccl_runtime.h). Free of CUDA and NCCL types so that the
// launcher includes it in any build.
#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace scalemoe {

struct NcclOptions {
  // A collective unfinished this long after it was queued fails the run
  // (0: never, only NCCL's own errors do). The clock starts when the host
  // queues the call, which may be ahead of the GPU: keep it far above a
  // step's time (the default is parallel.collective_timeout_s's).
  std::chrono::milliseconds timeout{600000};
  // Named in the message so the user knows what to change.
  std::string timeout_setting = "parallel.collective_timeout_s";
  // This process, for the message.
  int world_rank = 0;
  // Runs on the monitor thread after the communicators were aborted, at most
  // once; may end the process. Null: the error surfaces at the next call.
  std::function<void(const std::string& message)> on_failure;
};

}  // namespace scalemoe
