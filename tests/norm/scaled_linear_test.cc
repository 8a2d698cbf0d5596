// ScaledLinear::Backward's grad_scale (the LM head's loss scale, applied as
// its GEMMs' alpha): the gradients of grad_scale · d_y, as a Backward of the
// pre-scaled d_y gives them — d_x, dW (or dW_eff, unfolded) and the vectors'
// gradients — with the vectors folded into the weight, and per token (where
// the scale goes on d_y first, in place). And ScaledLinearOptions::bf16_parts
// (the router's f32 map on bf16 GEMMs): the f32 map's output and gradients.
#include "norm/scaled_linear.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "core/philox.h"
#include "gtest/gtest.h"
#include "norm/branch_scales.h"
#include "tests/testing/same_bits.h"
#include "tests/testing/status_util.h"

namespace scalemoe {
namespace {

using Sv = config::ScaleVectorConfig;
using testing::Must;

constexpr int64_t kTokens = 6, kRows = 5, kCols = 7;

// One map W [kRows, kCols] with a γ of its own and an output-side u.
struct Rig {
  ParamRegistry registry;
  std::unique_ptr<BranchScales> scales;
  std::unique_ptr<ScaledLinear> map;

  explicit Rig(bool fold, bool bf16_parts = false) {
    Sv sv;
    sv.set_mode(Sv::PER_BRANCH);
    sv.set_fold_into_weights(fold);
    const ScaleOptions so(sv);
    scales = std::make_unique<BranchScales>(registry, so, "gamma", ParamLayout{}, kCols,
                                            std::vector<BranchSpec>{{"gamma0", {}}}, true);
    Param* w =
        registry.Create({"w", {kRows, kCols}, ParamRole::kLinear, InitSpec::Normal(1.0), {}});
    map = std::make_unique<ScaledLinear>(
        registry, w, scales.get(), 0,
        ScaledLinearOptions{
            .path = so.path(), .u_name = "u", .reparam = Sv::PLAIN, .bf16_parts = bf16_parts});
    Must(registry.Materialize(5, DType::kF32, Device::kCPU));
    int64_t stream = 0;
    for (const auto& p : registry.params()) {  // vectors away from 1
      ++stream;
      if (!IsScaleVector(p->spec.role)) continue;
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        p->value.data<float>()[i] = static_cast<float>(1.0 + 0.3 * PhiloxNormal(8, stream, i));
      }
    }
    registry.ZeroGrads();
  }

  // Forward on x, then Backward of d_y with grad_scale; returns d_x (in
  // d_x_dtype), and y where asked.
  Tensor Run(const ExecContext& ctx, const Tensor& x, const Tensor& d_y, double grad_scale,
             DType d_x_dtype = DType::kF32, Tensor* y_out = nullptr) {
    const int64_t tokens = x.dim(0);
    Must(scales->Forward(ctx, DType::kF32));
    Must(map->PrepareStep(ctx, DType::kF32));
    Tensor y = Tensor::Empty({tokens, kRows}, DType::kF32);
    map->Forward(ctx, x, y);
    if (y_out != nullptr) *y_out = y;
    Tensor d_x = Tensor::Empty({tokens, kCols}, d_x_dtype);
    map->Backward(ctx, d_y, d_x, GradMode::kOverwrite, grad_scale);
    Must(map->FinishBackward(ctx));
    Must(scales->Backward(ctx));
    return d_x;
  }
};

Tensor Random(const Shape& shape, uint64_t stream) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<float>()[i] = static_cast<float>(PhiloxNormal(3, stream, i));
  }
  return t;
}

void ExpectNear(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  double max_ref = 0, max_diff = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    max_ref = std::max(max_ref, std::abs(want.At(i)));
    max_diff = std::max(max_diff, std::abs(got.At(i) - want.At(i)));
  }
  EXPECT_GT(max_ref, 0) << what;
  EXPECT_LE(max_diff, 1e-6 * max_ref) << what << ": max|diff| " << max_diff;  // f32 roundings
}

TEST(ScaledLinearTest, GradScaleGivesTheGradientsOfTheScaledOutputGradient) {
  const ExecContext ctx;
  constexpr double kScale = 0.3;  // not a power of two: alpha and a pre-scaled d_y round apart
  for (bool fold : {true, false}) {
    const std::string what = fold ? "folded" : "per token";
    const Tensor x = Random({kTokens, kCols}, 1);
    const Tensor d_y = Random({kTokens, kRows}, 2);
    Tensor d_y_scaled = d_y.Clone();
    for (int64_t i = 0; i < d_y_scaled.numel(); ++i) d_y_scaled.data<float>()[i] *= kScale;

    Rig with_scale(fold), pre_scaled(fold);
    Tensor d_y_arg = d_y.Clone();  // the per-token path scales it in place
    const Tensor d_x = with_scale.Run(ctx, x, d_y_arg, kScale);
    const Tensor d_x_ref = pre_scaled.Run(ctx, x, d_y_scaled, 1.0);
    ASSERT_TRUE(ctx.status().ok()) << what;
    ExpectNear(d_x, d_x_ref, "d_x " + what);
    ExpectNear(with_scale.registry.flat_grads(), pre_scaled.registry.flat_grads(),
               "parameter gradients " + what);
    // And the scale did act: unscaled gradients differ.
    Rig unscaled(fold);
    const Tensor d_x_unscaled = unscaled.Run(ctx, x, d_y.Clone(), 1.0);
    EXPECT_FALSE(testing::SameBits(d_x_unscaled, d_x)) << what;
  }
}

// bf16_parts: a bf16 x on the GEMM weight's three bf16 parts gives the f32
// map of the same (bf16-exact) x — y, d_x and every parameter's gradient —
// up to f32 accumulation; per token (no one GEMM) it stays the f32 map.
TEST(ScaledLinearTest, Bf16PartsAreTheF32MapOfABf16Input) {
  const ExecContext ctx;
  for (int64_t tokens : {kTokens, int64_t{2048}}) {  // 2048: four token chunks in dW
    Tensor x = Random({tokens, kCols}, 3);
    Tensor x_bf16 = Tensor::Empty(x.shape(), DType::kBF16);
    x_bf16.CopyFrom(x);
    x.CopyFrom(x_bf16);  // the same values in f32
    const Tensor d_y = Random({tokens, kRows}, 4);
    Rig parts(true, true), f32(true);
    Tensor y, y_ref;
    const Tensor d_x = parts.Run(ctx, x_bf16, d_y, 0.3, DType::kF32, &y);
    const Tensor d_x_ref = f32.Run(ctx, x, d_y, 0.3, DType::kF32, &y_ref);
    ASSERT_TRUE(ctx.status().ok());
    const std::string what = " of " + std::to_string(tokens) + " tokens";
    EXPECT_TRUE(parts.map->takes_bf16_input());
    ExpectNear(y, y_ref, "y" + what);
    ExpectNear(d_x, d_x_ref, "d_x" + what);
    ExpectNear(parts.registry.flat_grads(), f32.registry.flat_grads(), "gradients" + what);
    // A bf16 d_x is the f32 one rounded once (within one rounding of it).
    Rig parts_bf16(true, true);
    const Tensor d_x_bf16 = parts_bf16.Run(ctx, x_bf16, d_y, 0.3, DType::kBF16);
    for (int64_t i = 0; i < d_x.numel(); ++i) {
      ASSERT_LE(std::abs(d_x_bf16.At(i) - d_x_ref.At(i)), std::abs(d_x_ref.At(i)) / 256 + 1e-12)
          << "bf16 d_x element " << i << what;
    }
  }
  Rig per_token(false, true);
  Must(per_token.scales->Forward(ctx, DType::kF32));
  Must(per_token.map->PrepareStep(ctx, DType::kF32));
  EXPECT_FALSE(per_token.map->takes_bf16_input()) << "per-token γ: no one GEMM to split";
}

}  // namespace
}  // namespace scalemoe
