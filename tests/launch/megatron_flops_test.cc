// CountMegatronFlops against the hand counts in the GPU presets' comments
// and against the model's own count of its registered matmul weights.
#include "launch/megatron_flops.h"

#include <string>
#include <vector>

#include "core/params.h"
#include "gtest/gtest.h"
#include "launch/config.h"
#include "model/model.h"

namespace scalemoe {
namespace {

config::RunConfig Load(const std::string& preset, const std::vector<std::string>& sets = {}) {
  StatusOr<config::RunConfig> cfg = LoadConfig("configs/" + preset + ".textproto", sets);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return cfg.ok() ? *cfg : config::RunConfig();
}

TEST(MegatronFlopsTest, Gpu125mMatchesThePresetsHandCount) {
  const MegatronFlops f = CountMegatronFlops(Load("gpu_moe_125m"));
  EXPECT_EQ(f.active_params, 124'403'712);
  EXPECT_EQ(f.total_params, 25'165'824 + 12 * (2'371'584 + 16 * 2'949'120));  // 619.9M
  EXPECT_DOUBLE_EQ(f.flops_per_token, 6.0 * 124'403'712 + 12.0 * 12 * 1024 * 768);
}

TEST(MegatronFlopsTest, FineGrainedMatchesThePresetsHandCount) {
  // First layer dense, 64 routed experts top-8, one shared expert, GQA.
  const MegatronFlops f = CountMegatronFlops(Load("gpu_finegrained_64e"));
  EXPECT_EQ(f.active_params, 114'180'096);
  EXPECT_EQ(f.total_params, 25'165'824 + 6'291'456 + 11 * 40'550'400);  // 477.5M
  EXPECT_DOUBLE_EQ(f.flops_per_token, 6.0 * 114'180'096 + 12.0 * 12 * 1024 * 768);
}

TEST(MegatronFlopsTest, UntiedEmbeddingsCountTheHeadOnlyInFlops) {
  const MegatronFlops tied = CountMegatronFlops(Load("gpu_moe_125m"));
  const MegatronFlops untied =
      CountMegatronFlops(Load("gpu_moe_125m", {"model.tied_embeddings=false"}));
  EXPECT_EQ(untied.active_params, tied.active_params);
  EXPECT_EQ(untied.total_params, tied.total_params + 32768 * 768);
}

// The model counts its registered matmul weights (router, linears, experts,
// head or tied embedding) independently of the config arithmetic above.
TEST(MegatronFlopsTest, AgreesWithTheModelsRegisteredWeights) {
  for (const std::string preset : {"tiny_cpu", "gpu_moe_125m", "gpu_finegrained_64e"}) {
    const config::RunConfig cfg = Load(preset);
    ParamRegistry registry;
    const MoeTransformer model(registry, cfg);
    EXPECT_DOUBLE_EQ(CountMegatronFlops(cfg).flops_per_token, model.Counts().train_flops_per_token)
        << preset;
  }
}

}  // namespace
}  // namespace scalemoe
