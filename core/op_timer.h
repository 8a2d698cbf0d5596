// Optional per-op timing of the ops:: dispatch (core/ops_dispatch.cc), for
// "where the time goes" tables (bench/train_step_bench --profile-steps).
//
// Off by default; SetEnabled(true) (or SCALEMOE_OP_TIMER=1 at start-up)
// turns it on for the whole process. Off, an op pays one relaxed atomic load.
// On, every outermost ops:: call (an op that dispatches others counts once)
// is timed, keyed by its name and the shape of its first tensor argument: on CUDA by a pair of
// events recorded on the context's stream (no host wait per op; Collect waits once for all of
// them), on the CPU by the host clock around the synchronous call. Recording events adds host work
// per op, so time profiled steps apart from timed ones.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::op_timer {

namespace internal {
extern std::atomic<bool> enabled;
void Start(const ExecContext& ctx, const char* op, std::string shape);
void Stop();
inline bool ShapeOf(const Tensor& t, std::string& out) {
  out = t.defined() ? ShapeString(t.shape()) : "undefined";
  return true;
}
template <typename T>
bool ShapeOf(const T&, std::string&) {
  return false;
}
}  // namespace internal

// The shape of an op's first Tensor argument ("" when it has none): what
// the profile's per-shape rows are keyed by.
template <typename... Args>
std::string FirstTensorShape(const Args&... args) {
  std::string out;
  bool found = false;
  ((found = found || internal::ShapeOf(args, out)), ...);
  return out;
}

inline bool Enabled() { return internal::enabled.load(std::memory_order_relaxed); }
void SetEnabled(bool on);

// Times one op call for as long as it lives (ops_dispatch.cc opens one per op).
class Scope {
 public:
  // shape() names the call's first tensor's shape; called only when on.
  template <typename ShapeFn>
  Scope(const ExecContext& ctx, const char* op, ShapeFn&& shape) {
    if (Enabled()) {
      active_ = true;
      internal::Start(ctx, op, shape());
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

// One op's calls with one first-tensor shape.
struct ShapeTime {
  std::string shape;  // e.g. "[98304, 64]"; "" for an op without tensor arguments
  int64_t calls = 0;
  double ms = 0;
};

struct OpTime {
  std::string op;        // the ops:: name, e.g. "Gemm"
  std::string category;  // CategoryOf(op)
  int64_t calls = 0;
  double ms = 0;                  // summed over the calls
  std::vector<ShapeTime> shapes;  // the same calls by first-tensor shape, largest ms first
};

// Waits for every timed op (on CUDA: their end events), returns the totals
// per op since the last Collect, largest first, and starts afresh.
std::vector<OpTime> Collect();

// The table row an op belongs to: "GEMM", "expert GEMM", "attention", "routing",
// "permutation", "norms+elementwise", "embedding+loss", "optimizer" or "other".
const char* CategoryOf(const std::string& op);

}  // namespace scalemoe::op_timer
