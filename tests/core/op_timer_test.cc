// The op timer (core/op_timer.h): off, ops leave no record; on, each ops::
// call is counted once under its name and category, and Collect starts afresh.
#include "core/op_timer.h"

#include <string>

#include "core/context.h"
#include "core/ops.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

TEST(OpTimerTest, CountsOpsOnlyWhileEnabled) {
  const ExecContext ctx = ExecContext::Cpu();
  Tensor x = ctx.Zeros({1 << 16}, DType::kF32);
  Tensor y = ctx.Zeros({1 << 16}, DType::kF32);
  op_timer::SetEnabled(false);
  op_timer::Collect();
  ops::Scale(ctx, 2.0, x);
  EXPECT_TRUE(op_timer::Collect().empty());

  op_timer::SetEnabled(true);
  ops::Scale(ctx, 2.0, x);
  ops::Scale(ctx, 2.0, x);
  ops::Axpy(ctx, 1.0, x, y);
  op_timer::SetEnabled(false);
  ops::Axpy(ctx, 1.0, x, y);  // after switching off: not counted
  const std::vector<op_timer::OpTime> times = op_timer::Collect();
  ASSERT_EQ(times.size(), 2u);
  for (const op_timer::OpTime& t : times) {
    EXPECT_EQ(t.calls, t.op == "Scale" ? 2 : 1) << t.op;
    EXPECT_TRUE(t.op == "Scale" || t.op == "Axpy") << t.op;
    EXPECT_EQ(t.category, "norms+elementwise");
    EXPECT_GE(t.ms, 0.0);
  }
  EXPECT_TRUE(op_timer::Collect().empty());
}

TEST(OpTimerTest, CategoriesCoverTheProfileRows) {
  EXPECT_STREQ(op_timer::CategoryOf("Gemm"), "GEMM");
  EXPECT_STREQ(op_timer::CategoryOf("GroupedGemmWeightGrad"), "expert GEMM");
  EXPECT_STREQ(op_timer::CategoryOf("CausalAttentionBackward"), "attention");
  EXPECT_STREQ(op_timer::CategoryOf("TopKRouting"), "routing");
  EXPECT_STREQ(op_timer::CategoryOf("GatherRows"), "permutation");
  EXPECT_STREQ(op_timer::CategoryOf("RmsNormalize"), "norms+elementwise");
  EXPECT_STREQ(op_timer::CategoryOf("AdamWUpdate"), "optimizer");
  EXPECT_STREQ(op_timer::CategoryOf("VocabCrossEntropyLoss"), "embedding+loss");
  EXPECT_STREQ(op_timer::CategoryOf("NoSuchOp"), "other");
}

}  // namespace
}  // namespace scalemoe
