// Failure drill for mpi_rank_failure_test: rank 1 exits with code 3 before a
// collective while every other rank waits in a Barrier. The launcher must end
// the whole job with a non-zero code instead of leaving the others hanging.
#include <cstdio>
#include <cstdlib>

#include "parallel/mpi_communicator.h"

int main(int argc, char** argv) {
  scalemoe::MpiRuntime runtime(&argc, &argv);
  if (!runtime.status().ok()) return 2;
  auto groups = scalemoe::CreateMpiProcessGroups(
      {.dp = runtime.world_size(), .edp = runtime.world_size()});
  if (!groups.ok()) {
    std::fprintf(stderr, "%s\n", groups.status().ToString().c_str());
    return 2;
  }
  if (runtime.world_rank() == 1) {
    std::fprintf(stderr, "rank 1: exiting with code 3 before the barrier\n");
    std::exit(3);
  }
  const scalemoe::Status status = groups->world->Barrier();
  std::fprintf(stderr, "rank %d: barrier returned %s\n", runtime.world_rank(),
               status.ToString().c_str());
  return status.ok() ? 0 : 1;
}
