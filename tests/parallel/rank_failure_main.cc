// Failure drills for the mpi_rank_failure tests (2 ranks):
//   rank_failure_main exit  rank 1 exits with code 3 before a collective while
//                           rank 0 waits in a Barrier. The launcher must end
//                           the whole job with a non-zero code.
//   rank_failure_main hang  rank 1 stops talking (sleeps) while rank 0 waits
//                           in a Barrier under a 2 s CollectiveWatchdog: rank
//                           0's watchdog must end it (code 1) with a message
//                           naming its rank, node, the call and the group,
//                           and the launcher must end rank 1 too.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "parallel/collective_watchdog.h"
#include "parallel/mpi_runtime.h"

int main(int argc, char** argv) {
  const bool hang = argc > 1 && std::strcmp(argv[1], "hang") == 0;
  scalemoe::MpiRuntime runtime(&argc, &argv);
  if (!runtime.status().ok()) return 2;
  std::unique_ptr<scalemoe::CollectiveWatchdog> watchdog;
  if (hang) {
    watchdog = std::make_unique<scalemoe::CollectiveWatchdog>(scalemoe::CollectiveWatchdogOptions{
        .timeout = std::chrono::seconds(2),
        .world_rank = runtime.world_rank(),
        .host = runtime.host(),
        .timeout_setting = "the drill's timeout",
        .on_timeout = [](const std::string& message) {
          std::fprintf(stderr, "%s\n", message.c_str());
          std::fflush(stderr);
          std::_Exit(1);
        }});
  }
  auto groups = scalemoe::CreateMpiProcessGroups(
      {.dp = runtime.world_size(), .edp = runtime.world_size()}, {.watchdog = watchdog.get()});
  if (!groups.ok()) {
    std::fprintf(stderr, "%s\n", groups.status().ToString().c_str());
    return 2;
  }
  if (runtime.world_rank() == 1) {
    if (hang) {
      std::fprintf(stderr, "rank 1: not joining the barrier for 60 s\n");
      std::this_thread::sleep_for(std::chrono::seconds(60));
    } else {
      std::fprintf(stderr, "rank 1: exiting with code 3 before the barrier\n");
      std::exit(3);
    }
  }
  const scalemoe::Status status = groups->world->Barrier();
  std::fprintf(stderr, "rank %d: barrier returned %s\n", runtime.world_rank(),
               status.ToString().c_str());
  return status.ok() ? 0 : 1;
}
