// Vocab-parallel embedding and cross-entropy at TP 2 and 4 (embedding also
// under sequence parallelism) against ops::EmbeddingLookup/-Backward and
// ops::CrossEntropy on the gathered table/logits; the TP shard of a split
// parameter is the exact slice of the single-rank one; vocabularies that do
// not split are refused.
#include <cmath>
#include <functional>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "parallel/local_communicator.h"
#include "parallel/tp_cross_entropy.h"
#include "parallel/tp_embedding.h"
#include "tests/parallel/tp_test_util.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using testing::Cols;
using testing::kTpTolerance;
using testing::RelDiff;
using testing::Rows;

constexpr int64_t kVocab = 8, kDim = 3;
constexpr uint64_t kSeed = 5;
const ExecContext kCtx = ExecContext::Cpu();

ParamSpec Spec(const char* name, Shape shape, ParamRole role = ParamRole::kLinear) {
  ParamSpec s;
  s.name = name;
  s.shape = std::move(shape);
  s.role = role;
  s.init = InitSpec::Normal(1.0);
  return s;
}

ParamSpec TableSpec(int64_t vocab = kVocab) {
  return Spec("embed.weight", {vocab, kDim}, ParamRole::kEmbedding);
}

Tensor Tokens(const std::vector<double>& ids) {
  return Tensor::FromVector({static_cast<int64_t>(ids.size())}, ids, DType::kI32);
}

// Every rank of every TP size draws exactly its rows / columns of the
// single-rank tensor from (seed, name, global index).
TEST(TpShardTest, RegistryShardIsSliceOfWholeParameter) {
  ParamRegistry whole;
  ParamSpec rows = Spec("w_rows", {8, 4});
  ParamSpec cols = Spec("w_cols", {4, 8});
  rows.layout.tp_split_dim = 0;
  cols.layout.tp_split_dim = 1;
  const Param* w_rows = whole.Create(rows);
  const Param* w_cols = whole.Create(cols);
  ASSERT_TRUE(whole.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  for (int tp : {2, 4}) {
    for (int r = 0; r < tp; ++r) {
      ParamRegistry shard({.tp_rank = r, .tp_size = tp});
      const Param* s_rows = shard.Create(rows);
      const Param* s_cols = shard.Create(cols);
      ASSERT_TRUE(shard.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
      EXPECT_EQ(s_rows->value.ToVector(), Rows(w_rows->value, r, tp).ToVector());
      EXPECT_EQ(s_cols->value.ToVector(), Cols(w_cols->value, r, tp).ToVector());
    }
  }
}

TEST(TpShardTest, RegistryShardIsSliceAtTp4AndEtp) {
  ParamRegistry whole;
  ParamSpec dense = Spec("dense", {4, 8});
  ParamSpec expert = Spec("expert", {8, 4}, ParamRole::kExpertLinear);
  dense.layout.tp_split_dim = 1;
  expert.layout.tp_split_dim = 0;
  expert.layout.tp_group = TpGroup::kExpert;
  const Param* w_dense = whole.Create(dense);
  const Param* w_expert = whole.Create(expert);
  ASSERT_TRUE(whole.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  for (int r = 0; r < 4; ++r) {
    // Dense split over tp 4; the expert one over etp 2 (rank r % 2).
    ParamRegistry shard({.tp_rank = r, .tp_size = 4, .etp_rank = r % 2, .etp_size = 2});
    const Param* s_dense = shard.Create(dense);
    const Param* s_expert = shard.Create(expert);
    ASSERT_TRUE(shard.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
    EXPECT_EQ(s_dense->value.ToVector(), Cols(w_dense->value, r, 4).ToVector());
    EXPECT_EQ(s_expert->value.ToVector(), Rows(w_expert->value, r % 2, 2).ToVector());
  }
}

// ---------------------------------------------------------------- embedding

struct EmbedResult {
  Tensor out, d_weight;
};

// The single-rank embedding with ops::EmbeddingLookup / EmbeddingBackward.
EmbedResult EmbedReference(const Tensor& tokens, const Tensor& g) {
  ParamRegistry reg;
  Param* w = reg.Create(TableSpec());
  SM_CHECK_OK(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
  EmbedResult r;
  r.out = Tensor::Empty({tokens.numel(), kDim}, DType::kF64);
  ops::EmbeddingLookup(kCtx, tokens, w->value, r.out);
  ops::EmbeddingBackward(kCtx, tokens, g, w->grad);
  r.d_weight = w->grad.Clone();
  return r;
}

class TpEmbeddingTest : public ::testing::TestWithParam<std::tuple<int, SequenceParallel>> {};

TEST_P(TpEmbeddingTest, MatchesSingleRankLookup) {
  const auto [tp_size, sp] = GetParam();
  const bool seq = sp == SequenceParallel::kOn;
  // Repeats and every shard's tokens, 8 tokens (divisible by 4 for SP).
  const Tensor tokens = Tokens({7, 0, 3, 3, 5, 1, 6, 3});
  const Tensor g = testing::RandomTensor({8, kDim}, 9);
  const EmbedResult ref = EmbedReference(tokens, g);
  Status s = FakeWorld().Run(tp_size, testing::TpGrid(tp_size), [&](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    const int r = tp.rank(), p = tp.size();
    ParamRegistry reg(testing::TpCoords(tp));
    SM_ASSIGN_OR_RETURN(auto embed, VocabParallelEmbedding::Create(reg, TableSpec(), tp, sp));
    SM_RETURN_IF_ERROR(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
    EXPECT_EQ(embed->shard().start, r * kVocab / p);
    Tensor out = Tensor::Empty({seq ? 8 / p : 8, kDim}, DType::kF64);
    SM_RETURN_IF_ERROR(embed->Forward(kCtx, tokens, out));
    SM_RETURN_IF_ERROR(embed->Backward(kCtx, seq ? Rows(g, r, p) : g));
    EXPECT_LT(RelDiff(out, seq ? Rows(ref.out, r, p) : ref.out), kTpTolerance) << "rank " << r;
    EXPECT_LT(RelDiff(embed->weight()->grad, Rows(ref.d_weight, r, p)), kTpTolerance)
        << "rank " << r;
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(Tp, TpEmbeddingTest,
                         ::testing::Combine(::testing::Values(1, 2, 4),
                                            ::testing::Values(SequenceParallel::kOff,
                                                              SequenceParallel::kOn)));

TEST(TpEmbeddingGradTest, BackwardMatchesFiniteDifferences) {
  LocalCommunicator tp("tp[0]");
  ParamRegistry reg;
  auto embed = *VocabParallelEmbedding::Create(reg, TableSpec(), tp, SequenceParallel::kOff);
  ASSERT_TRUE(reg.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  const Tensor tokens = Tokens({2, 5, 2, 7});
  const Tensor g = testing::RandomTensor({4, kDim}, 10);
  Tensor out = Tensor::Empty({4, kDim}, DType::kF64);
  const std::function<double()> loss = [&] {
    SM_CHECK_OK(embed->Forward(kCtx, tokens, out));
    double sum = 0;
    for (int64_t i = 0; i < out.numel(); ++i) sum += out.At(i) * g.At(i);
    return sum;
  };
  loss();
  ASSERT_TRUE(embed->Backward(kCtx, g).ok());
  Param* w = embed->weight();
  EXPECT_LT(testing::GradError(loss, w->value, w->grad), testing::kGradTolerance);
}

// Out-of-vocabulary ids are counted on the device during Forward (which
// neither reads the host nor reads outside the table: such a token gets a
// zero row) and reported by CheckTokens, naming the layer.
TEST(TpEmbeddingTest, ReportsOutOfVocabularyTokens) {
  LocalCommunicator tp("tp[0]");
  ParamRegistry reg;
  auto embed = *VocabParallelEmbedding::Create(reg, TableSpec(), tp, SequenceParallel::kOff);
  ASSERT_TRUE(reg.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  const ExecContext ctx = ExecContext::Cpu();
  Tensor out = Tensor::Empty({3, kDim}, DType::kF64);
  const int64_t reads = ctx.counters().host_reads;
  ASSERT_TRUE(embed->Forward(ctx, Tokens({1, 8, -2}), out).ok());
  EXPECT_EQ(ctx.counters().host_reads, reads);
  for (int64_t j = 0; j < kDim; ++j) {
    EXPECT_EQ(out.At(kDim + j), 0.0);
    EXPECT_EQ(out.At(2 * kDim + j), 0.0);
  }
  Status s = embed->CheckTokens(ctx);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("VocabParallelEmbedding(embed.weight): 2 of the last Forward's "
                             "tokens are outside the vocabulary [0, 8)"),
            absl::string_view::npos)
      << s;
  ASSERT_TRUE(embed->Forward(ctx, Tokens({1, 7, 0}), out).ok());
  EXPECT_TRUE(embed->CheckTokens(ctx).ok());
}

// ---------------------------------------------------------------- cross-entropy

class TpCrossEntropyTest : public ::testing::TestWithParam<int> {};

TEST_P(TpCrossEntropyTest, MatchesCrossEntropyOnGatheredLogits) {
  const int tp_size = GetParam();
  constexpr int64_t kN = 6;
  // Large offsets make the row max matter (a wrong max overflows exp).
  const Tensor logits = testing::RandomTensor({kN, kVocab}, 12, 3.0, DType::kF64, 40.0);
  const Tensor targets = Tokens({0, 7, 3, 4, 4, 1});
  Tensor d_ref = Tensor::Empty({kN, kVocab}, DType::kF64);
  Tensor loss_tensor = Tensor::Empty({1}, DType::kF64);
  ops::CrossEntropy(kCtx, logits, targets, d_ref, loss_tensor);
  const double loss_ref = loss_tensor.At(0);
  Status s = FakeWorld().Run(tp_size, testing::TpGrid(tp_size), [&](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    const int r = tp.rank(), p = tp.size();
    SM_ASSIGN_OR_RETURN(VocabParallelCrossEntropy ce,
                        VocabParallelCrossEntropy::Create(kVocab, tp));
    Tensor d_logits = Tensor::Empty({kN, kVocab / p}, DType::kF64);
    SM_ASSIGN_OR_RETURN(double loss, ce.Forward(kCtx, Cols(logits, r, p), targets, d_logits));
    EXPECT_NEAR(loss, loss_ref, kTpTolerance * std::abs(loss_ref)) << "rank " << r;
    EXPECT_LT(RelDiff(d_logits, Cols(d_ref, r, p)), kTpTolerance) << "rank " << r;
    // Without d_logits only the loss is computed.
    SM_ASSIGN_OR_RETURN(double again, ce.Forward(kCtx, Cols(logits, r, p), targets, Tensor()));
    EXPECT_EQ(again, loss);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

INSTANTIATE_TEST_SUITE_P(Tp, TpCrossEntropyTest, ::testing::Values(1, 2, 4));

TEST(TpCrossEntropyTest, F32MatchesF64Closely) {
  Status s = FakeWorld().Run(2, testing::TpGrid(2), [](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    SM_ASSIGN_OR_RETURN(VocabParallelCrossEntropy ce,
                        VocabParallelCrossEntropy::Create(kVocab, tp));
    const Tensor logits = Cols(testing::RandomTensor({4, kVocab}, 13), tp.rank(), 2);
    const Tensor targets = Tokens({1, 6, 2, 5});
    Tensor d32 = Tensor::Empty({4, kVocab / 2}, DType::kF32);
    Tensor l32 = Tensor::Empty({4, kVocab / 2}, DType::kF32);
    l32.CopyFrom(logits);
    SM_ASSIGN_OR_RETURN(double loss64, ce.Forward(kCtx, logits, targets, Tensor()));
    SM_ASSIGN_OR_RETURN(double loss32, ce.Forward(kCtx, l32, targets, d32));
    EXPECT_NEAR(loss32, loss64, 1e-5);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(TpCrossEntropyGradTest, BackwardMatchesFiniteDifferences) {
  LocalCommunicator tp("tp[0]");
  auto ce = *VocabParallelCrossEntropy::Create(kVocab, tp);
  Tensor logits = testing::RandomTensor({5, kVocab}, 14);
  const Tensor targets = Tokens({3, 0, 7, 7, 2});
  Tensor d_logits = Tensor::Empty({5, kVocab}, DType::kF64);
  ASSERT_TRUE(ce.Forward(kCtx, logits, targets, d_logits).ok());
  const std::function<double()> loss = [&] { return *ce.Forward(kCtx, logits, targets, Tensor()); };
  EXPECT_LT(testing::GradError(loss, logits, d_logits), testing::kGradTolerance);
}

// ---------------------------------------------------------------- refusals

TEST(TpVocabTest, RefusesVocabularyNotDivisibleByTp) {
  StatusOr<VocabShard> shard = ShardVocab(10, 0, 4);
  EXPECT_EQ(shard.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(shard.status().message().find("pad model.vocab_size to a multiple of 4"),
            absl::string_view::npos)
      << shard.status();
  Status s = FakeWorld().Run(4, testing::TpGrid(4), [](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    ParamRegistry reg(testing::TpCoords(tp));
    auto embed = VocabParallelEmbedding::Create(reg, TableSpec(10), tp, SequenceParallel::kOff);
    EXPECT_EQ(embed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(embed.status().message().find("vocabulary of 10 tokens"), absl::string_view::npos);
    EXPECT_EQ(reg.params().size(), 0u);  // refused before registering
    auto ce = VocabParallelCrossEntropy::Create(10, tp);
    EXPECT_EQ(ce.status().code(), absl::StatusCode::kInvalidArgument);
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(TpVocabTest, RefusesBadLogitsAndTargets) {
  LocalCommunicator tp("tp[0]");
  auto ce = *VocabParallelCrossEntropy::Create(kVocab, tp);
  const Tensor logits = testing::RandomTensor({2, kVocab}, 15);
  Status wrong_width =
      ce.Forward(kCtx, testing::RandomTensor({2, 4}, 15), Tokens({0, 1}), Tensor()).status();
  EXPECT_EQ(wrong_width.code(), absl::StatusCode::kInvalidArgument) << wrong_width;
  Status bad_target = ce.Forward(kCtx, logits, Tokens({0, 9}), Tensor()).status();
  EXPECT_EQ(bad_target.code(), absl::StatusCode::kInvalidArgument) << bad_target;
  EXPECT_NE(bad_target.message().find("VocabParallelCrossEntropy: 1 of the last Forward's "
                                      "targets are outside the vocabulary [0, 8)"),
            absl::string_view::npos)
      << bad_target;
  // The device form reports it through CheckTargets.
  Tensor loss = Tensor::Empty({1}, DType::kF64);
  ASSERT_TRUE(ce.Forward(kCtx, logits, Tokens({-1, 3}), Tensor(), loss).ok());
  EXPECT_EQ(ce.CheckTargets(kCtx).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(ce.Forward(kCtx, logits, Tokens({0, 3}), Tensor(), loss).ok());
  EXPECT_TRUE(ce.CheckTargets(kCtx).ok());
}

// The device form keeps the loss on the device: no host read.
TEST_P(TpCrossEntropyTest, DeviceLossWithoutHostReads) {
  const int tp_size = GetParam();
  constexpr int64_t kN = 6;
  const Tensor logits = testing::RandomTensor({kN, kVocab}, 16, 2.0);
  const Tensor targets = Tokens({5, 1, 0, 7, 2, 2});
  Tensor loss_tensor = Tensor::Empty({1}, DType::kF64);
  ops::CrossEntropy(kCtx, logits, targets, Tensor(), loss_tensor);
  const double loss_ref = loss_tensor.At(0);
  Status s = FakeWorld().Run(tp_size, testing::TpGrid(tp_size), [&](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    const ExecContext ctx = ExecContext::Cpu();
    SM_ASSIGN_OR_RETURN(VocabParallelCrossEntropy ce,
                        VocabParallelCrossEntropy::Create(kVocab, tp));
    Tensor loss = Tensor::Empty({1}, DType::kF64);
    Tensor d_logits = Tensor::Empty({kN, kVocab / tp.size()}, DType::kF64);
    const Tensor shard = Cols(logits, tp.rank(), tp.size());
    SM_RETURN_IF_ERROR(ce.Forward(ctx, shard, targets, d_logits, loss));
    EXPECT_EQ(ctx.counters().host_reads, 0);
    EXPECT_NEAR(loss.At(0), loss_ref, kTpTolerance * std::abs(loss_ref));
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

// ---------------------------------------------------------------- vocab-parallel ops

// The ops against a direct f64 reference on one shard [start, start + V_local)
// of a vocabulary of 12: targets inside, before and after the shard.
TEST(VocabOpsTest, ShardStatisticsLossAndGradientMatchReference) {
  constexpr int64_t kN = 5, kLocal = 4, kStart = 4;
  const Tensor logits = testing::RandomTensor({kN, kLocal}, 21, 2.0, DType::kF64, 5.0);
  const Tensor targets = Tokens({4, 7, 0, 11, 5});
  Tensor row_max = Tensor::Empty({kN}, DType::kF64);
  Tensor stats = Tensor::Empty({2, kN}, DType::kF64);
  Tensor loss = Tensor::Empty({1}, DType::kF64);
  Tensor d = Tensor::Empty({kN, kLocal}, DType::kF64);
  ops::VocabRowMax(kCtx, logits, row_max);
  ops::VocabSoftmaxStats(kCtx, logits, targets, kStart, row_max, stats);
  ops::VocabCrossEntropyLoss(kCtx, row_max, stats, loss);
  ops::VocabCrossEntropyBackward(kCtx, logits, targets, kStart, row_max, stats, d);
  double want_loss = 0;
  for (int64_t n = 0; n < kN; ++n) {
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < kLocal; ++v) mx = std::max(mx, logits.At(n * kLocal + v));
    for (int64_t v = 0; v < kLocal; ++v) sum += std::exp(logits.At(n * kLocal + v) - mx);
    const int64_t t = static_cast<int64_t>(targets.At(n)) - kStart;
    const double target = t >= 0 && t < kLocal ? logits.At(n * kLocal + t) : 0.0;
    EXPECT_EQ(row_max.At(n), mx);
    EXPECT_NEAR(stats.At(n), sum, 1e-15 * sum);
    EXPECT_EQ(stats.At(kN + n), target);
    want_loss += (std::log(sum) + mx - target) / kN;
    for (int64_t v = 0; v < kLocal; ++v) {
      const double p = std::exp(logits.At(n * kLocal + v) - mx) / sum;
      EXPECT_NEAR(d.At(n * kLocal + v), (p - (v == t ? 1.0 : 0.0)) / kN, 1e-15) << n << "," << v;
    }
  }
  EXPECT_NEAR(loss.At(0), want_loss, 1e-14 * std::abs(want_loss));
  // bf16 logits: computed in f32/f64 from the rounded values.
  Tensor l16 = Tensor::Empty({kN, kLocal}, DType::kBF16);
  l16.CopyFrom(logits);
  Tensor rounded = Tensor::Empty({kN, kLocal}, DType::kF64);
  rounded.CopyFrom(l16);
  Tensor max16 = Tensor::Empty({kN}, DType::kF64), stats16 = Tensor::Empty({2, kN}, DType::kF64);
  Tensor d16 = Tensor::Empty({kN, kLocal}, DType::kBF16);
  ops::VocabRowMax(kCtx, l16, max16);
  ops::VocabSoftmaxStats(kCtx, l16, targets, kStart, max16, stats16);
  ops::VocabCrossEntropyBackward(kCtx, l16, targets, kStart, max16, stats16, d16);
  ops::VocabRowMax(kCtx, rounded, row_max);
  ops::VocabSoftmaxStats(kCtx, rounded, targets, kStart, row_max, stats);
  ops::VocabCrossEntropyBackward(kCtx, rounded, targets, kStart, row_max, stats, d);
  EXPECT_EQ(max16.ToVector(), row_max.ToVector());
  EXPECT_EQ(stats16.ToVector(), stats.ToVector());
  for (int64_t i = 0; i < d.numel(); ++i) EXPECT_NEAR(d16.At(i), d.At(i), 1e-3) << i;
}

TEST(VocabOpsTest, ShardRowsAndOutOfRangeCount) {
  const Tensor tokens = Tokens({0, 3, 4, 7, 8, -1, 5});
  Tensor rows = Tensor::Empty({7}, DType::kI32);
  ops::VocabShardRows(kCtx, tokens, 4, 4, rows);
  EXPECT_EQ(rows.ToVector(), (std::vector<double>{-1, -1, 0, 3, -1, -1, 1}));
  ops::VocabShardRows(kCtx, tokens, 0, 4, rows);
  EXPECT_EQ(rows.ToVector(), (std::vector<double>{0, 3, -1, -1, -1, -1, -1}));
  Tensor count = Tensor::Empty({1}, DType::kI64);
  ops::CountOutOfRange(kCtx, tokens, 0, 8, count);
  EXPECT_EQ(count.At(0), 2);  // 8 and -1
  ops::CountOutOfRange(kCtx, tokens, 0, 9, count);
  EXPECT_EQ(count.At(0), 1);
  ops::CountOutOfRange(kCtx, Tensor::Empty({0}, DType::kI32), 0, 8, count);
  EXPECT_EQ(count.At(0), 0);
}

}  // namespace
}  // namespace scalemoe
