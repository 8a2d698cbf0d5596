// ScaledLinearGroup (norm/scaled_linear_group.h): the fold and unfold of
// several maps at once give the same bits as each map's own PrepareStep and
// FinishBackward — W_eff (f32, or rounded to bf16 for bf16 operands) or
// W's bf16 copy, dW, du, dγ and the vectors' parameter gradients — whether
// the maps fold and unfold together (a γ and u of their own, plain or β·α,
// or a γ shared by all maps, whose dγ takes every map's sum in map order),
// copy W together (no vectors on the weight, or per-token ones, with bf16
// operands), or go one by one (per-token vectors in f32); and maps of
// several shapes split into runs of same-shaped neighbours.
#include "norm/scaled_linear_group.h"

#include <algorithm>
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

  // Map m's W has rows[m] rows; maps in `no_gamma` have no γ, those in
  // `no_u` no u (an attention's o beside q, k, v).
  explicit Rig(const Variant& v, std::vector<int64_t> rows = std::vector<int64_t>(kMaps, kRows),
               std::vector<int> no_gamma = {}, std::vector<int> no_u = {}) {
    const int n = static_cast<int>(rows.size());
    auto in = [](const std::vector<int>& set, int m) {
      return std::find(set.begin(), set.end(), m) != set.end();
    };
    Sv sv;
    sv.set_mode(v.mode);
    sv.set_reparam(v.reparam);
    sv.set_fold_into_weights(v.fold);
    const ScaleOptions so(sv);
    std::vector<BranchSpec> branches;
    for (int m = 0; m < n; ++m) branches.push_back({absl::StrCat("gamma", m), {}});
    scales = std::make_unique<BranchScales>(registry, so, "gamma", ParamLayout{}, kCols, branches,
                                            v.mode == Sv::PER_BRANCH);
    for (int m = 0; m < n; ++m) {
      ParamSpec spec{
          absl::StrCat("w", m), {rows[m], kCols}, ParamRole::kLinear, InitSpec::Normal(1.0), {}};
      Param* w = registry.Create(spec);
      maps.push_back(std::make_unique<ScaledLinear>(
          registry, w, in(no_gamma, m) ? nullptr : scales.get(), m,
          ScaledLinearOptions{
              .path = so.path(),
              .u_name = v.with_u && !in(no_u, m) ? absl::StrCat("u", m) : std::string(),
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

// The forward of both rigs: their vectors, then the group's fold and each
// single map's.
void PrepareBoth(const ExecContext& ctx, Rig& grouped, Rig& single, ScaledLinearGroup& group) {
  Must(grouped.scales->Forward(ctx, DType::kF32));
  Must(single.scales->Forward(ctx, DType::kF32));
  Must(group.PrepareStep(ctx, DType::kF32));
  for (auto& m : single.maps) Must(m->PrepareStep(ctx, DType::kF32));
}

// The backward of both (the group's unfold, each map's), then every
// gradient: the same bits.
void ExpectSameGradients(const ExecContext& ctx, Rig& grouped, Rig& single,
                         ScaledLinearGroup& group, const std::string& name) {
  Must(group.FinishBackward(ctx));
  for (auto& m : single.maps) Must(m->FinishBackward(ctx));
  Must(grouped.scales->Backward(ctx));
  Must(single.scales->Backward(ctx));
  EXPECT_TRUE(ctx.status().ok()) << name;
  EXPECT_TRUE(SameBits(grouped.registry.flat_grads(), single.registry.flat_grads())) << name;
}

TEST(ScaledLinearGroupTest, EqualsEachMapOnItsOwn) {
  const Variant variants[] = {
      {"own gamma, plain", Sv::PER_BRANCH, Sv::PLAIN, true, false, true, true},
      {"own gamma, beta*alpha, bf16 operands", Sv::PER_BRANCH, Sv::MAGNITUDE_DIRECTION, true, true,
       true, true},
      // One dγ for all maps, taking their sums in map order.
      {"shared gamma", Sv::SHARED, Sv::MAGNITUDE_DIRECTION, true, false, true, true},
      {"shared gamma, bf16 operands", Sv::SHARED, Sv::PLAIN, true, true, true, true},
      {"per token", Sv::PER_BRANCH, Sv::PLAIN, false, false, false, false},
      // W's bf16 copies in one launch (the vectors scale the activations).
      {"per token, bf16 operands", Sv::PER_BRANCH, Sv::PLAIN, false, true, true, false},
      {"no vectors, bf16 operands", Sv::NONE, Sv::PLAIN, true, true, true, false, false},
  };
  const ExecContext ctx;
  for (const Variant& v : variants) {
    Rig grouped(v), single(v);
    ScaledLinearGroup group(grouped.Maps());
    PrepareBoth(ctx, grouped, single, group);
    EXPECT_EQ(group.forms_together(), v.forms_together) << v.name;
    EXPECT_EQ(group.unfolds_together(), v.unfolds_together) << v.name;
    for (int m = 0; m < kMaps; ++m) {
      const Tensor& w_eff = grouped.maps[m]->effective_weight();
      EXPECT_EQ(w_eff.dtype(), v.bf16_operands ? DType::kBF16 : DType::kF32) << v.name;
      EXPECT_TRUE(SameBits(w_eff, single.maps[m]->effective_weight())) << v.name << " map " << m;
    }
    ExpectSameGradients(ctx, grouped, single, group, v.name);
  }
}

// Maps of rows 5, 5, 3, 3, 5 (an attention's q, k, v, o under GQA, say):
// runs {0, 1} and {2, 3} fold and unfold in one launch each, map 4 on its
// own; a shared dγ still takes the sums in map order.
TEST(ScaledLinearGroupTest, SameShapedNeighboursRunTogether) {
  const Variant variants[] = {
      {"own gamma", Sv::PER_BRANCH, Sv::PLAIN, true, false, false, false},
      {"shared gamma, bf16 operands", Sv::SHARED, Sv::PLAIN, true, true, false, false},
      {"no vectors, bf16 operands", Sv::NONE, Sv::PLAIN, true, true, false, false, false},
  };
  const std::vector<int64_t> rows = {5, 5, 3, 3, 5};
  const ExecContext ctx;
  for (const Variant& v : variants) {
    Rig grouped(v, rows), single(v, rows);
    ScaledLinearGroup group(grouped.Maps());
    PrepareBoth(ctx, grouped, single, group);
    EXPECT_FALSE(group.forms_together()) << v.name;
    EXPECT_EQ(group.form_launches(), 3) << v.name;
    // Without vectors nothing is folded, so nothing unfolds.
    EXPECT_EQ(group.unfold_launches(), v.mode == Sv::NONE ? 0 : 3) << v.name;
    for (size_t m = 0; m < rows.size(); ++m) {
      EXPECT_TRUE(SameBits(grouped.maps[m]->effective_weight(), single.maps[m]->effective_weight()))
          << v.name << " map " << m;
    }
    ExpectSameGradients(ctx, grouped, single, group, v.name);
  }
}

// Four maps: γ and u, γ only, u only, γ and u (q, k, v, o with u on some):
// a map reads ones for the vector it lacks (exact: the same W_eff and dW)
// and sums it into scratch, so the run still folds and unfolds in one
// launch each, with every map's bits.
TEST(ScaledLinearGroupTest, MapsLackingAVectorJoinTheRun) {
  const Variant variants[] = {
      {"own gamma and u", Sv::PER_BRANCH, Sv::PLAIN, true, false, true, true},
      {"own gamma and u, bf16 operands", Sv::PER_BRANCH, Sv::MAGNITUDE_DIRECTION, true, true, true,
       true},
      // A shared dγ and map 2's scratch sum do not mix: one by one.
      {"shared gamma", Sv::SHARED, Sv::PLAIN, true, false, true, false},
  };
  const std::vector<int64_t> rows(4, kRows);
  const ExecContext ctx;
  for (const Variant& v : variants) {
    Rig grouped(v, rows, {2}, {1}), single(v, rows, {2}, {1});
    ScaledLinearGroup group(grouped.Maps());
    PrepareBoth(ctx, grouped, single, group);
    EXPECT_EQ(group.forms_together(), v.forms_together) << v.name;
    EXPECT_EQ(group.unfolds_together(), v.unfolds_together) << v.name;
    for (size_t m = 0; m < rows.size(); ++m) {
      EXPECT_TRUE(SameBits(grouped.maps[m]->effective_weight(), single.maps[m]->effective_weight()))
          << v.name << " map " << m;
    }
    ExpectSameGradients(ctx, grouped, single, group, v.name);
  }
}

}  // namespace
}  // namespace scalemoe
