#include "parallel/pipeline_schedule.h"

#include <deque>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/stage_partition.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

constexpr PipelineScheduleKind kKinds[] = {PipelineScheduleKind::kGPipe,
                                           PipelineScheduleKind::kOneFOneB};

std::vector<std::vector<PipelineAction>> AllStages(PipelineScheduleKind kind, int p, int m) {
  std::vector<std::vector<PipelineAction>> stages;
  for (int s = 0; s < p; ++s) {
    StatusOr<std::vector<PipelineAction>> actions = BuildPipelineSchedule(kind, s, p, m);
    SM_CHECK_OK(actions.status());
    stages.push_back(*actions);
  }
  return stages;
}

std::vector<int> Microbatches(const std::vector<PipelineAction>& actions, PipelineOp op) {
  std::vector<int> out;
  for (const PipelineAction& a : actions) {
    if (a.op == op) out.push_back(a.microbatch);
  }
  return out;
}

bool IsSend(PipelineOp op) {
  return op == PipelineOp::kSendActivation || op == PipelineOp::kSendGrad;
}
bool IsRecv(PipelineOp op) {
  return op == PipelineOp::kRecvActivation || op == PipelineOp::kRecvGrad;
}
int Peer(int stage, PipelineOp op) {
  return op == PipelineOp::kSendActivation || op == PipelineOp::kRecvGrad ? stage + 1 : stage - 1;
}
PipelineOp Matching(PipelineOp op) {
  switch (op) {
    case PipelineOp::kSendActivation: return PipelineOp::kRecvActivation;
    case PipelineOp::kRecvActivation: return PipelineOp::kSendActivation;
    case PipelineOp::kSendGrad: return PipelineOp::kRecvGrad;
    case PipelineOp::kRecvGrad: return PipelineOp::kSendGrad;
    default: return op;
  }
}

// Runs every stage's list against the others. Eager: a Send never blocks
// (FakeWorld, small MPI messages). Rendezvous: a Send completes only together
// with the peer's matching Recv (large MPI messages). Returns "" when every
// stage finished with each Recv getting the micro-batch it expects, else
// what went wrong.
std::string Simulate(const std::vector<std::vector<PipelineAction>>& stages, bool rendezvous) {
  const int p = static_cast<int>(stages.size());
  std::vector<size_t> pc(p, 0);
  // (sender, op) -> micro-batches in flight (eager mode).
  std::map<std::pair<int, PipelineOp>, std::deque<int>> wire;
  auto done = [&](int s) { return pc[s] == stages[s].size(); };
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      if (done(s)) continue;
      const PipelineAction& a = stages[s][pc[s]];
      if (!IsSend(a.op) && !IsRecv(a.op)) {
        ++pc[s];
        progress = true;
      } else if (!rendezvous && IsSend(a.op)) {
        wire[{s, a.op}].push_back(a.microbatch);
        ++pc[s];
        progress = true;
      } else if (!rendezvous) {
        std::deque<int>& q = wire[{Peer(s, a.op), Matching(a.op)}];
        if (q.empty()) continue;
        if (q.front() != a.microbatch) {
          return absl::StrCat("stage ", s, " ", PipelineOpName(a.op), " expects micro-batch ",
                              a.microbatch, " but gets ", q.front());
        }
        q.pop_front();
        ++pc[s];
        progress = true;
      } else if (IsSend(a.op)) {
        const int peer = Peer(s, a.op);
        if (done(peer)) continue;
        const PipelineAction& b = stages[peer][pc[peer]];
        if (b.op != Matching(a.op)) continue;
        if (b.microbatch != a.microbatch) {
          return absl::StrCat("stage ", s, " sends micro-batch ", a.microbatch, ", stage ", peer,
                              " expects ", b.microbatch);
        }
        ++pc[s];
        ++pc[peer];
        progress = true;
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    if (!done(s)) {
      return absl::StrCat("deadlock: stage ", s, " stuck at ",
                          PipelineOpName(stages[s][pc[s]].op), " ",
                          stages[s][pc[s]].microbatch);
    }
  }
  for (const auto& [key, q] : wire) {
    if (!q.empty()) return absl::StrCat("stage ", key.first, " sent unreceived messages");
  }
  return "";
}

class ScheduleTest : public ::testing::TestWithParam<std::tuple<PipelineScheduleKind, int, int>> {};

// Each micro-batch: one forward and one backward per stage, forward first;
// the stage's inputs arrive before it computes and its outputs leave after.
TEST_P(ScheduleTest, EveryMicrobatchRunsOnceInDataOrder) {
  const auto [kind, p, m] = GetParam();
  const auto stages = AllStages(kind, p, m);
  for (int s = 0; s < p; ++s) {
    std::map<std::pair<PipelineOp, int>, int> pos;
    for (size_t i = 0; i < stages[s].size(); ++i) {
      const PipelineAction& a = stages[s][i];
      ASSERT_TRUE(pos.emplace(std::make_pair(a.op, a.microbatch), i).second)
          << "stage " << s << " repeats " << PipelineOpName(a.op) << " " << a.microbatch;
    }
    const bool first = s == 0, last = s == p - 1;
    EXPECT_EQ(stages[s].size(), static_cast<size_t>(m * (2 + (first ? 0 : 2) + (last ? 0 : 2))));
    for (int mb = 0; mb < m; ++mb) {
      auto at = [&](PipelineOp op) { return pos.at({op, mb}); };
      EXPECT_LT(at(PipelineOp::kForward), at(PipelineOp::kBackward));
      if (!first) {
        EXPECT_LT(at(PipelineOp::kRecvActivation), at(PipelineOp::kForward));
        EXPECT_LT(at(PipelineOp::kBackward), at(PipelineOp::kSendGrad));
      }
      if (!last) {
        EXPECT_LT(at(PipelineOp::kForward), at(PipelineOp::kSendActivation));
        EXPECT_LT(at(PipelineOp::kRecvGrad), at(PipelineOp::kBackward));
      }
    }
  }
}

// Sends and receives pair up across neighbours: each activation is sent
// once by stage s and received once by s + 1, in the same order; gradients
// likewise the other way; the first stage receives no activation and the
// last sends none.
TEST_P(ScheduleTest, SendsMatchNeighbourReceives) {
  const auto [kind, p, m] = GetParam();
  const auto stages = AllStages(kind, p, m);
  EXPECT_TRUE(Microbatches(stages[0], PipelineOp::kRecvActivation).empty());
  EXPECT_TRUE(Microbatches(stages[0], PipelineOp::kSendGrad).empty());
  EXPECT_TRUE(Microbatches(stages[p - 1], PipelineOp::kSendActivation).empty());
  EXPECT_TRUE(Microbatches(stages[p - 1], PipelineOp::kRecvGrad).empty());
  for (int s = 0; s + 1 < p; ++s) {
    const std::vector<int> sent = Microbatches(stages[s], PipelineOp::kSendActivation);
    EXPECT_EQ(sent.size(), static_cast<size_t>(m));
    EXPECT_EQ(sent, Microbatches(stages[s + 1], PipelineOp::kRecvActivation)) << "stage " << s;
    const std::vector<int> grads = Microbatches(stages[s + 1], PipelineOp::kSendGrad);
    EXPECT_EQ(grads.size(), static_cast<size_t>(m));
    EXPECT_EQ(grads, Microbatches(stages[s], PipelineOp::kRecvGrad)) << "stage " << s;
  }
}

TEST_P(ScheduleTest, CompletesWithEagerAndBlockingSends) {
  const auto [kind, p, m] = GetParam();
  const auto stages = AllStages(kind, p, m);
  EXPECT_EQ(Simulate(stages, /*rendezvous=*/false), "");
  EXPECT_EQ(Simulate(stages, /*rendezvous=*/true), "");
}

// 1F1B: w = min(p - s - 1, m) forwards before the first backward, and at
// most min(p - s, m) micro-batches stashed; GPipe stashes all m.
TEST_P(ScheduleTest, WarmupAndPeakStash) {
  const auto [kind, p, m] = GetParam();
  const auto stages = AllStages(kind, p, m);
  for (int s = 0; s < p; ++s) {
    const std::vector<PipelineAction>& a = stages[s];
    int forwards_before_backward = 0;
    for (const PipelineAction& x : a) {
      if (x.op == PipelineOp::kBackward) break;
      if (x.op == PipelineOp::kForward) ++forwards_before_backward;
    }
    if (kind == PipelineScheduleKind::kOneFOneB) {
      const int warmup = std::min(p - s - 1, m);
      EXPECT_EQ(forwards_before_backward, std::min(warmup + 1, m)) << ScheduleString(a);
      EXPECT_EQ(PeakInFlightMicrobatches(a), std::min(p - s, m)) << ScheduleString(a);
      EXPECT_LE(PeakInFlightMicrobatches(a), p);
    } else {
      EXPECT_EQ(forwards_before_backward, m);
      EXPECT_EQ(PeakInFlightMicrobatches(a), m);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, ScheduleTest,
                         ::testing::Combine(::testing::ValuesIn(kKinds),
                                            ::testing::Values(1, 2, 4),
                                            ::testing::Values(1, 2, 4, 8)),
                         [](const auto& info) {
                           return absl::StrCat(PipelineScheduleName(std::get<0>(info.param)),
                                               "_pp", std::get<1>(info.param), "_mb",
                                               std::get<2>(info.param));
                         });

TEST(PipelineScheduleTest, OneFOneBListsMatchMegatron) {
  // pp 4, 8 micro-batches: stage 1 warms up with 2 forwards.
  StatusOr<std::vector<PipelineAction>> s1 =
      BuildPipelineSchedule(PipelineScheduleKind::kOneFOneB, 1, 4, 4);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(ScheduleString(*s1),
            "RA0 F0 SA0 RA1 F1 SA1 RA2 F2 SA2 RG0 B0 RA3 SG0 F3 SA3 RG1 B1 SG1 "
            "RG2 B2 SG2 RG3 B3 SG3");
  StatusOr<std::vector<PipelineAction>> last =
      BuildPipelineSchedule(PipelineScheduleKind::kOneFOneB, 1, 2, 3);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(ScheduleString(*last), "RA0 F0 B0 RA1 SG0 F1 B1 RA2 SG1 F2 B2 SG2");
}

// The simulator itself: the naive 1F1B order where the upper stage sends its
// gradient before receiving the next activation deadlocks once Send blocks.
TEST(PipelineScheduleTest, SimulatorCatchesRendezvousDeadlock) {
  auto parse = [](const std::vector<std::pair<PipelineOp, int>>& ops) {
    std::vector<PipelineAction> out;
    for (const auto& [op, mb] : ops) out.push_back({op, mb});
    return out;
  };
  using P = PipelineOp;
  const std::vector<std::vector<PipelineAction>> naive = {
      parse({{P::kForward, 0}, {P::kSendActivation, 0}, {P::kForward, 1},
             {P::kSendActivation, 1}, {P::kRecvGrad, 0}, {P::kBackward, 0},
             {P::kRecvGrad, 1}, {P::kBackward, 1}}),
      parse({{P::kRecvActivation, 0}, {P::kForward, 0}, {P::kBackward, 0}, {P::kSendGrad, 0},
             {P::kRecvActivation, 1}, {P::kForward, 1}, {P::kBackward, 1},
             {P::kSendGrad, 1}})};
  EXPECT_EQ(Simulate(naive, /*rendezvous=*/false), "");
  EXPECT_THAT(Simulate(naive, /*rendezvous=*/true), HasSubstr("deadlock"));
}

TEST(PipelineScheduleTest, BubbleFraction) {
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(1, 8), 0.0);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(2, 1), 0.5);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(2, 8), 1.0 / 9);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 4), 3.0 / 7);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 8), 3.0 / 11);
}

TEST(PipelineScheduleTest, RejectsBadArguments) {
  auto build = [](int stage, int p, int m) {
    return BuildPipelineSchedule(PipelineScheduleKind::kOneFOneB, stage, p, m).status();
  };
  EXPECT_THAT(build(0, 0, 4).message(), HasSubstr("parallel.pp = 0"));
  EXPECT_THAT(build(2, 2, 4).message(), HasSubstr("stage 2 is out of range"));
  EXPECT_THAT(build(-1, 2, 4).message(), HasSubstr("parallel.pp = 2"));
  Status zero = build(0, 2, 0);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(zero.message(), HasSubstr("training.global_batch_size"));
}

std::vector<int> Counts(const StagePartition& p) {
  std::vector<int> out;
  for (int s = 0; s < p.num_stages(); ++s) out.push_back(p.stage(s).num_layers);
  return out;
}

TEST(StagePartitionTest, EvenSplitGivesExtrasToFirstStages) {
  auto five = StagePartition::Even(5, 2);
  ASSERT_TRUE(five.ok());
  EXPECT_EQ(Counts(*five), (std::vector<int>{3, 2}));
  EXPECT_EQ(five->Describe(), "stage 0: layers [0, 3) + embedding; stage 1: layers [3, 5) + head");
  auto seven = StagePartition::Even(7, 3);
  ASSERT_TRUE(seven.ok());
  EXPECT_EQ(Counts(*seven), (std::vector<int>{3, 2, 2}));
  EXPECT_EQ(seven->stage(2).first_layer, 5);
  EXPECT_EQ(seven->StageOfLayer(2), 0);
  EXPECT_EQ(seven->StageOfLayer(3), 1);
  EXPECT_EQ(seven->StageOfLayer(6), 2);
  auto even = StagePartition::Even(8, 4);
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(Counts(*even), (std::vector<int>{2, 2, 2, 2}));
  EXPECT_TRUE(even->stage(0).has_embedding && !even->stage(0).has_head);
  EXPECT_TRUE(even->stage(3).has_head && !even->stage(3).has_embedding);
  EXPECT_FALSE(even->stage(1).has_embedding || even->stage(1).has_head);
  auto one = StagePartition::Even(3, 1);
  ASSERT_TRUE(one.ok());
  EXPECT_TRUE(one->stage(0).has_embedding && one->stage(0).has_head);
  EXPECT_EQ(one->stage(0).num_layers, 3);
}

TEST(StagePartitionTest, ExplicitListAllowsEmptyEndStages) {
  auto p = StagePartition::Explicit(4, {0, 3, 1, 0});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->stage(1).first_layer, 0);
  EXPECT_EQ(p->stage(2).first_layer, 3);
  EXPECT_EQ(p->StageOfLayer(0), 1);
  EXPECT_EQ(p->StageOfLayer(3), 2);
  EXPECT_TRUE(p->stage(3).has_head);
}

TEST(StagePartitionTest, RejectsImpossibleSplits) {
  Status few = StagePartition::Even(3, 4).status();
  EXPECT_EQ(few.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(few.message(), HasSubstr("model.num_layers = 3"));
  EXPECT_THAT(few.message(), HasSubstr("parallel.pp = 4"));
  EXPECT_THAT(StagePartition::Even(3, 0).status().message(), HasSubstr("parallel.pp = 0"));
  EXPECT_THAT(StagePartition::Explicit(4, {2, 1}).status().message(),
              HasSubstr("sum to 3 but model.num_layers = 4"));
  EXPECT_THAT(StagePartition::Explicit(4, {2, 0, 2}).status().message(),
              HasSubstr("stage 1 gets 0 layers"));
  EXPECT_THAT(StagePartition::Explicit(4, {5, -1}).status().message(),
              HasSubstr("stage 1 gets -1 layers"));
  EXPECT_FALSE(StagePartition::Explicit(4, {}).ok());
}

}  // namespace
}  // namespace scalemoe
