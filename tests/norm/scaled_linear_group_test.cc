// ScaledLinearGroup (norm/scaled_linear_group.h): the fold and unfold of
// several maps at once give the same bits as each map's own PrepareStep and
// FinishBackward — W_eff (f32, or rounded to bf16 for bf16 operands) or
// W's bf16 copy, dW, du, dγ and the vectors' parameter gradients — whether
// the maps fold and unfold together (a γ and u of their own, plain or β·α),
// fold together and unfold one by one (a γ shared by all maps, whose dγ
// takes every map's sum), copy W together (no vectors on the weight, or
// per-token ones, with bf16 operands), or go one by one (per-token vectors
// in f32).
#include "norm/scaled_linear_group.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/philox.h"
#include "gtest/gtest.h"
#include "norm/branch_scales.h"
#include "norm/scaled_linear.h"
#include "tests/testing/same_bits.h"
#include "tests/testing/status_util.h"

namespace scalemoe {
namespace {

using testing::SameBits;

using Sv = config::ScaleVectorConfig;
using testing::Must;

constexpr int kMaps = 3;
constexpr int64_t kRows = 5, kCols = 7;

struct Variant {
  std::string name;
  Sv::Mode mode;
  Sv::Reparam reparam;
  bool fold = true;
  bool bf16_operands = false;
  bool forms_together, unfolds_together;  // expected of ScaledLinearGroup
  bool with_u = true;
};

// kMaps maps of W [kRows, kCols] with an output-side u each, their γ from
// one BranchScales (a vector per map, or one shared).
struct Rig {
  ParamRegistry registry;
  std::unique_ptr<BranchScales> scales;
  std::vector<std::unique_ptr<ScaledLinear>> maps;

  explicit Rig(const Variant& v) {
    Sv sv;
    sv.set_mode(v.mode);
    sv.set_reparam(v.reparam);
    sv.set_fold_into_weights(v.fold);
    const ScaleOptions so(sv);
    std::vector<BranchSpec> branches;
    for (int m = 0; m < kMaps; ++m) branches.push_back({absl::StrCat("gamma", m), {}});
    scales = std::make_unique<BranchScales>(registry, so, "gamma", ParamLayout{}, kCols, branches,
                                            v.mode == Sv::PER_BRANCH);
    for (int m = 0; m < kMaps; ++m) {
      ParamSpec spec{
          absl::StrCat("w", m), {kRows, kCols}, ParamRole::kLinear, InitSpec::Normal(1.0), {}};
      Param* w = registry.Create(spec);
      maps.push_back(std::make_unique<ScaledLinear>(
          registry, w, scales.get(), m,
          ScaledLinearOptions{.path = so.path(),
                              .u_name = v.with_u ? absl::StrCat("u", m) : std::string(),
                              .reparam = v.reparam,
                              .bf16_operands = v.bf16_operands}));
    }
    Must(registry.Materialize(5, DType::kF32, Device::kCPU));
    // Vectors away from 1 (γ = 1 hides swapped factors), gradients as if
    // the GEMMs had accumulated dW_eff.
    int64_t stream = 0;
    for (const auto& p : registry.params()) {
      ++stream;
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        p->grad.data<float>()[i] = static_cast<float>(PhiloxNormal(9, stream, i));
        if (IsScaleVector(p->spec.role)) {
          p->value.data<float>()[i] = static_cast<float>(1.0 + 0.3 * PhiloxNormal(8, stream, i));
        }
      }
    }
  }
  std::vector<ScaledLinear*> Maps() {
    std::vector<ScaledLinear*> out;
    for (auto& m : maps) out.push_back(m.get());
    return out;
  }
};

TEST(ScaledLinearGroupTest, EqualsEachMapOnItsOwn) {
  const Variant variants[] = {
      {"own gamma, plain", Sv::PER_BRANCH, Sv::PLAIN, true, false, true, true},
      {"own gamma, beta*alpha, bf16 operands", Sv::PER_BRANCH, Sv::MAGNITUDE_DIRECTION, true, true,
       true, true},
      // One dγ for all maps: folded together, unfolded one by one.
      {"shared gamma", Sv::SHARED, Sv::MAGNITUDE_DIRECTION, true, false, true, false},
      {"shared gamma, bf16 operands", Sv::SHARED, Sv::PLAIN, true, true, true, false},
      {"per token", Sv::PER_BRANCH, Sv::PLAIN, false, false, false, false},
      // W's bf16 copies in one launch (the vectors scale the activations).
      {"per token, bf16 operands", Sv::PER_BRANCH, Sv::PLAIN, false, true, true, false},
      {"no vectors, bf16 operands", Sv::NONE, Sv::PLAIN, true, true, true, false, false},
  };
  const ExecContext ctx;
  for (const Variant& v : variants) {
    Rig grouped(v), single(v);
    ScaledLinearGroup group(grouped.Maps());
    Must(grouped.scales->Forward(ctx, DType::kF32));
    Must(single.scales->Forward(ctx, DType::kF32));
    Must(group.PrepareStep(ctx, DType::kF32));
    for (auto& m : single.maps) Must(m->PrepareStep(ctx, DType::kF32));
    EXPECT_EQ(group.forms_together(), v.forms_together) << v.name;
    EXPECT_EQ(group.unfolds_together(), v.unfolds_together) << v.name;
    for (int m = 0; m < kMaps; ++m) {
      const Tensor& w_eff = grouped.maps[m]->effective_weight();
      EXPECT_EQ(w_eff.dtype(), v.bf16_operands ? DType::kBF16 : DType::kF32) << v.name;
      EXPECT_TRUE(SameBits(w_eff, single.maps[m]->effective_weight())) << v.name << " map " << m;
    }
    Must(group.FinishBackward(ctx));
    for (auto& m : single.maps) Must(m->FinishBackward(ctx));
    Must(grouped.scales->Backward(ctx));
    Must(single.scales->Backward(ctx));
    EXPECT_TRUE(ctx.status().ok()) << v.name;
    EXPECT_TRUE(SameBits(grouped.registry.flat_grads(), single.registry.flat_grads())) << v.name;
  }
}

}  // namespace
}  // namespace scalemoe
