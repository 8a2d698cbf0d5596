// The watchdog thread: wakes a few times per timeout, fires once.
#include "parallel/collective_watchdog.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace scalemoe {

CollectiveWatchdog::CollectiveWatchdog(CollectiveWatchdogOptions options)
    : options_(std::move(options)) {
  SM_CHECK_MSG(options_.timeout.count() > 0, "CollectiveWatchdog needs a positive timeout");
  SM_CHECK_MSG(static_cast<bool>(options_.on_timeout), "CollectiveWatchdog needs a handler");
  thread_ = std::thread([this] { Loop(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

CollectiveWatchdog::Scope CollectiveWatchdog::Watch(CollectiveWatchdog* watchdog, const char* op,
                                                    const std::string& group, int group_rank) {
  if (watchdog == nullptr) return Scope(nullptr, 0);
  return Scope(watchdog, watchdog->Begin(op, group, group_rank));
}

bool CollectiveWatchdog::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

uint64_t CollectiveWatchdog::Begin(const char* op, const std::string& group, int group_rank) {
  std::lock_guard<std::mutex> lock(mu_);
  active_id_ = next_id_++;
  op_ = op;
  group_ = &group;
  group_rank_ = group_rank;
  start_ = std::chrono::steady_clock::now();
  return active_id_;
}

void CollectiveWatchdog::End(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (active_id_ == id) active_id_ = 0;
}

std::string CollectiveWatchdog::Describe(std::chrono::steady_clock::duration elapsed) const {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  const double limit = std::chrono::duration<double>(options_.timeout).count();
  return absl::StrCat(
      "watchdog: rank ", options_.world_rank, " on node ", options_.host, ": ", op_, " on ",
      *group_, " (group rank ", group_rank_, ") has not returned after ",
      static_cast<int64_t>(seconds), " s (", options_.timeout_setting, " = ", limit,
      " s): a rank of ", *group_,
      " has died or stopped, or its node is unreachable (network link down); ending this rank "
      "so that the launcher stops the job");
}

void CollectiveWatchdog::Loop() {
  // Checking 10 times per timeout bounds the overshoot to 10%.
  const auto poll = std::clamp<std::chrono::milliseconds>(
      options_.timeout / 10, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, poll);
    if (stop_ || fired_ || active_id_ == 0) continue;
    const auto elapsed = std::chrono::steady_clock::now() - start_;
    if (elapsed < options_.timeout) continue;
    fired_ = true;
    const std::string message = Describe(elapsed);
    lock.unlock();
    options_.on_timeout(message);
    lock.lock();
  }
}

}  // namespace scalemoe
