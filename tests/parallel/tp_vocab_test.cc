// Vocab-parallel embedding and cross-entropy at TP 2 and 4 (embedding also
// under sequence parallelism) against ops::EmbeddingLookup/-Backward and
// ops::CrossEntropy on the gathered table/logits; the TP shard of a split
// parameter is the exact slice of the single-rank one; vocabularies that do
// not split are refused.
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

TEST(TpEmbeddingTest, RefusesOutOfVocabularyTokens) {
  LocalCommunicator tp("tp[0]");
  ParamRegistry reg;
  auto embed = *VocabParallelEmbedding::Create(reg, TableSpec(), tp, SequenceParallel::kOff);
  ASSERT_TRUE(reg.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  Status s = embed->Forward(kCtx, Tokens({1, 8}), Tensor::Empty({2, kDim}, DType::kF64));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token 8 at position 1"), absl::string_view::npos) << s;
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
  EXPECT_NE(bad_target.message().find("target 9 at row 1"), absl::string_view::npos) << bad_target;
}

}  // namespace
}  // namespace scalemoe
