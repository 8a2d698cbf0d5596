// Column- and row-parallel linear maps at TP 2 and 4, with and without
// sequence parallelism, against the single-rank map computed with the same
// ops (per-token scale vectors, a different path than the TP layers' fold):
// outputs and the gradients of the input, W, γ and u agree within 1e-12 in
// f64. The layers' own backward is checked by central differences at TP 1.
#include "parallel/tp_linear.h"

#include <functional>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "parallel/local_communicator.h"
#include "tests/parallel/tp_test_util.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using testing::Cols;
using testing::kTpTolerance;
using testing::RelDiff;
using testing::Rows;

constexpr int64_t kN = 8, kIn = 8, kOut = 4 * 3;
constexpr uint64_t kSeed = 11;
const ExecContext kCtx = ExecContext::Cpu();

enum class Kind { kColumn, kRow };

ParamSpec Spec(const char* name, Shape shape, ParamRole role, int split_dim) {
  ParamSpec s;
  s.name = name;
  s.shape = std::move(shape);
  s.role = role;
  s.init = InitSpec::Normal(1.0);
  s.layout.tp_split_dim = split_dim;
  return s;
}

// Whole tensors of one step: y = u ⊙ (W (γ ⊙ x)), gradients for Σ y ⊙ g.
struct Result {
  Tensor y, d_x, d_w, d_gamma, d_u;
};

// The single-rank map from a registry of one, with the same ops, per token.
Result Reference(const Tensor& x, const Tensor& g) {
  ParamRegistry reg;
  Param* w = reg.Create(Spec("lin.w", {kOut, kIn}, ParamRole::kLinear, -1));
  Param* gamma = reg.Create(Spec("lin.gamma", {kIn}, ParamRole::kInputNormScale, -1));
  Param* u = reg.Create(Spec("lin.u", {kOut}, ParamRole::kOutputNormScale, -1));
  SM_CHECK_OK(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
  Tensor xs = Tensor::Empty({kN, kIn}, DType::kF64), raw = Tensor::Empty({kN, kOut}, DType::kF64);
  Result r;
  r.y = Tensor::Empty({kN, kOut}, DType::kF64);
  ops::ScaleRowsCols(kCtx, x, Tensor(), gamma->value, xs);
  ops::Gemm(kCtx, xs, w->value, raw, {.trans_b = ops::Trans::kYes});
  ops::ScaleRowsCols(kCtx, raw, Tensor(), u->value, r.y);
  Tensor d_raw = Tensor::Empty({kN, kOut}, DType::kF64),
         d_xs = Tensor::Empty({kN, kIn}, DType::kF64);
  r.d_x = Tensor::Empty({kN, kIn}, DType::kF64);
  ops::ScaleRowsColsBackward(kCtx, raw, Tensor(), u->value, g, d_raw, Tensor(), u->grad);
  ops::Gemm(kCtx, d_raw, xs, w->grad, {.trans_a = ops::Trans::kYes, .beta = 1.0});
  ops::Gemm(kCtx, d_raw, w->value, d_xs);
  ops::ScaleRowsColsBackward(kCtx, x, Tensor(), gamma->value, d_xs, r.d_x, Tensor(), gamma->grad);
  r.d_w = w->grad.Clone();
  r.d_gamma = gamma->grad.Clone();
  r.d_u = u->grad.Clone();
  return r;
}

// One TP rank's step: registers the layer and its scale vectors (γ split
// with W's columns for a row map, replicated for a column map; u the other
// way round), feeds this rank's part of x and g, returns this rank's results.
StatusOr<Result> RunShard(Kind kind, Communicator& tp, SequenceParallel sp, const Tensor& x,
                          const Tensor& g) {
  const int r = tp.rank(), p = tp.size();
  const bool column = kind == Kind::kColumn, seq = sp == SequenceParallel::kOn;
  ParamRegistry reg(testing::TpCoords(tp));
  ParamSpec w_spec = Spec("lin.w", {kOut, kIn}, ParamRole::kLinear, -1);
  Param* w;
  std::unique_ptr<ColumnParallelLinear> col;
  std::unique_ptr<RowParallelLinear> row;
  if (column) {
    SM_ASSIGN_OR_RETURN(col, ColumnParallelLinear::Create(reg, w_spec, tp, sp));
    w = col->weight();
  } else {
    SM_ASSIGN_OR_RETURN(row, RowParallelLinear::Create(reg, w_spec, tp, sp));
    w = row->weight();
  }
  Param* gamma = reg.Create(Spec("lin.gamma", {kIn}, ParamRole::kInputNormScale, column ? -1 : 0));
  Param* u = reg.Create(Spec("lin.u", {kOut}, ParamRole::kOutputNormScale, column ? 0 : -1));
  SM_RETURN_IF_ERROR(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
  const TpLinearScales scales{gamma->value, gamma->grad, u->value, u->grad};
  Result out;
  if (column) {
    SM_RETURN_IF_ERROR(col->PrepareStep(kCtx, scales));
    out.y = Tensor::Empty({kN, kOut / p}, DType::kF64);
    SM_RETURN_IF_ERROR(col->Forward(kCtx, seq ? Rows(x, r, p) : x, out.y));
    out.d_x = Tensor::Empty({seq ? kN / p : kN, kIn}, DType::kF64);
    SM_RETURN_IF_ERROR(col->Backward(kCtx, Cols(g, r, p), out.d_x));
    SM_RETURN_IF_ERROR(col->FinishBackward(kCtx));
  } else {
    SM_RETURN_IF_ERROR(row->PrepareStep(kCtx, scales));
    out.y = Tensor::Empty({seq ? kN / p : kN, kOut}, DType::kF64);
    SM_RETURN_IF_ERROR(row->Forward(kCtx, Cols(x, r, p), out.y));
    out.d_x = Tensor::Empty({kN, kIn / p}, DType::kF64);
    SM_RETURN_IF_ERROR(row->Backward(kCtx, seq ? Rows(g, r, p) : g, out.d_x));
    SM_RETURN_IF_ERROR(row->FinishBackward(kCtx));
  }
  out.d_w = w->grad.Clone();
  out.d_gamma = gamma->grad.Clone();
  out.d_u = u->grad.Clone();
  return out;
}

// Each rank's results equal its slice of the single-rank reference.
void ExpectMatchesReference(Kind kind, int tp_size, SequenceParallel sp) {
  const Tensor x = testing::RandomTensor({kN, kIn}, 1);
  const Tensor g = testing::RandomTensor({kN, kOut}, 2);
  const Result ref = Reference(x, g);
  const bool column = kind == Kind::kColumn, seq = sp == SequenceParallel::kOn;
  Status s = FakeWorld().Run(tp_size, testing::TpGrid(tp_size), [&](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    SM_ASSIGN_OR_RETURN(Result got, RunShard(kind, tp, sp, x, g));
    const int r = tp.rank(), p = tp.size();
    const Tensor u_ref = ref.d_u.View({kOut, 1}), gamma_ref = ref.d_gamma.View({kIn, 1});
    if (column) {
      EXPECT_LT(RelDiff(got.y, Cols(ref.y, r, p)), kTpTolerance) << "y rank " << r;
      EXPECT_LT(RelDiff(got.d_x, seq ? Rows(ref.d_x, r, p) : ref.d_x), kTpTolerance) << "d_x";
      EXPECT_LT(RelDiff(got.d_w, Rows(ref.d_w, r, p)), kTpTolerance) << "d_w rank " << r;
      EXPECT_LT(RelDiff(got.d_gamma, ref.d_gamma), kTpTolerance) << "d_gamma rank " << r;
      EXPECT_LT(RelDiff(got.d_u, Rows(u_ref, r, p)), kTpTolerance) << "d_u rank " << r;
    } else {
      EXPECT_LT(RelDiff(got.y, seq ? Rows(ref.y, r, p) : ref.y), kTpTolerance) << "y rank " << r;
      EXPECT_LT(RelDiff(got.d_x, Cols(ref.d_x, r, p)), kTpTolerance) << "d_x rank " << r;
      EXPECT_LT(RelDiff(got.d_w, Cols(ref.d_w, r, p)), kTpTolerance) << "d_w rank " << r;
      EXPECT_LT(RelDiff(got.d_gamma, Rows(gamma_ref, r, p)), kTpTolerance) << "d_gamma";
      EXPECT_LT(RelDiff(got.d_u, ref.d_u), kTpTolerance) << "d_u rank " << r;
    }
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

class TpLinearTest : public ::testing::TestWithParam<int> {};

TEST_P(TpLinearTest, ColumnParallelMatchesSingleRank) {
  ExpectMatchesReference(Kind::kColumn, GetParam(), SequenceParallel::kOff);
}
TEST_P(TpLinearTest, ColumnParallelSequenceParallelMatchesSingleRank) {
  ExpectMatchesReference(Kind::kColumn, GetParam(), SequenceParallel::kOn);
}
TEST_P(TpLinearTest, RowParallelMatchesSingleRank) {
  ExpectMatchesReference(Kind::kRow, GetParam(), SequenceParallel::kOff);
}
TEST_P(TpLinearTest, RowParallelSequenceParallelMatchesSingleRank) {
  ExpectMatchesReference(Kind::kRow, GetParam(), SequenceParallel::kOn);
}
INSTANTIATE_TEST_SUITE_P(Tp, TpLinearTest, ::testing::Values(1, 2, 4));

// Central differences of Σ y ⊙ g with respect to x, W, γ and u at TP 1.
void GradCheck(Kind kind) {
  LocalCommunicator tp("tp[0]");
  const bool column = kind == Kind::kColumn;
  ParamRegistry reg;
  ParamSpec w_spec = Spec("lin.w", {kOut, kIn}, ParamRole::kLinear, -1);
  std::unique_ptr<ColumnParallelLinear> col;
  std::unique_ptr<RowParallelLinear> row;
  if (column) {
    col = *ColumnParallelLinear::Create(reg, w_spec, tp, SequenceParallel::kOff);
  } else {
    row = *RowParallelLinear::Create(reg, w_spec, tp, SequenceParallel::kOff);
  }
  Param* w = column ? col->weight() : row->weight();
  Param* gamma = reg.Create(Spec("lin.gamma", {kIn}, ParamRole::kInputNormScale, -1));
  Param* u = reg.Create(Spec("lin.u", {kOut}, ParamRole::kOutputNormScale, -1));
  ASSERT_TRUE(reg.Materialize(kSeed, DType::kF64, Device::kCPU).ok());
  const TpLinearScales scales{gamma->value, gamma->grad, u->value, u->grad};
  Tensor x = testing::RandomTensor({kN, kIn}, 3);
  const Tensor g = testing::RandomTensor({kN, kOut}, 4);
  Tensor y = Tensor::Empty({kN, kOut}, DType::kF64);
  auto forward = [&] {
    SM_CHECK_OK(column ? col->PrepareStep(kCtx, scales) : row->PrepareStep(kCtx, scales));
    SM_CHECK_OK(column ? col->Forward(kCtx, x, y) : row->Forward(kCtx, x, y));
  };
  const std::function<double()> loss = [&] {
    forward();
    double sum = 0;
    for (int64_t i = 0; i < y.numel(); ++i) sum += y.At(i) * g.At(i);
    return sum;
  };
  forward();
  Tensor d_x = Tensor::Empty({kN, kIn}, DType::kF64);
  ASSERT_TRUE((column ? col->Backward(kCtx, g, d_x) : row->Backward(kCtx, g, d_x)).ok());
  ASSERT_TRUE((column ? col->FinishBackward(kCtx) : row->FinishBackward(kCtx)).ok());
  EXPECT_LT(testing::GradError(loss, x, d_x), testing::kGradTolerance);
  EXPECT_LT(testing::GradError(loss, w->value, w->grad), testing::kGradTolerance);
  EXPECT_LT(testing::GradError(loss, gamma->value, gamma->grad), testing::kGradTolerance);
  EXPECT_LT(testing::GradError(loss, u->value, u->grad), testing::kGradTolerance);
}

TEST(TpLinearGradTest, ColumnParallelBackwardMatchesFiniteDifferences) { GradCheck(Kind::kColumn); }
TEST(TpLinearGradTest, RowParallelBackwardMatchesFiniteDifferences) { GradCheck(Kind::kRow); }

// Without scale vectors the weight is used as is and its gradient lands directly.
TEST(TpLinearTest, NoScaleVectorsUsesWeightDirectly) {
  Status s = FakeWorld().Run(2, testing::TpGrid(2), [](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    ParamRegistry reg(testing::TpCoords(tp));
    SM_ASSIGN_OR_RETURN(
        auto col, ColumnParallelLinear::Create(reg, Spec("w", {4, 2}, ParamRole::kLinear, -1), tp,
                                               SequenceParallel::kOff));
    SM_RETURN_IF_ERROR(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
    SM_RETURN_IF_ERROR(col->PrepareStep(kCtx));
    const Tensor x = Tensor::FromVector({1, 2}, {1, 0}, DType::kF64);
    Tensor y = Tensor::Empty({1, 2}, DType::kF64);
    SM_RETURN_IF_ERROR(col->Forward(kCtx, x, y));
    // x = e_0 picks column 0 of this rank's W rows.
    EXPECT_EQ(y.At(0), col->weight()->value.At(0));
    EXPECT_EQ(y.At(1), col->weight()->value.At(2));
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

// Sizes that do not split, registries sliced for another rank, and token
// counts that do not split under sequence parallelism are refused.
TEST(TpLinearTest, RefusesBadLayouts) {
  Status s = FakeWorld().Run(4, testing::TpGrid(4), [](ProcessGroups& pg) {
    Communicator& tp = pg.Get(Axis::kTp);
    ParamRegistry reg(testing::TpCoords(tp));
    auto bad_out = ColumnParallelLinear::Create(reg, Spec("a", {6, 4}, ParamRole::kLinear, -1), tp,
                                                SequenceParallel::kOff);
    EXPECT_EQ(bad_out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(bad_out.status().message().find("does not split over 4"), absl::string_view::npos);
    auto bad_in = RowParallelLinear::Create(reg, Spec("b", {4, 6}, ParamRole::kLinear, -1), tp,
                                            SequenceParallel::kOff);
    EXPECT_EQ(bad_in.status().code(), absl::StatusCode::kInvalidArgument);
    ParamRegistry whole;  // sliced for a world of one
    auto wrong = ColumnParallelLinear::Create(whole, Spec("c", {8, 4}, ParamRole::kLinear, -1), tp,
                                              SequenceParallel::kOff);
    EXPECT_NE(wrong.status().message().find("ShardCoords"), absl::string_view::npos);
    SM_ASSIGN_OR_RETURN(
        auto row, RowParallelLinear::Create(reg, Spec("d", {4, 8}, ParamRole::kLinear, -1), tp,
                                            SequenceParallel::kOn));
    SM_RETURN_IF_ERROR(reg.Materialize(kSeed, DType::kF64, Device::kCPU));
    SM_RETURN_IF_ERROR(row->PrepareStep(kCtx));
    Status odd =
        row->Forward(kCtx, Tensor::Zeros({3, 2}, DType::kF64), Tensor::Zeros({1, 4}, DType::kF64));
    EXPECT_NE(odd.message().find("divisible by tp"), absl::string_view::npos) << odd;
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace scalemoe
