// FakeWorld: an in-process Communicator backend for unit tests. Run() starts
// one thread per rank; each receives its own ProcessGroups (every axis of a
// RankGrid) whose communicators meet through shared memory: each collective
// is a rendezvous (one mutex + condition variable per world) where every
// member deposits a copy of its contribution, then computes its own result
// from all contributions in rank order, so results are deterministic and
// bit-identical on every rank.
//
// Faults: FailCollective(r, k) makes global rank r's k-th communication call
// (0-based, counted over all of r's communicators, Send/Recv/Barrier
// included) return an error; from then on r is dead and its later calls fail
// too. A peer waiting on a dead rank, or on a rank whose function already
// returned, fails at once; a peer waiting on a rank that is stuck elsewhere
// (mismatched call order) fails after `timeout`. Nothing hangs.
//
// CPU tensors only (contiguous). Async calls complete before they return;
// Wait() reports their status. Send is eager (never blocks).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "core/status.h"
#include "parallel/process_groups.h"

namespace scalemoe {

struct FakeWorldOptions {
  // How long a rank waits for a peer that neither arrives nor dies.
  std::chrono::milliseconds timeout{10000};
};

class FakeWorld {
 public:
  explicit FakeWorld(FakeWorldOptions options = {}) : options_(options) {}

  // Global rank `rank`'s `k`-th communication call returns an error. Set
  // before Run; applies to every later Run of this FakeWorld.
  void FailCollective(int rank, int64_t k);

  // Runs fn on `world` threads, each with its own ProcessGroups laid out by
  // `sizes`; returns OK when every rank returned OK, else the error that
  // happened first (in time), prefixed with its rank. InvalidArgument when
  // `sizes` does not tile `world`.
  Status Run(int world, const GridSizes& sizes,
             const std::function<Status(ProcessGroups&)>& fn);

  // Each rank's own status from the last Run (size `world`).
  const std::vector<Status>& rank_statuses() const { return rank_statuses_; }

 private:
  FakeWorldOptions options_;
  std::vector<std::pair<int, int64_t>> failures_;
  std::vector<Status> rank_statuses_;
};

}  // namespace scalemoe
