// The MPI world for the launcher, without MPI in the interface: MpiRuntime
// (process-wide MPI init/finalize, RAII; this process's rank, world size and
// node; ending the whole job) and CreateMpiProcessGroups (every axis's
// Communicator over the world). Only parallel/mpi_* include mpi.h; the
// launcher talks to other ranks through these and the Communicator
// interface (a string to every rank: parallel/broadcast_string.h).
//
// Threading: MPI is initialised FUNNELED: only the thread that created the
// MpiRuntime may call into it and into the communicators.
// Lifetime: destroy every communicator (ProcessGroups), then the watchdog
// they use, before the MpiRuntime, since MPI_Finalize must come last.
#pragma once

#include <string>

#include "core/status.h"
#include "parallel/collective_watchdog.h"
#include "parallel/process_groups.h"

namespace scalemoe {

// Initialises MPI (MPI_THREAD_FUNNELED) unless someone already did, and
// finalises it on destruction if it initialised it. Without mpirun, Open MPI
// starts as a singleton: a world of one.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // Not OK when MPI_Init_thread failed (the message says why and what to
  // check); world_rank/world_size are then 0 and 1.
  const Status& status() const { return status_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // This process's node as MPI names it (its host name).
  const std::string& host() const { return host_; }

  // Ends every rank of the job (MPI_Abort on the world): the launcher kills
  // the other ranks and exits with a non-zero code. Say why on stderr first.
  [[noreturn]] void Abort(int exit_code) const;

 private:
  Status status_;
  bool initialized_here_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
  std::string host_;
};

struct MpiGroupOptions {
  // Watches every blocking call of the new communicators (null: none). Must
  // outlive them.
  CollectiveWatchdog* watchdog = nullptr;
};

// This rank's communicators for `sizes` over the MPI world (MPI must be
// initialised). InvalidArgument when `sizes` does not tile the world.
StatusOr<ProcessGroups> CreateMpiProcessGroups(const GridSizes& sizes,
                                               const MpiGroupOptions& options = {});

}  // namespace scalemoe
