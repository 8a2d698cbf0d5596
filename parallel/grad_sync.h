// GradSync: data-parallel gradient averaging over the registry's flat grad
// buffer, in buckets so communication can overlap the backward pass.
//
// Buckets are contiguous runs of the flat grad buffer (at most
// bucket_elements each; <= 0 means no limit) that never mix domains:
//   dense parameters   all-reduced over dp
//   expert parameters  (ParamLayout::is_expert()) all-reduced over edp
// Both are then divided by the DP size (not the EDP size): under expert
// parallelism the EP dispatcher already sums an owned expert's gradient over
// the tokens of every rank of its EP group, so the sum over EDP covers every
// DP rank's micro-batch exactly once and 1/DP gives the same mean as for
// dense parameters (Megatron's expert_gradient_scaling_factor). With EP = 1,
// EDP = DP and this is the plain mean.
// kExpertBias has no gradient and is skipped; an optional filter narrows the
// synced parameters further (the ZeRO-1 optimizer syncs only Muon matrices
// this way).
//
// Overlap: as the backward pass finalises a flat range, LaunchRange(begin,
// end) marks it; a bucket starts as soon as all its elements are marked.
// WaitAll() starts whatever is still unmarked, waits, applies the 1/DP and
// re-arms for the next step. Every rank must mark ranges such that buckets
// start in the same order (backward runs the same layers everywhere).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "parallel/process_groups.h"

namespace scalemoe {

class GradSync {
 public:
  struct Bucket {
    int64_t begin = 0;  // flat grad indices [begin, end)
    int64_t end = 0;
    bool expert = false;  // reduced over edp instead of dp
  };

  // The registry must be materialised and, like `groups`, outlive this
  // object. `include`, if given, selects which parameters are synced (on top
  // of skipping kExpertBias).
  // The reductions run on `ctx` (where the registry's buffers live).
  GradSync(const ExecContext& ctx, ParamRegistry& registry, const ProcessGroups& groups,
           int64_t bucket_elements, std::function<bool(const Param&)> include = nullptr);

  // Every bucket: launch all, wait all, average. Grads become the DP mean.
  Status AllReduceMean();
  // Marks flat range [begin, end) final and starts every bucket it completes.
  // Ranges of one step must not overlap.
  Status LaunchRange(int64_t begin, int64_t end);
  // Starts the rest, waits for everything, averages; ready for the next step.
  Status WaitAll();

  const std::vector<Bucket>& buckets() const { return buckets_; }

 private:
  struct Pending {
    int64_t ready = 0;  // elements marked final this step
    bool launched = false;
    std::unique_ptr<Work> work;
  };
  Status Launch(size_t index);

  ExecContext ctx_;
  ParamRegistry& registry_;
  const ProcessGroups& groups_;
  std::vector<Bucket> buckets_;  // ascending flat order
  std::vector<Pending> pending_;
};

}  // namespace scalemoe
