// Shared by the whole-training tests under mpirun (trainer_mpi_test.cc,
// trainer_tp_mpi_test.cc): the job's directory, one training run on this
// world's process groups, the comparison of two runs, and main().
#pragma once

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "parallel/broadcast_string.h"
#include "parallel/mpi_runtime.h"
#include "tests/launch/tiny_training.h"
#include "tests/testing/host_context.h"

namespace scalemoe::testing {

// The job's MPI world for the helpers below (no MPI calls outside
// parallel/): the runtime and a world communicator, set up by MpiTestMain.
struct MpiTestWorld {
  MpiRuntime* runtime = nullptr;
  std::unique_ptr<ProcessGroups> groups;
};
inline MpiTestWorld& TestWorld() {
  static MpiTestWorld* world = new MpiTestWorld;
  return *world;
}

inline int WorldRank() { return TestWorld().runtime->world_rank(); }
inline int WorldSize() { return TestWorld().runtime->world_size(); }
inline void WorldBarrier() { SM_CHECK_OK(TestWorld().groups->world->Barrier()); }

// One directory for the whole job, "<tmp>/<prefix>_<world>_<rank 0's pid>",
// the same on every rank. The first call is a collective (rank 0 names it).
// SCALEMOE_TEST_DEVICE=CUDA (the gpu-labelled CTest entries): every run of
// the test, its single-rank reference included, trains on the GPU.
inline std::vector<std::string> TestDeviceOverrides() {
  const char* device = std::getenv("SCALEMOE_TEST_DEVICE");
  if (device == nullptr) return {};
  return {std::string("train.device=") + device};
}

// SCALEMOE_TEST_DEVICE=CUDA on a machine without a GPU: the test skips
// (fails under SCALEMOE_REQUIRE_GPU=1).
inline bool MissingTestGpu() {
  const char* device = std::getenv("SCALEMOE_TEST_DEVICE");
  return device != nullptr && std::strcmp(device, "CUDA") == 0 &&
         ExecContext::CudaDeviceCount() == 0;
}

// In a test's SetUp: skips (or fails under SCALEMOE_REQUIRE_GPU=1) when the
// test device is missing.
#define SM_SKIP_WITHOUT_TEST_GPU()                                                      \
  do {                                                                                  \
    if (!::scalemoe::testing::MissingTestGpu()) break;                                  \
    const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");                          \
    if (require != nullptr && std::strcmp(require, "1") == 0) FAIL() << "no CUDA device"; \
    GTEST_SKIP() << "SCALEMOE_TEST_DEVICE=CUDA but no CUDA device here: gpu test skipped"; \
  } while (0)

inline std::filesystem::path MpiJobRoot(const std::string& prefix) {
  static std::filesystem::path* root = [&] {
    StatusOr<std::string> id =
        BroadcastString(*TestWorld().groups->world, std::to_string(::getpid()));
    SM_CHECK_OK(id.status());
    return new std::filesystem::path(std::filesystem::temp_directory_path() /
                                     (prefix + "_" + std::to_string(WorldSize()) + "_" + *id));
  }();
  return *root;
}

// One quiet training run into `run_dir` (groups null: a world of one).
inline StatusOr<TrainResult> TrainRun(const config::RunConfig& cfg,
                                      const std::filesystem::path& run_dir, ProcessGroups* groups,
                                      int64_t exit_after = 0, bool resume = false) {
  TrainOptions o;
  o.config = cfg;
  o.run_dir = run_dir.string();
  o.quiet = true;
  o.groups = groups;
  o.exit_after_steps = exit_after;
  o.resume = resume;
  return Train(o);
}

// The process groups of `cfg`'s layout on this MPI world.
inline StatusOr<ProcessGroups> MpiGroups(const config::RunConfig& cfg) {
  SM_RETURN_IF_ERROR(ValidateConfig(cfg, WorldSize()));
  SM_ASSIGN_OR_RETURN(ParallelLayout l, ResolveLayout(cfg, WorldSize()));
  return CreateMpiProcessGroups(GridSizes{l.tp, l.dp, l.pp, l.etp, l.ep, l.edp});
}

// The scale-vector figures ("sv", launch/scale_vector_stats.h) of every
// logged step of `run` against `reference`'s, within `tolerance` relative;
// the spread across experts (std, a difference of O(rms) values) within
// `tolerance` of the entry's mean rms.
inline void ExpectSameScaleVectorStats(const std::filesystem::path& run,
                                       const std::filesystem::path& reference, double tolerance) {
  auto read = [](const std::filesystem::path& dir) {
    StatusOr<std::vector<nlohmann::json>> records =
        ReadMetricsFile((dir / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    std::vector<nlohmann::json> sv;
    for (const auto& r : records.value_or(std::vector<nlohmann::json>{})) {
      if (r.contains("loss")) sv.push_back(r.contains("sv") ? r["sv"] : nlohmann::json());
    }
    return sv;
  };
  const std::string name = run.filename().string();
  const std::vector<nlohmann::json> got = read(run), want = read(reference);
  ASSERT_EQ(got.size(), want.size()) << name;
  auto near = [&](const nlohmann::json& g, const nlohmann::json& w, double scale,
                  const std::string& what) {
    ASSERT_TRUE(g.is_number() && w.is_number()) << what << ": " << g.dump() << " vs " << w.dump();
    EXPECT_NEAR(g.get<double>(), w.get<double>(), tolerance * scale) << what;
  };
  for (size_t i = 0; i < want.size(); ++i) {
    // No "sv" on both sides: a model without vectors, or the switch off.
    ASSERT_EQ(got[i].is_null(), want[i].is_null()) << name << " record " << i;
    ASSERT_EQ(got[i].size(), want[i].size()) << name << " record " << i;
    for (const auto& [key, w] : want[i].items()) {
      const std::string what = name + " record " + std::to_string(i) + " " + key;
      ASSERT_TRUE(got[i].contains(key)) << what;
      const nlohmann::json& g = got[i][key];
      if (!w.contains("n")) {  // one vector
        for (const char* f : {"rms", "beta"}) {
          if (w.contains(f)) near(g[f], w[f], std::fabs(w[f].get<double>()), what + " " + f);
        }
        continue;
      }
      EXPECT_EQ(g["n"], w["n"]) << what;
      const double scale = std::fabs(w["rms"]["mean"].get<double>());
      for (const char* f : {"rms", "beta"}) {
        if (!w.contains(f)) continue;
        for (const char* stat : {"mean", "min", "max"}) {
          near(g[f][stat], w[f][stat], std::fabs(w[f][stat].get<double>()),
               what + " " + f + " " + stat);
        }
        near(g[f]["std"], w[f]["std"], scale, what + " " + f + " std");
      }
    }
  }
}

// Rank 0: run `run` against run `reference` — the loss and the scale-vector
// figures of every logged step, then every parameter of their checkpoints at
// `steps` (each loaded whole into one rank's model of `cfg`), within
// `tolerance` relative.
inline void ExpectSameTraining(const config::RunConfig& cfg, const std::filesystem::path& run,
                               const std::filesystem::path& reference, int steps,
                               double tolerance) {
  if (WorldRank() != 0) return;
  const std::string name = run.filename().string();
  const std::vector<double> want = ReadLosses(reference.string());
  const std::vector<double> got = ReadLosses(run.string());
  ASSERT_EQ(got.size(), want.size()) << name;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], tolerance * std::abs(want[i])) << name << " step " << i + 1;
  }
  ExpectSameScaleVectorStats(run, reference, tolerance);
  const std::string last = "checkpoints/step_" + std::to_string(steps);
  StatusOr<WholeModel> a = LoadWholeModel(cfg, (run / last).string());
  StatusOr<WholeModel> b = LoadWholeModel(cfg, (reference / last).string());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  for (const auto& p : b->registry->params()) {
    const Param* q = a->registry->Find(p->spec.name);
    ASSERT_NE(q, nullptr) << p->spec.name;
    EXPECT_LE(RelativeDifference(q->value, p->value), tolerance) << name << ": " << p->spec.name;
  }
}

// main() of an mpirun test: every rank runs every test (only rank 0 prints);
// the job fails if any rank failed.
inline int MpiTestMain(int argc, char** argv) {
  MpiRuntime runtime(&argc, &argv);
  if (!runtime.status().ok()) {
    std::fprintf(stderr, "%s\n", std::string(runtime.status().message()).c_str());
    return 1;
  }
  StatusOr<ProcessGroups> groups = CreateMpiProcessGroups(
      {.dp = runtime.world_size(), .edp = runtime.world_size()});
  if (!groups.ok()) {
    std::fprintf(stderr, "%s\n", std::string(groups.status().message()).c_str());
    return 1;
  }
  TestWorld().runtime = &runtime;
  TestWorld().groups = std::make_unique<ProcessGroups>(*std::move(groups));
  ::testing::InitGoogleTest(&argc, argv);
  if (runtime.world_rank() != 0) {
    delete ::testing::UnitTest::GetInstance()->listeners().Release(
        ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  }
  Tensor failed = Tensor::Zeros({1}, DType::kI32);
  failed.data<int32_t>()[0] = RUN_ALL_TESTS() != 0 ? 1 : 0;
  SM_CHECK_OK(
      TestWorld().groups->world->AllReduce(testing::HostCtx(), failed, {.op = ReduceOp::kMax}));
  const int code = failed.data<int32_t>()[0];
  TestWorld().groups.reset();  // before MPI_Finalize
  return code;
}

}  // namespace scalemoe::testing
