#include "core/params.h"

#include "core/philox.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

ParamSpec Matrix(std::string name, int split_dim) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = {6, 4};
  s.role = ParamRole::kLinear;
  s.init = InitSpec::Normal(0.5);
  s.layout.tp_split_dim = split_dim;
  return s;
}

TEST(ParamRegistryTest, FlatBuffersHoldParamsInRegistrationOrder) {
  ParamRegistry reg;
  Param* a = reg.Create(Matrix("a", -1));
  ParamSpec g{"g", {4}, ParamRole::kInputNormScale, InitSpec::Ones(), {}};
  Param* b = reg.Create(g);
  ASSERT_TRUE(reg.Materialize(1, DType::kF32, Device::kCPU).ok());
  EXPECT_EQ(reg.total_local_numel(), 28);
  EXPECT_EQ(a->flat_offset, 0);
  EXPECT_EQ(b->flat_offset, 24);
  EXPECT_EQ(b->value.ToVector(), (std::vector<double>(4, 1.0)));
  EXPECT_EQ(reg.flat_values().At(24), 1.0);
  EXPECT_EQ(reg.Find("g"), b);
  EXPECT_EQ(reg.Find("nope"), nullptr);
}

// A matrix behind a scalar (a β) starts on a 16-byte boundary (f32); the
// padding before it is zero; matrices in a row stay back to back (gate|up's
// joined GEMM needs them so); vectors are never padded.
TEST(ParamRegistryTest, MatricesBehindVectorsStartAligned) {
  ParamRegistry reg;
  ParamSpec beta{"beta", {1}, ParamRole::kInputNormScale, InitSpec::Constant(2.0), {}};
  ParamSpec alpha{"alpha", {5}, ParamRole::kInputNormScale, InitSpec::Ones(), {}};
  Param* b = reg.Create(beta);
  Param* a = reg.Create(alpha);
  Param* gate = reg.Create(Matrix("gate", -1));
  Param* up = reg.Create(Matrix("up", -1));
  Param* tail = reg.Create({"tail", {3}, ParamRole::kInputNormScale, InitSpec::Ones(), {}});
  ASSERT_TRUE(reg.Materialize(1, DType::kF32, Device::kCPU).ok());
  EXPECT_EQ(b->flat_offset, 0);
  EXPECT_EQ(a->flat_offset, 1);
  EXPECT_EQ(gate->flat_offset, 8);  // 6 rounded up to kParamAlignment = 4 elements
  EXPECT_EQ(reinterpret_cast<uintptr_t>(gate->value.raw_data()) % 16, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(gate->grad.raw_data()) % 16, 0u);
  EXPECT_EQ(up->flat_offset, 32);
  EXPECT_EQ(tail->flat_offset, 56);
  EXPECT_EQ(reg.total_local_numel(), 59);
  EXPECT_EQ(reg.flat_values().At(6), 0.0);
  EXPECT_EQ(reg.flat_values().At(7), 0.0);
  EXPECT_EQ(reg.flat_grads().At(7), 0.0);
}

TEST(ParamRegistryTest, InitIsAPureFunctionOfSeedNameAndIndex) {
  ParamRegistry reg;
  Param* a = reg.Create(Matrix("layers.0.w", -1));
  ASSERT_TRUE(reg.Materialize(9, DType::kF64, Device::kCPU).ok());
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(a->value.At(i), 0.5 * PhiloxNormal(9, HashName("layers.0.w"), i));
  }
}

// A TP shard draws exactly its slice of the single-rank tensor.
TEST(ParamRegistryTest, ShardsAreSlicesOfTheWholeTensor) {
  for (int split_dim : {0, 1}) {
    ParamRegistry whole;
    Param* w = whole.Create(Matrix("w", split_dim));
    ASSERT_TRUE(whole.Materialize(3, DType::kF32, Device::kCPU).ok());
    for (int rank = 0; rank < 2; ++rank) {
      ParamRegistry shard(ShardCoords{.tp_rank = rank, .tp_size = 2});
      Param* s = shard.Create(Matrix("w", split_dim));
      ASSERT_TRUE(shard.Materialize(3, DType::kF32, Device::kCPU).ok());
      const int64_t len = s->local_shape[split_dim];
      Tensor expected = w->value.Narrow(split_dim, rank * len, len);
      EXPECT_EQ(s->value.ToVector(), expected.ToVector()) << "dim " << split_dim;
    }
  }
}

// Large parameters are filled by several host threads: the same bits as
// one thread, whole or sharded on either dim (uneven ranges: 3 threads).
TEST(ParamRegistryTest, ThreadedInitGivesTheSameBits) {
  auto big = [](int split_dim) {
    ParamSpec s = Matrix("big", split_dim);
    s.shape = {700, 412};  // 288,400 elements: 4 ranges of 2^16 or more
    return s;
  };
  for (int split_dim : {-1, 0, 1}) {
    std::vector<double> values[2];
    for (int threads : {1, 3}) {
      ParamRegistry reg(ShardCoords{.tp_rank = 1, .tp_size = 2});
      reg.set_init_threads(threads);
      reg.Create(big(split_dim));
      ASSERT_TRUE(reg.Materialize(11, DType::kF32, Device::kCPU).ok());
      values[threads == 1 ? 0 : 1] = reg.flat_values().ToVector();
    }
    ASSERT_EQ(values[0].size(), values[1].size());
    EXPECT_TRUE(values[0] == values[1]) << "split dim " << split_dim;
    EXPECT_NE(values[0].front(), values[0].back());
  }
}

TEST(ParamRegistryTest, ScaleVectorRoles) {
  EXPECT_TRUE(IsScaleVector(ParamRole::kInputNormScale));
  EXPECT_TRUE(IsScaleVector(ParamRole::kOutputNormScale));
  EXPECT_FALSE(IsScaleVector(ParamRole::kLinear));
  EXPECT_FALSE(IsTrainable(ParamRole::kExpertBias));
  EXPECT_STREQ(ParamRoleName(ParamRole::kOutputNormScale), "output_norm_scale");
}

TEST(ParamRegistryTest, ZeroGradsClearsTheFlatBuffer) {
  ParamRegistry reg;
  Param* a = reg.Create(Matrix("a", -1));
  ASSERT_TRUE(reg.Materialize(1, DType::kF32, Device::kCPU).ok());
  a->grad.Fill(3.0);
  EXPECT_EQ(reg.flat_grads().At(5), 3.0);
  reg.ZeroGrads();
  EXPECT_EQ(reg.flat_grads().At(5), 0.0);
}

}  // namespace
}  // namespace scalemoe
