// parallel.communicator without a GPU: the AUTO/MPI/NCCL decision
// (parallel/nccl_choice.h) for every combination of the launch's facts, the
// config field's parsing and validation (launch/config_validate.cc), and a
// CUDA-less build's refusal (parallel/nccl_unavailable.cc).
#include "parallel/nccl_choice.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/config.h"
#include "parallel/local_communicator.h"
#include "parallel/nccl_process_groups.h"

namespace scalemoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// Four ranks on four GPUs with NCCL loadable: the case NCCL is for.
CommunicatorFacts FourGpus() {
  CommunicatorFacts facts;
  facts.cuda = true;
  facts.world = 4;
  return facts;
}

CommunicatorDecision Decide(CommunicatorRequest request, const CommunicatorFacts& facts) {
  StatusOr<CommunicatorDecision> d = ChooseCommunicator(request, facts);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *d : CommunicatorDecision{};
}

TEST(NcclChoiceTest, AutoPicksNcclForRanksWithAGpuEach) {
  const CommunicatorDecision d = Decide(CommunicatorRequest::kAuto, FourGpus());
  EXPECT_TRUE(d.nccl);
  EXPECT_THAT(d.why, AllOf(HasSubstr("NCCL"), HasSubstr("4 ranks")));
}

TEST(NcclChoiceTest, AutoKeepsTheHostBackendOnTheCpu) {
  CommunicatorFacts facts = FourGpus();
  facts.cuda = false;
  const CommunicatorDecision d = Decide(CommunicatorRequest::kAuto, facts);
  EXPECT_FALSE(d.nccl);
  EXPECT_THAT(d.why, HasSubstr("CPU"));
}

TEST(NcclChoiceTest, AutoSendsNothingInAWorldOfOne) {
  CommunicatorFacts facts = FourGpus();
  facts.world = 1;
  EXPECT_FALSE(Decide(CommunicatorRequest::kAuto, facts).nccl);
}

TEST(NcclChoiceTest, AutoStagesThroughMpiWhenRanksShareAGpu) {
  CommunicatorFacts facts = FourGpus();
  facts.shared_gpus = "ranks 0 and 1 of world[0,1,2,3] share one GPU";
  const CommunicatorDecision d = Decide(CommunicatorRequest::kAuto, facts);
  EXPECT_FALSE(d.nccl);
  EXPECT_THAT(d.why, AllOf(HasSubstr("MPI"), HasSubstr("ranks 0 and 1"),
                           HasSubstr("NCCL refuses two ranks on one GPU")));
}

TEST(NcclChoiceTest, AutoStagesThroughMpiWithoutTheLibrary) {
  CommunicatorFacts facts = FourGpus();
  facts.nccl_available = absl::FailedPreconditionError("cannot load libnccl.so.2");
  const CommunicatorDecision d = Decide(CommunicatorRequest::kAuto, facts);
  EXPECT_FALSE(d.nccl);
  EXPECT_THAT(d.why, HasSubstr("cannot load libnccl.so.2"));
}

TEST(NcclChoiceTest, MpiIsAlwaysTheHostBackend) {
  EXPECT_FALSE(Decide(CommunicatorRequest::kMpi, FourGpus()).nccl);
}

TEST(NcclChoiceTest, NcclIsGrantedWhereItCanRunEvenForOneRank) {
  EXPECT_TRUE(Decide(CommunicatorRequest::kNccl, FourGpus()).nccl);
  CommunicatorFacts one = FourGpus();
  one.world = 1;
  EXPECT_TRUE(Decide(CommunicatorRequest::kNccl, one).nccl);
}

TEST(NcclChoiceTest, NcclIsRefusedWithTheReasonAndTheFix) {
  CommunicatorFacts cpu = FourGpus();
  cpu.cuda = false;
  CommunicatorFacts shared = FourGpus();
  shared.shared_gpus = "ranks 2 and 3 of world[0,1,2,3] share one GPU";
  CommunicatorFacts missing = FourGpus();
  missing.nccl_available = absl::FailedPreconditionError("cannot load libnccl.so.2");
  const struct {
    CommunicatorFacts facts;
    std::vector<std::string> says;
  } cases[] = {
      {cpu, {"train.device: CUDA", "parallel.communicator"}},
      {shared, {"ranks 2 and 3", "one rank per GPU", "parallel.communicator: MPI"}},
      {missing, {"cannot load libnccl.so.2", "parallel.communicator=NCCL"}},
  };
  for (const auto& c : cases) {
    StatusOr<CommunicatorDecision> d = ChooseCommunicator(CommunicatorRequest::kNccl, c.facts);
    ASSERT_FALSE(d.ok());
    for (const std::string& s : c.says)
      EXPECT_THAT(std::string(d.status().message()), HasSubstr(s));
  }
}

TEST(NcclChoiceTest, TheConfigFieldParsesAndNcclNeedsACudaDevice) {
  StatusOr<config::RunConfig> c = LoadConfig("configs/tiny_cpu.textproto", {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->parallel().communicator(), config::ParallelConfig::AUTO);
  ASSERT_TRUE(ApplyOverride("parallel.communicator=NCCL", &*c).ok());
  EXPECT_EQ(c->parallel().communicator(), config::ParallelConfig::NCCL);
  // tiny_cpu trains on the CPU: NCCL is refused up front, naming both fields.
  const Status s = ValidateConfig(*c, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("parallel.communicator=NCCL"), HasSubstr("train.device: CUDA")));
  ASSERT_TRUE(ApplyOverride("train.device=CUDA", &*c).ok());
  EXPECT_TRUE(ValidateConfig(*c, 1).ok()) << ValidateConfig(*c, 1);
  ASSERT_TRUE(ApplyOverride("parallel.communicator=MPI", &*c).ok());
  ASSERT_TRUE(ApplyOverride("train.device=CPU", &*c).ok());
  EXPECT_TRUE(ValidateConfig(*c, 1).ok());
  EXPECT_FALSE(ApplyOverride("parallel.communicator=GLOO", &*c).ok());
}

#if !SCALEMOE_CUDA
// Without the CUDA backend NCCL is never available, and says why.
TEST(NcclChoiceTest, ABuildWithoutCudaHasNoNccl) {
  LocalCommunicator world("world[0]");
  const Status s = NcclAvailableEverywhere(world);
  EXPECT_THAT(std::string(s.message()), HasSubstr("without the CUDA backend"));
}
#endif

}  // namespace
}  // namespace scalemoe
