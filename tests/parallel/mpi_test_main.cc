// main() for GoogleTest binaries run under mpirun: initialises MPI, prints
// GoogleTest output on rank 0 only, and fails the job on every rank when any
// rank failed (the failure flag is all-reduced), so mpirun's exit code tells.
#include <cstdio>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"

namespace {

// Other ranks report only their failed assertions, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  scalemoe::MpiRuntime runtime(&argc, &argv);
  if (!runtime.status().ok()) return 2;
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world_rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(runtime.world_rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed && runtime.world_rank() == 0) std::fprintf(stderr, "a rank failed its tests\n");
  return failed;
}
