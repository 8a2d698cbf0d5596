// MPI start-up and shut-down, the job-wide abort, and the communicators of
// every process group (MPI_Comm_split of the world per axis).
#include "parallel/mpi_runtime.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "parallel/group_name.h"
#include "parallel/mpi_communicator.h"

namespace scalemoe {

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    const int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS) {
      status_ = absl::UnavailableError(absl::StrCat(
          "MPI_Init_thread failed (", MpiErrorString(code),
          "): check the MPI installation, run under mpirun/srun, and as root set "
          "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"));
      std::fprintf(stderr, "scalemoe: %s\n", status_.ToString().c_str());
      return;
    }
    initialized_here_ = true;
    if (provided < MPI_THREAD_FUNNELED) {
      std::fprintf(stderr, "scalemoe: MPI provides thread level %d < FUNNELED; "
                           "only the main thread communicates, so this is fine\n", provided);
    }
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
  char name[MPI_MAX_PROCESSOR_NAME];
  int length = 0;
  if (MPI_Get_processor_name(name, &length) == MPI_SUCCESS) host_.assign(name, length);
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (initialized_here_ && !finalized) MPI_Finalize();
}

void MpiRuntime::Abort(int exit_code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; if it did, still end
}

StatusOr<ProcessGroups> CreateMpiProcessGroups(const GridSizes& sizes,
                                               const MpiGroupOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return absl::FailedPreconditionError(
        "CreateMpiProcessGroups: MPI is not initialised: create an MpiRuntime first");
  }
  int world = 1, me = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  SM_ASSIGN_OR_RETURN(RankGrid grid, RankGrid::Create(world, sizes));
  ProcessGroups groups;
  groups.grid = grid;
  groups.coords = grid.Coords(me);
  for (Axis axis : kAllAxes) {
    const std::vector<std::vector<int>> all = grid.Groups(axis);
    const std::vector<int> mine = grid.GroupOf(axis, me);
    int color = 0;
    while (all[color] != mine) ++color;
    const int key = static_cast<int>(std::find(mine.begin(), mine.end(), me) - mine.begin());
    MPI_Comm comm = MPI_COMM_NULL;
    const std::string name = GroupName(axis, mine);
    int code = MPI_SUCCESS;
    {
      // A collective over the whole world.
      static const std::string kWorld = "MPI_COMM_WORLD";
      CollectiveWatchdog::Scope watch =
          CollectiveWatchdog::Watch(options.watchdog, "MPI_Comm_split", kWorld, me);
      code = MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm);
    }
    if (code != MPI_SUCCESS) {
      return absl::InternalError(absl::StrCat("MPI_Comm_split for ", name, " (global rank ", me,
                                              "): ", MpiErrorString(code)));
    }
    SM_ASSIGN_OR_RETURN(std::unique_ptr<MpiCommunicator> communicator,
                        MpiCommunicator::Adopt(comm, name, options.watchdog));
    std::unique_ptr<Communicator>* slot = nullptr;
    switch (axis) {
      case Axis::kWorld: slot = &groups.world; break;
      case Axis::kTp: slot = &groups.tp; break;
      case Axis::kDp: slot = &groups.dp; break;
      case Axis::kPp: slot = &groups.pp; break;
      case Axis::kEtp: slot = &groups.etp; break;
      case Axis::kEp: slot = &groups.ep; break;
      case Axis::kEdp: slot = &groups.edp; break;
    }
    *slot = std::move(communicator);
  }
  return groups;
}

}  // namespace scalemoe
