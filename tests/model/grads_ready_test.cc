// FinishBackward reports finished gradient ranges for the gradient sync to
// start early: every element exactly once, the head first, the embedding
// last, and the gradients are the same with or without the callback.
#include <algorithm>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

Tensor Tokens(uint64_t stream, int64_t vocab) {
  Tensor t = Tensor::Empty({2, 5}, DType::kI32);
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<int32_t>()[i] = static_cast<int32_t>(PhiloxUniform(5, stream, i) * vocab);
  }
  return t;
}

std::vector<double> Gradients(bool with_callback,
                              std::vector<std::pair<int64_t, int64_t>>* ranges) {
  const config::RunConfig cfg = testing::TinyConfig(/*num_experts=*/4);
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  EXPECT_TRUE(registry.Materialize(7, DType::kF64, Device::kCPU).ok());
  const ExecContext ctx;
  Must(model.PrepareStep(ctx));
  Must(model.Forward(ctx, Tokens(1, 16), Tokens(2, 16)));
  Must(model.Backward(ctx, 1.0));
  if (with_callback) {
    Must(model.FinishBackward(ctx, [&](int64_t b, int64_t e) { ranges->emplace_back(b, e); }));
  } else {
    Must(model.FinishBackward(ctx));
  }
  return registry.flat_grads().ToVector();
}

TEST(GradsReadyTest, EveryGradientReportedOnceHeadFirstEmbeddingLast) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  const std::vector<double> with = Gradients(true, &ranges);
  const std::vector<double> without = Gradients(false, nullptr);
  EXPECT_EQ(with, without);
  ASSERT_GE(ranges.size(), 3u);  // head, 2 layers, embedding
  EXPECT_EQ(ranges.front().second, static_cast<int64_t>(with.size()));  // head: the end
  EXPECT_EQ(ranges.back().first, 0);                                     // embedding: the start
  std::vector<std::pair<int64_t, int64_t>> sorted = ranges;
  std::sort(sorted.begin(), sorted.end());
  int64_t next = 0;
  for (const auto& [b, e] : sorted) {
    EXPECT_EQ(b, next) << "gap or overlap before [" << b << ", " << e << ")";
    EXPECT_LT(b, e);
    next = e;
  }
  EXPECT_EQ(next, static_cast<int64_t>(with.size()));
  // Layers come last-first: reported ranges descend after the head.
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LT(ranges[i].first, ranges[i - 1].first);
}

}  // namespace
}  // namespace scalemoe
