#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/stage_partition.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

constexpr PipelineScheduleKind kKinds[] = {PipelineScheduleKind::kGPipe,
                                           PipelineScheduleKind::kOneFOneB};

std::vector<std::vector<PipelineAction>> AllStages(PipelineScheduleKind kind, int p, int m,
                                                   int v = 1) {
  std::vector<std::vector<PipelineAction>> stages;
  for (int s = 0; s < p; ++s) {
    StatusOr<std::vector<PipelineAction>> actions = BuildPipelineSchedule(kind, s, p, m, v);
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

// Where a point-to-point action of rank s (of p) goes: the peer rank and the
// message it carries, named by (gradient?, lower virtual stage of the
// boundary, micro-batch) — what the executor's tag encodes. Virtual stage of
// (rank s, chunk c) is c*p + s; without chunks that is the stage itself.
struct Message {
  int peer;
  std::tuple<bool, int, int> key;
};
Message Route(int s, int p, const PipelineAction& a) {
  const int vs = a.chunk * p + s;
  const int prev = (s + p - 1) % p, next = (s + 1) % p;
  switch (a.op) {
    case PipelineOp::kSendActivation: return {next, {false, vs, a.microbatch}};
    case PipelineOp::kRecvActivation: return {prev, {false, vs - 1, a.microbatch}};
    case PipelineOp::kSendGrad: return {prev, {true, vs - 1, a.microbatch}};
    case PipelineOp::kRecvGrad: return {next, {true, vs, a.microbatch}};
    default: SM_CHECK_MSG(false, "not a point-to-point action");
  }
  return {};
}

// Runs every rank's list against the others, messages matched by (peer,
// key) like tagged MPI messages. Eager: a Send never blocks (FakeWorld,
// small MPI messages). Rendezvous: a Send completes only together with the
// peer's matching Recv (large MPI messages), and each blocks until then.
// Returns "" when every rank finished and every message was received, else
// what went wrong.
std::string Simulate(const std::vector<std::vector<PipelineAction>>& stages, bool rendezvous) {
  const int p = static_cast<int>(stages.size());
  std::vector<size_t> pc(p, 0);
  // (sender, receiver, key) of messages in flight (eager mode).
  std::map<std::tuple<int, int, std::tuple<bool, int, int>>, int> wire;
  auto done = [&](int s) { return pc[s] == stages[s].size(); };
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < p; ++s) {
      if (done(s)) continue;
      const PipelineAction& a = stages[s][pc[s]];
      if (!IsSend(a.op) && !IsRecv(a.op)) {
        ++pc[s];
        progress = true;
        continue;
      }
      const Message msg = Route(s, p, a);
      if (!rendezvous && IsSend(a.op)) {
        ++wire[{s, msg.peer, msg.key}];
        ++pc[s];
        progress = true;
      } else if (!rendezvous) {
        auto it = wire.find({msg.peer, s, msg.key});
        if (it == wire.end() || it->second == 0) continue;
        --it->second;
        ++pc[s];
        progress = true;
      } else if (IsSend(a.op)) {
        if (done(msg.peer)) continue;
        const PipelineAction& b = stages[msg.peer][pc[msg.peer]];
        if (!IsRecv(b.op)) continue;
        const Message back = Route(msg.peer, p, b);
        if (back.peer != s || back.key != msg.key) continue;
        ++pc[s];
        ++pc[msg.peer];
        progress = true;
      }
    }
  }
  for (int s = 0; s < p; ++s) {
    if (!done(s)) {
      const PipelineAction& a = stages[s][pc[s]];
      return absl::StrCat("deadlock: stage ", s, " stuck at ", PipelineOpName(a.op), " ",
                          a.microbatch, " chunk ", a.chunk);
    }
  }
  for (const auto& [key, n] : wire) {
    if (n != 0) return absl::StrCat("stage ", std::get<0>(key), " sent unreceived messages");
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
  EXPECT_THAT(zero.message(), HasSubstr("train.global_batch_size"));
}

// Interleaved 1F1B: p ranks, v chunks each, m micro-batches.
class InterleavedScheduleTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {
 protected:
  void SetUp() override {
    std::tie(p_, v_, m_) = GetParam();
    m_ *= p_;  // the parameter is m / p
    stages_ = AllStages(PipelineScheduleKind::kInterleaved1F1B, p_, m_, v_);
  }
  // Megatron's forward and backward order of rank s (see the header).
  std::vector<PipelineAction> MegatronComputeOrder(int s) const {
    const int total = m_ * v_;
    const int warmup = std::min((p_ - s - 1) * 2 + (v_ - 1) * p_, total);
    auto mb = [&](int k) { return (k / (p_ * v_)) * p_ + k % p_; };
    auto f = [&](int k) { return PipelineAction{PipelineOp::kForward, mb(k), (k / p_) % v_}; };
    auto b = [&](int k) {
      return PipelineAction{PipelineOp::kBackward, mb(k), v_ - 1 - (k / p_) % v_};
    };
    std::vector<PipelineAction> out;
    for (int k = 0; k < warmup; ++k) out.push_back(f(k));
    for (int i = 0; i < total - warmup; ++i) {
      out.push_back(f(warmup + i));
      out.push_back(b(i));
    }
    for (int k = total - warmup; k < total; ++k) out.push_back(b(k));
    return out;
  }
  int p_ = 0, v_ = 0, m_ = 0;
  std::vector<std::vector<PipelineAction>> stages_;
};

// Every (chunk, micro-batch) runs Forward and Backward once, forward first;
// each Recv precedes the compute that reads it and each Send follows the
// compute producing it; only virtual stage 0 receives no activation and
// only the last virtual stage receives no gradient.
TEST_P(InterleavedScheduleTest, EveryChunkAndMicrobatchRunsOnceInDataOrder) {
  for (int s = 0; s < p_; ++s) {
    SCOPED_TRACE(absl::StrCat("rank ", s, ": ", ScheduleString(stages_[s])));
    std::map<std::tuple<PipelineOp, int, int>, int> pos;
    for (size_t i = 0; i < stages_[s].size(); ++i) {
      const PipelineAction& a = stages_[s][i];
      ASSERT_TRUE(a.chunk >= 0 && a.chunk < v_);
      ASSERT_TRUE(a.microbatch >= 0 && a.microbatch < m_);
      ASSERT_TRUE(pos.emplace(std::make_tuple(a.op, a.chunk, a.microbatch), i).second)
          << "repeats " << PipelineOpName(a.op) << " " << a.microbatch << "." << a.chunk;
    }
    size_t expected = 0;
    for (int c = 0; c < v_; ++c) {
      const bool first = s == 0 && c == 0, last = s == p_ - 1 && c == v_ - 1;
      expected += m_ * (2 + (first ? 0 : 2) + (last ? 0 : 2));
      for (int mb = 0; mb < m_; ++mb) {
        auto at = [&](PipelineOp op) { return pos.at({op, c, mb}); };
        auto has = [&](PipelineOp op) { return pos.count({op, c, mb}) == 1; };
        EXPECT_LT(at(PipelineOp::kForward), at(PipelineOp::kBackward));
        EXPECT_EQ(has(PipelineOp::kRecvActivation), !first);
        EXPECT_EQ(has(PipelineOp::kSendGrad), !first);
        EXPECT_EQ(has(PipelineOp::kSendActivation), !last);
        EXPECT_EQ(has(PipelineOp::kRecvGrad), !last);
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
    EXPECT_EQ(stages_[s].size(), expected);
  }
}

TEST_P(InterleavedScheduleTest, ComputeOrderIsMegatrons) {
  for (int s = 0; s < p_; ++s) {
    std::vector<PipelineAction> compute;
    for (const PipelineAction& a : stages_[s]) {
      if (a.op == PipelineOp::kForward || a.op == PipelineOp::kBackward) compute.push_back(a);
    }
    EXPECT_EQ(ScheduleString(compute), ScheduleString(MegatronComputeOrder(s))) << "rank " << s;
  }
}

TEST_P(InterleavedScheduleTest, CompletesWithEagerAndBlockingSends) {
  EXPECT_EQ(Simulate(stages_, /*rendezvous=*/false), "");
  EXPECT_EQ(Simulate(stages_, /*rendezvous=*/true), "");
}

// Peak stash: Megatron's warm-up forwards plus the first steady forward,
// at most all m*v (chunk, micro-batch) pairs.
TEST_P(InterleavedScheduleTest, PeakStash) {
  for (int s = 0; s < p_; ++s) {
    const int warmup = std::min((p_ - s - 1) * 2 + (v_ - 1) * p_, m_ * v_);
    EXPECT_EQ(PeakInFlightMicrobatches(stages_[s]), std::min(warmup + 1, m_ * v_))
        << "rank " << s;
  }
}

// Breaking one list must be caught: rank 1 posting its first receive last
// leaves its sender blocked (rendezvous) while rank 1 waits on messages
// that sender would send after it.
TEST_P(InterleavedScheduleTest, SimulatorCatchesBrokenList) {
  std::vector<std::vector<PipelineAction>> broken = stages_;
  std::vector<PipelineAction>& r1 = broken[1];
  auto it =
      std::find_if(r1.begin(), r1.end(), [](const PipelineAction& a) { return IsRecv(a.op); });
  ASSERT_NE(it, r1.end());
  const PipelineAction moved = *it;
  r1.erase(it);
  r1.push_back(moved);
  EXPECT_THAT(Simulate(broken, /*rendezvous=*/true), HasSubstr("deadlock"));
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, InterleavedScheduleTest,
                         ::testing::Combine(::testing::Values(2, 3, 4), ::testing::Values(2, 3),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           const int p = std::get<0>(info.param);
                           return absl::StrCat("pp", p, "_v", std::get<1>(info.param), "_mb",
                                               p * std::get<2>(info.param));
                         });

// A wider sweep than the parameterized suite: larger pipelines and more
// chunks still complete under blocking sends.
TEST(PipelineScheduleTest, InterleavedSweepCompletesWithBlockingSends) {
  for (int p = 2; p <= 8; ++p) {
    for (int v = 2; v <= 4; ++v) {
      for (int k = 1; k <= 4; ++k) {
        const auto stages = AllStages(PipelineScheduleKind::kInterleaved1F1B, p, k * p, v);
        EXPECT_EQ(Simulate(stages, /*rendezvous=*/true), "") << p << " " << v << " " << k * p;
      }
    }
  }
}

TEST(PipelineScheduleTest, InterleavedListsForTwoRanks) {
  // pp 2, 2 chunks, 2 micro-batches. Virtual stages: rank 0 chunk 0 -> rank
  // 1 chunk 0 -> rank 0 chunk 1 -> rank 1 chunk 1 (loss).
  auto r0 = BuildPipelineSchedule(PipelineScheduleKind::kInterleaved1F1B, 0, 2, 2, 2);
  auto r1 = BuildPipelineSchedule(PipelineScheduleKind::kInterleaved1F1B, 1, 2, 2, 2);
  ASSERT_TRUE(r0.ok() && r1.ok());
  // Rank 0 warms up with all 4 forwards; rank 1 with 2, then alternates.
  // A transfer sits where its producer finishes (one time unit per compute).
  EXPECT_EQ(ScheduleString(*r0),
            "F0 SA0 F1 SA1 RA0.1 F0.1 SA0.1 RA1.1 F1.1 SA1.1 RG0.1 B0.1 SG0.1 RG1.1 B1.1 SG1.1 "
            "RG0 B0 RG1 B1");
  EXPECT_EQ(ScheduleString(*r1),
            "RA0 F0 RA1 SA0 F1 RA0.1 SA1 F0.1 RA1.1 B0.1 SG0.1 F1.1 RG0 B1.1 SG1.1 B0 RG1 SG0 "
            "B1 SG1");
}

TEST(PipelineScheduleTest, InterleavedRefusals) {
  using K = PipelineScheduleKind;
  auto build = [](K kind, int p, int m, int v) {
    return BuildPipelineSchedule(kind, 0, p, m, v).status();
  };
  Status uneven = build(K::kInterleaved1F1B, 4, 6, 2);
  EXPECT_EQ(uneven.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(uneven.message(), HasSubstr("multiple of parallel.pp = 4"));
  EXPECT_THAT(uneven.message(), HasSubstr("got 6 micro-batches"));
  EXPECT_THAT(build(K::kInterleaved1F1B, 1, 4, 2).message(), HasSubstr("parallel.pp >= 2"));
  Status one_chunk = build(K::kInterleaved1F1B, 2, 4, 1);
  EXPECT_EQ(one_chunk.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one_chunk.message(), HasSubstr("parallel.virtual_stages >= 2"));
  for (K kind : kKinds) {
    Status chunks = build(kind, 2, 4, 2);
    EXPECT_EQ(chunks.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(chunks.message(), HasSubstr("parallel.virtual_stages = 2"));
  }
  EXPECT_STREQ(PipelineScheduleName(K::kInterleaved1F1B), "interleaved-1f1b");
}

TEST(PipelineScheduleTest, InterleavedBubbleFraction) {
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 8, 2), 3.0 / 19);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(2, 4, 3), 1.0 / 13);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(1, 4, 2), 0.0);
  EXPECT_DOUBLE_EQ(PipelineBubbleFraction(4, 8, 1), PipelineBubbleFraction(4, 8));
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
