// Optional per-op timing of the ops:: dispatch (core/ops_dispatch.cc), for
// "where the time goes" tables (bench/train_step_bench --profile-steps).
//
// Off by default; SetEnabled(true) (or SCALEMOE_OP_TIMER=1 at start-up)
// turns it on for the whole process. Off, an op pays one relaxed atomic load.
// On, every outermost ops:: call (an op that dispatches others counts once)
// is timed: on CUDA by a pair of events recorded on the context's stream
// (no host wait per op; Collect waits once for all of them), on the CPU by
// the host clock around the synchronous call. Recording events adds host
// work per op, so time profiled steps apart from timed ones.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "core/context.h"

namespace scalemoe::op_timer {

namespace internal {
extern std::atomic<bool> enabled;
void Start(const ExecContext& ctx, const char* op);
void Stop();
}  // namespace internal

inline bool Enabled() { return internal::enabled.load(std::memory_order_relaxed); }
void SetEnabled(bool on);

// Times one op call for as long as it lives (ops_dispatch.cc opens one per op).
class Scope {
 public:
  Scope(const ExecContext& ctx, const char* op) {
    if (Enabled()) {
      active_ = true;
      internal::Start(ctx, op);
    }
  }
  ~Scope() {
    if (active_) internal::Stop();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool active_ = false;
};

struct OpTime {
  std::string op;        // the ops:: name, e.g. "Gemm"
  std::string category;  // CategoryOf(op)
  int64_t calls = 0;
  double ms = 0;  // summed over the calls
};

// Waits for every timed op (on CUDA: their end events), returns the totals
// per op since the last Collect, largest first, and starts afresh.
std::vector<OpTime> Collect();

// The table row an op belongs to: "GEMM", "expert GEMM", "attention", "routing",
// "permutation", "norms+elementwise", "embedding+loss", "optimizer" or "other".
const char* CategoryOf(const std::string& op);

}  // namespace scalemoe::op_timer
