#include "norm/scale_vector.h"

#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using Sv = config::ScaleVectorConfig;

ParamLayout SplitOnDim0() {
  ParamLayout layout;
  layout.tp_split_dim = 0;
  return layout;
}

// A TP-split γ holds only its slice: Compute and Backward touch exactly the
// local elements (the registry's buffer has no more).
TEST(ScaleVectorTest, SplitVectorWorksOnItsLocalSlice) {
  ParamRegistry registry(ShardCoords{.tp_rank = 1, .tp_size = 2});
  ScaleVector gamma(registry, "g", 8, ParamRole::kOutputNormScale, Sv::PLAIN, SplitOnDim0());
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  EXPECT_EQ(gamma.dim(), 4);
  EXPECT_EQ(gamma.global_dim(), 8);
  EXPECT_EQ(registry.total_local_numel(), 4);
  Tensor g = Tensor::Empty({gamma.dim()}, DType::kF64);
  Must(gamma.Compute(ExecContext{}, g));
  EXPECT_EQ(g.ToVector(), std::vector<double>(4, 1.0));
  Tensor d = Tensor::FromVector({4}, {1, 2, 3, 4}, DType::kF64);
  Must(gamma.Backward(ExecContext{}, d));
  EXPECT_EQ(registry.Find("g")->grad.ToVector(), (std::vector<double>{1, 2, 3, 4}));
}

TEST(ScaleVectorTest, MagnitudeDirectionGradients) {
  ParamRegistry registry;
  ScaleVector gamma(registry, "g", 3, ParamRole::kInputNormScale, Sv::MAGNITUDE_DIRECTION);
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  registry.Find("g.alpha")->value.CopyFrom(Tensor::FromVector({3}, {1, 2, 3}, DType::kF64));
  registry.Find("g.beta")->value.Fill(0.5);
  Tensor g = Tensor::Empty({3}, DType::kF64);
  Must(gamma.Compute(ExecContext{}, g));
  EXPECT_EQ(g.ToVector(), (std::vector<double>{0.5, 1.0, 1.5}));
  Must(gamma.Backward(ExecContext{}, Tensor::FromVector({3}, {1, 0, -1}, DType::kF64)));
  // dα = β·dγ, dβ = <α, dγ>.
  EXPECT_EQ(registry.Find("g.alpha")->grad.ToVector(), (std::vector<double>{0.5, 0, -0.5}));
  EXPECT_EQ(registry.Find("g.beta")->grad.ToVector(), (std::vector<double>{-2.0}));
}

// γ and its gradients from one rank holding the whole vector (f64).
struct WholeResult {
  std::vector<double> gamma, d_alpha;
  double d_beta = 0;
};

WholeResult Whole(Sv::Reparam reparam, const std::vector<double>& alpha, double beta,
                  const std::vector<double>& d_gamma) {
  const int64_t d = static_cast<int64_t>(alpha.size());
  ParamRegistry registry;
  ScaleVector v(registry, "u", d, ParamRole::kOutputNormScale, reparam);
  SM_CHECK_OK(registry.Materialize(1, DType::kF64, Device::kCPU));
  registry.Find("u.alpha")->value.CopyFrom(Tensor::FromVector({d}, alpha, DType::kF64));
  registry.Find("u.beta")->value.Fill(beta);
  Tensor g = Tensor::Empty({d}, DType::kF64);
  Must(v.Compute(ExecContext{}, g));
  Must(v.Backward(ExecContext{}, Tensor::FromVector({d}, d_gamma, DType::kF64)));
  return {g.ToVector(), registry.Find("u.alpha")->grad.ToVector(),
          registry.Find("u.beta")->grad.At(0)};
}

// Split over two TP ranks (an output-side u of a column-parallel map), each
// rank computes its slice of γ and of dα exactly, and its share of dβ: the
// shares sum to the whole vector's dβ (β is marked tp_partial_grad).
void CheckSplitEqualsWhole(Sv::Reparam reparam) {
  const std::vector<double> alpha = {0.5, 1.5, -2.0, 0.25, 1.0, 3.0};
  const std::vector<double> d_gamma = {1.0, -0.5, 0.25, 2.0, -1.5, 0.75};
  const double beta = 0.8;
  const WholeResult whole = Whole(reparam, alpha, beta, d_gamma);
  std::vector<double> beta_shares(2, 0.0);
  FakeWorld world;
  ASSERT_TRUE(world.Run(2, {.tp = 2, .edp = 2}, [&](ProcessGroups& g) -> Status {
    const int r = g.coords.tp;
    ParamRegistry registry(ShardCoords{.tp_rank = r, .tp_size = 2});
    ScaleVector v(registry, "u", 6, ParamRole::kOutputNormScale, reparam, SplitOnDim0(),
                  g.tp.get());
    SM_RETURN_IF_ERROR(registry.Materialize(1, DType::kF64, Device::kCPU));
    if (!registry.Find("u.beta")->spec.layout.tp_partial_grad) {
      return absl::InternalError("β of a split vector must be tp_partial_grad");
    }
    auto slice = [&](const std::vector<double>& x) {
      return std::vector<double>(x.begin() + 3 * r, x.begin() + 3 * r + 3);
    };
    registry.Find("u.alpha")->value.CopyFrom(Tensor::FromVector({3}, slice(alpha), DType::kF64));
    registry.Find("u.beta")->value.Fill(beta);
    Tensor gm = Tensor::Empty({3}, DType::kF64);
    Must(v.Compute(ExecContext{}, gm));
    Must(v.Backward(ExecContext{}, Tensor::FromVector({3}, slice(d_gamma), DType::kF64)));
    const std::vector<double> got_g = gm.ToVector();
    const std::vector<double> got_da = registry.Find("u.alpha")->grad.ToVector();
    for (int j = 0; j < 3; ++j) {
      EXPECT_NEAR(got_g[j], whole.gamma[3 * r + j], 1e-14) << "rank " << r << " γ " << j;
      EXPECT_NEAR(got_da[j], whole.d_alpha[3 * r + j], 1e-14) << "rank " << r << " dα " << j;
    }
    beta_shares[r] = registry.Find("u.beta")->grad.At(0);
    return absl::OkStatus();
  }).ok());
  EXPECT_NEAR(beta_shares[0] + beta_shares[1], whole.d_beta, 1e-13);
  EXPECT_NE(beta_shares[0], whole.d_beta);  // a share, not the whole
}

TEST(ScaleVectorTest, SplitMagnitudeDirectionEqualsWholeVector) {
  CheckSplitEqualsWhole(Sv::MAGNITUDE_DIRECTION);
}

TEST(ScaleVectorTest, SplitNormalizedMagnitudeDirectionEqualsWholeVector) {
  CheckSplitEqualsWhole(Sv::MAGNITUDE_DIRECTION_NORMALIZED);
}

TEST(ScaleVectorDeathTest, SplitNormalizedNeedsItsGroup) {
  EXPECT_DEATH(
      {
        ParamRegistry registry(ShardCoords{.tp_rank = 0, .tp_size = 2});
        ScaleVector gamma(registry, "g", 8, ParamRole::kOutputNormScale,
                          Sv::MAGNITUDE_DIRECTION_NORMALIZED, SplitOnDim0());
      },
      "needs the communicator");
}

}  // namespace
}  // namespace scalemoe
