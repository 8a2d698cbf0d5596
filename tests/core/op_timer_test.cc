// The op timer (core/op_timer.h): off, ops leave no record; on, each ops::
// call is counted once under its name and category, and Collect starts afresh.
#include "core/op_timer.h"

#include <string>

#include "core/context.h"
#include "core/ops.h"
#include "core/ops_list.h"
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

// Each op's calls split by the shape of their first tensor argument, the
// shares adding up to the op's totals.
TEST(OpTimerTest, SplitsEachOpByItsFirstTensorsShape) {
  const ExecContext ctx = ExecContext::Cpu();
  Tensor small = ctx.Zeros({4, 8}, DType::kF32);
  Tensor large = ctx.Zeros({512, 64}, DType::kF32);
  op_timer::Collect();
  op_timer::SetEnabled(true);
  ops::Scale(ctx, 2.0, small);
  ops::Scale(ctx, 2.0, large);
  ops::Scale(ctx, 2.0, large);
  op_timer::SetEnabled(false);
  const std::vector<op_timer::OpTime> times = op_timer::Collect();
  ASSERT_EQ(times.size(), 1u);
  const op_timer::OpTime& scale = times[0];
  ASSERT_EQ(scale.shapes.size(), 2u);
  int64_t calls = 0;
  double ms = 0;
  for (const op_timer::ShapeTime& st : scale.shapes) {
    EXPECT_EQ(st.calls, st.shape == "[512, 64]" ? 2 : 1) << st.shape;
    EXPECT_TRUE(st.shape == "[512, 64]" || st.shape == "[4, 8]") << st.shape;
    calls += st.calls;
    ms += st.ms;
  }
  EXPECT_EQ(calls, scale.calls);
  EXPECT_NEAR(ms, scale.ms, 1e-9 * scale.ms + 1e-12);  // summed in another order
  EXPECT_GE(scale.shapes[0].ms, scale.shapes[1].ms);   // largest first
  EXPECT_EQ(op_timer::FirstTensorShape(ctx, 2.0, Tensor(), large), "undefined");
  EXPECT_EQ(op_timer::FirstTensorShape(ctx, 2.0), "");
}

TEST(OpTimerTest, CategoriesCoverTheProfileRows) {
  EXPECT_STREQ(op_timer::CategoryOf("Gemm"), "GEMM");
  EXPECT_STREQ(op_timer::CategoryOf("GroupedGemmWeightGrad"), "expert GEMM");
  EXPECT_STREQ(op_timer::CategoryOf("CausalAttentionBackward"), "attention");
  EXPECT_STREQ(op_timer::CategoryOf("TopKRouting"), "routing");
  EXPECT_STREQ(op_timer::CategoryOf("GatherRows"), "permutation");
  EXPECT_STREQ(op_timer::CategoryOf("RmsNormalize"), "norms+elementwise");
  EXPECT_STREQ(op_timer::CategoryOf("AddRmsNormalize"), "norms+elementwise");
  EXPECT_STREQ(op_timer::CategoryOf("RmsNormalizeBackwardAdd"), "norms+elementwise");
  EXPECT_STREQ(op_timer::CategoryOf("AdamWUpdate"), "optimizer");
  EXPECT_STREQ(op_timer::CategoryOf("VocabCrossEntropyLoss"), "embedding+loss");
  EXPECT_STREQ(op_timer::CategoryOf("NoSuchOp"), "other");
}

// Every op of the op set (core/ops_list.h) lands in a category of the
// profile table: a new op left out would show up as "other".
TEST(OpTimerTest, EveryOpHasACategory) {
#define SM_OP_NAME(ret, name, params, args, cuda) #name,
  const char* const kOps[] = {SM_OPS(SM_OP_NAME)};
#undef SM_OP_NAME
  for (const char* op : kOps) EXPECT_STRNE(op_timer::CategoryOf(op), "other") << op;
}

}  // namespace
}  // namespace scalemoe
