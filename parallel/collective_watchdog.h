// CollectiveWatchdog: notices a blocking communication call that has not
// returned within a timeout and hands a message naming the rank, its node
// (host name), the call and the group to a handler (the launcher ends the
// process there, so that mpirun/srun stop the whole job).
//
// Why: a collective whose peer is stopped, or whose peer's node lost its data
// link while the launcher's own control connection is still up, blocks in
// MPI forever (TCP retransmits for ~15 minutes, then MPI may still wait);
// Open MPI returns no error we could turn into a Status. One watchdog thread
// per process watches every communicator that was given it.
//
// Threading: Watch() is called by the one thread that communicates (MPI is
// FUNNELED); the handler runs on the watchdog's own thread, at most once,
// and must not call MPI. Cost per watched call: one uncontended mutex lock
// on entry and one on exit.
// Lifetime: outlive every communicator that holds it; the destructor stops
// and joins the thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace scalemoe {

struct CollectiveWatchdogOptions {
  // A watched call running this long fires the handler. Must be > 0.
  std::chrono::milliseconds timeout{600000};
  // Who and where this process is, for the message.
  int world_rank = 0;
  std::string host;
  // The setting that chose `timeout`, named in the message so the user knows
  // what to change ("parallel.collective_timeout_s").
  std::string timeout_setting = "the collective timeout";
  // Receives the message; runs on the watchdog thread, at most once.
  std::function<void(const std::string& message)> on_timeout;
};

class CollectiveWatchdog {
 public:
  explicit CollectiveWatchdog(CollectiveWatchdogOptions options);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  // Marks one blocking call as in flight until the Scope is destroyed.
  // `op` must be a string literal; `group` must outlive the Scope.
  class Scope {
   public:
    Scope(Scope&& other) noexcept : watchdog_(other.watchdog_), id_(other.id_) {
      other.watchdog_ = nullptr;
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    Scope& operator=(Scope&&) = delete;
    ~Scope() {
      if (watchdog_ != nullptr) watchdog_->End(id_);
    }

   private:
    friend class CollectiveWatchdog;
    Scope(CollectiveWatchdog* watchdog, uint64_t id) : watchdog_(watchdog), id_(id) {}
    CollectiveWatchdog* watchdog_;
    uint64_t id_;
  };

  // A no-op Scope when `watchdog` is null (no timeout configured).
  static Scope Watch(CollectiveWatchdog* watchdog, const char* op, const std::string& group,
                     int group_rank);

  // Whether the handler has run (for tests).
  bool fired() const;

 private:
  uint64_t Begin(const char* op, const std::string& group, int group_rank);
  void End(uint64_t id);
  void Loop();
  std::string Describe(std::chrono::steady_clock::duration elapsed) const;  // mu_ held

  const CollectiveWatchdogOptions options_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool fired_ = false;
  // The call in flight: id 0 = none. Later Begins replace earlier ones (a
  // Wait inside a watched call), and End clears only its own.
  uint64_t active_id_ = 0, next_id_ = 1;
  const char* op_ = nullptr;
  const std::string* group_ = nullptr;
  int group_rank_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::thread thread_;
};

}  // namespace scalemoe
