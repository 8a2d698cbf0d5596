// ForwardCacheStash: the forward caches of a tree of modules, moved out
// after one Forward and moved back before that Forward's Backward. Every
// module keeps ONE forward cache ("each Backward follows its Forward"); a
// pipeline stage with several micro-batches in flight stashes each one's
// caches (model/pipeline_model_stage.h) instead of recomputing them.
//
// A module lists its per-Forward members, then its children, in one method
//   void VisitForwardCache(ForwardCacheStash& stash) {
//     stash.Visit(x_); stash.Visit(counts_); child_->VisitForwardCache(stash);
//   }
// that serves both directions: while saving, Visit moves each member into
// the stash and leaves it empty (value-initialised, or `empty`), so the
// module holds no activation; after BeginRestore, Visit moves the entries
// back in the same order. Tensor handles move, not data: a stash costs no
// copy, it keeps the cached storage alive (the activations of the
// micro-batch). Per-step state (effective γ, folded weights, gradient
// accumulators, step statistics) is not a forward cache and is not listed.
// Members are of the types of ForwardCacheStash::Entry (a variant: no heap
// allocation per member; another type does not compile). A stash is
// restored at most once; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <variant>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

class ForwardCacheStash {
 public:
  using Entry = std::variant<Tensor, std::vector<Tensor>, std::vector<int64_t>, int64_t, int, bool>;

  ForwardCacheStash() = default;
  ForwardCacheStash(ForwardCacheStash&&) = default;
  ForwardCacheStash& operator=(ForwardCacheStash&&) = default;
  ForwardCacheStash(const ForwardCacheStash&) = delete;
  ForwardCacheStash& operator=(const ForwardCacheStash&) = delete;

  // Saving: moves `member` in and leaves `empty` behind. Restoring: moves
  // the next entry back into `member` (SM_CHECK-fails when the visit order
  // or a member's type differs from the saving visit's).
  template <typename T>
  void Visit(T& member, T empty = T{}) {
    if (!restoring_) {
      entries_.emplace_back(std::exchange(member, std::move(empty)));
      return;
    }
    SM_CHECK_MSG(next_ < entries_.size(), "ForwardCacheStash: restoring visits more members (",
                 next_ + 1, ") than were saved (", entries_.size(), ")");
    T* saved = std::get_if<T>(&entries_[next_]);
    SM_CHECK_MSG(saved != nullptr, "ForwardCacheStash: member ", next_,
                 " is restored as another type than it was saved");
    member = std::move(*saved);
    entries_[next_++] = Entry();  // the stash lets go of the storage
  }

  // Switches from saving to restoring, from the first entry.
  void BeginRestore() {
    SM_CHECK_MSG(!restoring_, "ForwardCacheStash: restored twice");
    restoring_ = true;
    next_ = 0;
  }
  // True once a restoring visit took back every saved entry.
  bool restored() const { return restoring_ && next_ == entries_.size(); }
  bool empty() const { return entries_.empty(); }
  // Calls fn(const Tensor&) for each saved tensor (and each one of a saved
  // vector of tensors), in visit order: what a stash keeps alive, for
  // memory accounting and tests.
  template <typename Fn>
  void ForEachTensor(Fn&& fn) const {
    for (const Entry& e : entries_) {
      if (const Tensor* t = std::get_if<Tensor>(&e)) fn(*t);
      if (const auto* v = std::get_if<std::vector<Tensor>>(&e)) {
        for (const Tensor& t : *v) fn(t);
      }
    }
  }

 private:
  std::vector<Entry> entries_;
  size_t next_ = 0;
  bool restoring_ = false;
};

}  // namespace scalemoe
