// train.precision BF16: GEMM operands are bf16 (a copy of the weight, or
// the folded W_eff formed from the fp32 master; the input, which is the
// bf16 residual stream's norm output itself unless
// train.fp32_residual_connection), accumulated in fp32; master weights,
// gradients, scale vectors, statistics and the router stay fp32. Checked three ways: one
// ScaledLinear equals the same ops on explicitly rounded operands (both paths, forward and
// backward), the whole model stays within bf16 rounding of its fp32 run (and is not identical to
// it: bf16 is really used), and the router's logits stay the f32 map (its bits for an f32 input;
// f32 accumulation of exact products for a bf16 one).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "moe/router.h"
#include "norm/scaled_linear.h"
#include "tests/model/model_test_util.h"
#include "tests/model/variant_cases.h"
#include "tests/model/whole_model_step.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;
using scalemoe::testing::RandomTensor;

namespace scalemoe {
namespace {

using SV = config::ScaleVectorConfig;

Tensor Bf16(const Tensor& x) {
  Tensor out = Tensor::Empty(x.shape(), DType::kBF16);
  ops::Copy(ExecContext::Cpu(), x, out);
  return out;
}

// The same dtype, shape and bytes.
bool SameBits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// |a - b|_max / |b|_max.
double RelMaxError(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d / MaxAbs(b);
}

class ScaledLinearBf16Test : public ::testing::TestWithParam<ScalePath> {};

TEST_P(ScaledLinearBf16Test, EqualsTheOpsOnOperandsRoundedOnce) {
  const ScalePath path = GetParam();
  const bool fold = path == ScalePath::kFold;
  SV sv;
  sv.set_mode(SV::SHARED);
  sv.set_fold_into_weights(fold);
  ParamRegistry registry;
  Param* w = registry.Create({"w", {6, 8}, ParamRole::kLinear, InitSpec::Normal(1.0), {}});
  BranchScales scales(registry, ScaleOptions(sv), "gamma", {}, 8, {{"gamma", {}}}, false);
  ScaledLinear lin(registry, w, &scales, 0, {.path = path, .u_name = "u", .bf16_operands = true});
  Must(registry.Materialize(3, DType::kF32, Device::kCPU));
  testing::PerturbScaleVectors(registry, 5);
  const Tensor gamma = registry.Find("gamma")->value;
  const Tensor u = registry.Find("u")->value;
  const ExecContext ctx;
  const Tensor x = RandomTensor({5, 8}, 1, 1.0, DType::kF32);
  const Tensor dy = RandomTensor({5, 6}, 2, 1.0, DType::kF32);

  registry.ZeroGrads();
  Must(scales.Forward(ctx, DType::kF32));
  Must(lin.PrepareStep(ctx, DType::kF32));
  Tensor y = Tensor::Empty({5, 6}, DType::kF32);
  lin.Forward(ctx, x, y);
  Tensor dx = Tensor::Empty({5, 8}, DType::kF32);
  lin.Backward(ctx, dy, dx, GradMode::kOverwrite);
  Must(lin.FinishBackward(ctx));
  Must(scales.Backward(ctx));
  EXPECT_EQ(lin.effective_weight().dtype(), DType::kBF16);
  EXPECT_EQ(w->value.dtype(), DType::kF32);
  EXPECT_EQ(w->grad.dtype(), DType::kF32);

  // The reference, op by op. Fold: x_bf · bf16(diag(u) W diag(γ))ᵀ; per
  // token: u ⊙ (bf16(γ ⊙ x) · bf16(W)ᵀ).
  const ops::GemmOptions xwt{.trans_b = ops::Trans::kYes};
  Tensor w_eff32 = Tensor::Empty({6, 8}, DType::kF32);
  ops::ScaleRowsCols(ctx, w->value, u, gamma, w_eff32);
  Tensor ref = Tensor::Empty({5, 6}, DType::kF32);
  Tensor ref32 = Tensor::Empty({5, 6}, DType::kF32);  // all-fp32, for the distance
  Tensor dx_ref = Tensor::Empty({5, 8}, DType::kF32);
  ops::Gemm(ctx, x, w_eff32, ref32, xwt);
  if (fold) {
    const Tensor w_eff = Bf16(w_eff32);
    ops::Gemm(ctx, Bf16(x), w_eff, ref, xwt);
    ops::Gemm(ctx, Bf16(dy), w_eff, dx_ref);
  } else {
    Tensor gx = Tensor::Empty({5, 8}, DType::kF32);
    ops::ScaleRowsCols(ctx, x, Tensor(), gamma, gx);
    Tensor raw = Tensor::Empty({5, 6}, DType::kF32);
    ops::Gemm(ctx, Bf16(gx), Bf16(w->value), raw, xwt);
    ops::ScaleRowsCols(ctx, raw, Tensor(), u, ref);
    Tensor du_dy = Tensor::Empty({5, 6}, DType::kF32);
    ops::ScaleRowsCols(ctx, dy, Tensor(), u, du_dy);
    Tensor d_in = Tensor::Empty({5, 8}, DType::kF32);
    ops::Gemm(ctx, Bf16(du_dy), Bf16(w->value), d_in);
    ops::ScaleRowsCols(ctx, d_in, Tensor(), gamma, dx_ref);
  }
  EXPECT_EQ(y.ToVector(), ref.ToVector());
  EXPECT_LT(RelMaxError(dx.ToVector(), dx_ref.ToVector()), 1e-6);
  // Rounded, but only by bf16's 2^-8.
  const double distance = RelMaxError(y.ToVector(), ref32.ToVector());
  EXPECT_GT(distance, 0.0);
  EXPECT_LT(distance, 2e-2);

  // dW = diag(u) (dyᵀ x) diag(γ) with bf16 operands, fp32 accumulation.
  Tensor dw_eff = Tensor::Empty({6, 8}, DType::kF32);
  if (fold) {
    ops::Gemm(ctx, Bf16(dy), Bf16(x), dw_eff, {.trans_a = ops::Trans::kYes});
  } else {
    Tensor du_dy = Tensor::Empty({5, 6}, DType::kF32);
    ops::ScaleRowsCols(ctx, dy, Tensor(), u, du_dy);
    Tensor gx = Tensor::Empty({5, 8}, DType::kF32);
    ops::ScaleRowsCols(ctx, x, Tensor(), gamma, gx);
    ops::Gemm(ctx, Bf16(du_dy), Bf16(gx), dw_eff, {.trans_a = ops::Trans::kYes});
  }
  Tensor dw_ref = Tensor::Empty({6, 8}, DType::kF32);
  if (fold) {
    ops::ScaleRowsCols(ctx, dw_eff, u, gamma, dw_ref);
  } else {
    dw_ref = dw_eff;
  }
  EXPECT_LT(RelMaxError(w->grad.ToVector(), dw_ref.ToVector()), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Paths, ScaledLinearBf16Test,
                         ::testing::Values(ScalePath::kFold, ScalePath::kPerToken),
                         [](const auto& info) {
                           return info.param == ScalePath::kFold ? "Fold" : "PerToken";
                         });

struct StepResult {
  double loss;
  std::vector<std::vector<double>> grads;
};

StepResult OneStep(config::RunConfig cfg, config::TrainConfig::Precision precision) {
  cfg.mutable_train()->set_precision(precision);
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  Must(registry.Materialize(cfg.train().seed(), DType::kF32, Device::kCPU));
  testing::PerturbScaleVectors(registry, 11);
  std::vector<int32_t> ids(10);
  for (int i = 0; i < 10; ++i) ids[i] = (7 * i + 3) % 16;
  std::vector<int32_t> next(10);
  for (int i = 0; i < 10; ++i) next[i] = (5 * i + 1) % 16;
  const Tensor tokens = Tensor::FromBlob(ids.data(), {2, 5}, DType::kI32, Device::kCPU);
  const Tensor targets = Tensor::FromBlob(next.data(), {2, 5}, DType::kI32, Device::kCPU);
  const ExecContext ctx;
  registry.ZeroGrads();
  Must(model.PrepareStep(ctx));
  StepResult run;
  run.loss = Must(model.Forward(ctx, tokens, targets)).total;
  Must(model.Backward(ctx, 1.0));
  Must(model.FinishBackward(ctx));
  for (const auto& p : registry.params()) {
    EXPECT_EQ(p->value.dtype(), DType::kF32) << p->spec.name;
    EXPECT_EQ(p->grad.dtype(), DType::kF32) << p->spec.name;
    run.grads.push_back(p->grad.ToVector());
  }
  return run;
}

// The tiny model (init_std 0.5, scale vectors away from 1) under bf16
// operands: the loss within 1% and each parameter's gradient within 10% (of
// its largest element) of the fp32 run — bf16 keeps 8 bits, and two layers
// of attention and routing compound them — and never equal to it.
TEST(ModelPrecisionTest, Bf16OperandsStayWithinBf16RoundingOfFp32) {
  struct Case {
    const char* name;
    int experts;
    bool fold;
  };
  for (const Case& c :
       {Case{"dense fold", 0, true}, Case{"moe fold", 4, true}, Case{"moe per-token", 4, false}}) {
    SCOPED_TRACE(c.name);
    config::RunConfig cfg = testing::TinyConfig(c.experts);
    cfg.mutable_model()->set_init_std(0.1);
    SV* sv = cfg.mutable_scale_vectors();
    sv->set_mode(SV::PER_BRANCH);
    sv->set_placement(SV::DUAL);
    sv->set_fold_into_weights(c.fold);
    const StepResult fp32 = OneStep(cfg, config::TrainConfig::FP32);
    const StepResult bf16 = OneStep(cfg, config::TrainConfig::BF16);
    EXPECT_NE(fp32.loss, bf16.loss);
    EXPECT_NEAR(bf16.loss, fp32.loss, 1e-2 * std::abs(fp32.loss));
    ASSERT_EQ(fp32.grads.size(), bf16.grads.size());
    for (size_t i = 0; i < fp32.grads.size(); ++i) {
      if (MaxAbs(fp32.grads[i]) < 1e-6) continue;  // a symmetry zero
      EXPECT_LT(RelMaxError(bf16.grads[i], fp32.grads[i]), 0.1) << "parameter " << i;
    }
  }
}

// Every scale-vector variant the GPU check runs (tests/model/variant_cases.h)
// under bf16 operands on the CPU against its fp32 run: the loss within 1%,
// every gradient's cosine >= 0.999 — the bound the GPU's bf16 run is held
// to, so a variant that misses it on the GPU misses it here first. Also
// with train.fp32_head_norm_input off, which reads the per-head norms'
// input in bf16: within the same bounds, and the same bits as on where a
// variant has no per-head norm. And with bf16 logits (train.fp32_logits
// off): within the same bounds.
TEST(ModelPrecisionTest, Bf16TracksFp32OnEveryScaleVectorVariant) {
  const ExecContext ctx;
  for (const testing::VariantCase& c : testing::VariantCases()) {
    SCOPED_TRACE(c.name);
    config::RunConfig cfg = testing::VariantConfig(c);
    const Tensor values = testing::StartValues(cfg);
    const testing::StepResult fp32 = testing::WholeModelStep(cfg, ctx, values);
    cfg.mutable_train()->set_precision(config::TrainConfig::BF16);
    const testing::StepResult bf16 = testing::WholeModelStep(cfg, ctx, values);
    EXPECT_NE(fp32.loss, bf16.loss);
    testing::ExpectBf16Tracks(fp32, bf16);
    const testing::MinCosine worst = testing::SmallestCosine(fp32, bf16);
    cfg.mutable_train()->set_fp32_head_norm_input(false);
    const testing::StepResult bf16_in = testing::WholeModelStep(cfg, ctx, values);
    testing::ExpectBf16Tracks(fp32, bf16_in);
    const testing::MinCosine worst_in = testing::SmallestCosine(fp32, bf16_in);
    const bool head_norms =
        cfg.model().qk_norm() || cfg.scale_vectors().placement() == SV::DUAL_NORMALIZED;
    if (!head_norms) {
      EXPECT_EQ(bf16_in.loss, bf16.loss);
    }
    cfg.mutable_train()->set_fp32_head_norm_input(true);
    cfg.mutable_train()->set_fp32_logits(false);
    const testing::StepResult bf16_logits = testing::WholeModelStep(cfg, ctx, values);
    EXPECT_NE(bf16_logits.loss, bf16.loss);
    testing::ExpectBf16Tracks(fp32, bf16_logits);
    const testing::MinCosine worst_logits = testing::SmallestCosine(fp32, bf16_logits);
    std::printf(
        "%s: smallest cosine %.6f (%s); bf16 head-norm input %.6f (%s); bf16 logits %.6f (%s)\n",
        c.name.c_str(), worst.cosine, worst.name.c_str(), worst_in.cosine, worst_in.name.c_str(),
        worst_logits.cosine, worst_logits.name.c_str());
  }
}

// Routing decisions come from fp32 logits whatever train.precision says.
// The forward cache the tiny model (f32 parameters, CPU) keeps after one
// micro-batch's Forward (2 x 5 tokens), moved out into a stash.
ForwardCacheStash ForwardCacheOfOneStep(const config::RunConfig& cfg) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  Must(registry.Materialize(cfg.train().seed(), DType::kF32, Device::kCPU));
  std::vector<int32_t> ids(10), next(10);
  for (int i = 0; i < 10; ++i) ids[i] = (7 * i + 3) % 16, next[i] = (5 * i + 1) % 16;
  const Tensor tokens = Tensor::FromBlob(ids.data(), {2, 5}, DType::kI32, Device::kCPU);
  const Tensor targets = Tensor::FromBlob(next.data(), {2, 5}, DType::kI32, Device::kCPU);
  const ExecContext ctx;
  Must(model.PrepareStep(ctx));
  Must(model.Forward(ctx, tokens, targets));
  ForwardCacheStash stash;
  model.VisitForwardCache(stash);
  return stash;
}

// Under BF16 the FFNs' F-wide activations (gate, up, SwiGLU output, which
// the backward keeps) are bf16, written and read by the GEMMs; under FP32
// they are fp32. Found in the model's forward cache by their last dim (the
// tiny model's dense FFN is 12 wide, its experts 6, their gate|up packed
// side by side 12: no other activation is).
TEST(ModelPrecisionTest, Bf16KeepsTheFfnActivationsInBf16) {
  for (int experts : {0, 4}) {
    SCOPED_TRACE(experts ? "moe" : "dense");
    const config::RunConfig base = testing::TinyConfig(experts);
    const int64_t f =
        experts ? base.moe().expert_ffn_hidden_size() : base.model().ffn_hidden_size();
    for (auto precision : {config::TrainConfig::FP32, config::TrainConfig::BF16}) {
      config::RunConfig cfg = base;
      cfg.mutable_train()->set_precision(precision);
      const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
      int ffn_wide = 0;
      const DType want = precision == config::TrainConfig::BF16 ? DType::kBF16 : DType::kF32;
      stash.ForEachTensor([&](const Tensor& t) {
        if (!t.defined() || t.ndim() != 2 || (t.dim(1) != f && t.dim(1) != 2 * f)) return;
        ++ffn_wide;
        EXPECT_EQ(t.dtype(), want) << "an FFN activation [" << t.dim(0) << ", " << f << "]";
      });
      // gate and up (dense; the experts' packed in one) and h (the down
      // projection's input) in each of 2 layers.
      EXPECT_GE(ffn_wide, (experts ? 2 : 3) * cfg.model().num_layers());
    }
  }
}

// Under BF16 q, k, v (after the per-head norms and RoPE) and the
// attention's output, which the backward keeps, are bf16: the GEMMs write
// them, the attention reads them and W_o's GEMM reads its input without a
// copy; under FP32 they are fp32. The log-sum-exp stays fp32, and so does a
// per-head norm's own cache (it runs in the activations' dtype). Found in
// the forward cache as the only 4-D tensors ([B, T, heads, D]).
TEST(ModelPrecisionTest, Bf16KeepsTheAttentionActivationsInBf16) {
  for (bool dnp : {false, true}) {
    SCOPED_TRACE(dnp ? "DNP (per-head q/k norms)" : "no per-head norm");
    config::RunConfig base = testing::TinyConfig(4);
    if (dnp) {
      base.mutable_scale_vectors()->set_placement(config::ScaleVectorConfig::DUAL_NORMALIZED);
    }
    for (auto precision : {config::TrainConfig::FP32, config::TrainConfig::BF16}) {
      config::RunConfig cfg = base;
      cfg.mutable_train()->set_precision(precision);
      const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
      const DType want = precision == config::TrainConfig::BF16 ? DType::kBF16 : DType::kF32;
      int four_d = 0, lse = 0;
      stash.ForEachTensor([&](const Tensor& t) {
        if (!t.defined()) return;
        if (t.ndim() == 4) {
          ++four_d;
          EXPECT_EQ(t.dtype(), want) << "an attention activation " << t.DebugString();
        } else if (t.ndim() == 3 && t.dim(1) == cfg.model().num_heads()) {
          ++lse;
          EXPECT_EQ(t.dtype(), DType::kF32) << "the log-sum-exp " << t.DebugString();
        }
      });
      EXPECT_EQ(four_d, 4 * cfg.model().num_layers());  // q, k, v, output
      EXPECT_EQ(lse, cfg.model().num_layers());
    }
  }
}

// Under BF16 a per-head norm (DNP on q and k) keeps its input for the
// backward: fp32 under train.fp32_head_norm_input (the projection's GEMM
// writes fp32), bf16 with it off (the GEMM writes the attention's dtype).
// Found in the forward cache as the [tokens x heads, head dim] tensors;
// switching the option off frees exactly half of their bytes.
TEST(ModelPrecisionTest, Bf16HeadNormInputIsFp32OrBf16AsConfigured) {
  config::RunConfig base = testing::TinyConfig(4);
  base.mutable_model()->set_hidden_size(20);  // head dim 10: no other cached tensor is 10 wide
  base.mutable_scale_vectors()->set_placement(config::ScaleVectorConfig::DUAL_NORMALIZED);
  base.mutable_train()->set_precision(config::TrainConfig::BF16);
  const config::ModelConfig& m = base.model();
  const int64_t tokens = 10, d = m.hidden_size() / m.num_heads();  // ForwardCacheOfOneStep's
  const int64_t kv = m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads();
  const int64_t head_rows = tokens * (m.num_heads() + kv);  // q's and k's rows, per layer
  double bytes[2] = {0, 0};
  for (bool fp32_input : {true, false}) {
    SCOPED_TRACE(fp32_input ? "fp32 head-norm input" : "bf16 head-norm input");
    config::RunConfig cfg = base;
    cfg.mutable_train()->set_fp32_head_norm_input(fp32_input);
    const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
    int64_t norm_rows = 0;
    stash.ForEachTensor([&](const Tensor& t) {
      if (!t.defined()) return;
      bytes[fp32_input] += static_cast<double>(t.nbytes());
      if (t.ndim() != 2 || t.dim(1) != d) return;
      norm_rows += t.dim(0);
      EXPECT_EQ(t.dtype(), fp32_input ? DType::kF32 : DType::kBF16) << t.DebugString();
    });
    EXPECT_EQ(norm_rows, m.num_layers() * head_rows);
  }
  EXPECT_EQ(bytes[1] - bytes[0], static_cast<double>(m.num_layers() * head_rows * d * 2));
}

// The loss's gradient d_logits, which the backward keeps, is in the dtype
// the LM head's GEMMs read: bf16 under BF16 (the loss rounds it once, where
// the head made a bf16 copy of an fp32 one), fp32 under FP32. The only
// [N, V] tensor in the forward cache (the logits themselves are not kept).
TEST(ModelPrecisionTest, TheLossWritesItsGradientInTheHeadsGemmDtype) {
  for (auto precision : {config::TrainConfig::FP32, config::TrainConfig::BF16}) {
    config::RunConfig cfg = testing::TinyConfig(4);
    cfg.mutable_train()->set_precision(precision);
    const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
    const DType want = precision == config::TrainConfig::BF16 ? DType::kBF16 : DType::kF32;
    int d_logits = 0;
    stash.ForEachTensor([&](const Tensor& t) {
      if (!t.defined() || t.ndim() != 2 || t.dim(0) != 10 || t.dim(1) != cfg.model().vocab_size()) {
        return;
      }
      ++d_logits;
      EXPECT_EQ(t.dtype(), want) << "d_logits " << t.DebugString();
    });
    EXPECT_EQ(d_logits, 1);
  }
}

// train.fp32_logits off under BF16: the LM head's GEMM writes the logits
// in bf16, and they are the bits of the fp32 logits (the same GEMM, which
// writes its f32 sums) rounded once. The loss is the cross-entropy of those
// bf16 logits, and their gradient stays bf16. Under FP32 the option does
// nothing: fp32 logits, the same loss bits.
TEST(ModelPrecisionTest, Bf16LogitsAreTheFp32LogitsRoundedOnce) {
  struct Run {
    Tensor logits;
    LossBreakdown loss;
  };
  std::vector<int32_t> ids(10), next(10);
  for (int i = 0; i < 10; ++i) ids[i] = (7 * i + 3) % 16, next[i] = (5 * i + 1) % 16;
  const Tensor tokens = Tensor::FromBlob(ids.data(), {2, 5}, DType::kI32, Device::kCPU);
  const Tensor targets = Tensor::FromBlob(next.data(), {2, 5}, DType::kI32, Device::kCPU);
  const auto forward = [&](const config::RunConfig& cfg) {
    ParamRegistry registry;
    MoeTransformer model(registry, cfg);
    Must(registry.Materialize(cfg.train().seed(), DType::kF32, Device::kCPU));
    testing::PerturbScaleVectors(registry, 5);
    const ExecContext ctx;
    Must(model.PrepareStep(ctx));
    Run r;
    r.loss = Must(model.Forward(ctx, tokens, targets));
    r.logits = model.logits().Clone();
    return r;
  };
  for (auto precision : {config::TrainConfig::FP32, config::TrainConfig::BF16}) {
    const bool bf16 = precision == config::TrainConfig::BF16;
    SCOPED_TRACE(bf16 ? "BF16" : "FP32");
    config::RunConfig cfg = testing::TinyConfig(4);
    cfg.mutable_train()->set_precision(precision);
    const Run fp32_logits = forward(cfg);
    cfg.mutable_train()->set_fp32_logits(false);
    const Run off = forward(cfg);
    EXPECT_EQ(fp32_logits.logits.dtype(), DType::kF32);
    if (!bf16) {
      EXPECT_EQ(off.logits.dtype(), DType::kF32);
      EXPECT_TRUE(SameBits(off.logits, fp32_logits.logits));
      EXPECT_EQ(off.loss.total, fp32_logits.loss.total);
      continue;
    }
    ASSERT_EQ(off.logits.dtype(), DType::kBF16);
    EXPECT_TRUE(SameBits(off.logits, Bf16(fp32_logits.logits)));
    Tensor widened = Tensor::Empty(off.logits.shape(), DType::kF32);
    ops::Copy(ExecContext::Cpu(), off.logits, widened);
    EXPECT_FALSE(SameBits(widened, fp32_logits.logits))
        << "the fp32 logits were bf16 values already: the test checks nothing";
    // The loss is the bf16 logits' cross-entropy, not the fp32 ones'.
    Tensor ce = Tensor::Empty({1}, DType::kF64);
    ops::CrossEntropy(ExecContext::Cpu(), off.logits, targets.View({10}), Tensor(), ce);
    EXPECT_EQ(off.loss.cross_entropy, ce.At(0));
    EXPECT_NE(off.loss.cross_entropy, fp32_logits.loss.cross_entropy);
    EXPECT_NEAR(off.loss.cross_entropy, fp32_logits.loss.cross_entropy,
                1e-2 * fp32_logits.loss.cross_entropy);
  }
}

// The distinct [N, C] tensors of one dtype in a forward cache (views of
// one buffer counted once).
std::vector<Tensor> DistinctRows(const ForwardCacheStash& stash, int64_t c, DType dtype) {
  std::vector<Tensor> distinct;
  stash.ForEachTensor([&](const Tensor& t) {
    if (!t.defined() || t.dtype() != dtype || t.ndim() != 2 || t.dim(1) != c) return;
    for (const Tensor& d : distinct) {
      if (d.SharesDataWith(t)) return;
    }
    distinct.push_back(t);
  });
  return distinct;
}

// Under BF16 with train.fp32_residual_connection the maps that read one
// input convert it once: q, k and v share one bf16 copy of the attention's
// normed input, gate and up one of the MLP's (SharedGemmInput); with the
// output projection's input (the attention's bf16 output itself), 3
// distinct bf16 [N, C] tensors per dense layer in the forward cache (6 with
// a copy per map), and one more for the LM head's input. The residual
// stream (L + 1 block inputs and output) stays fp32 then.
TEST(ModelPrecisionTest, Bf16MapsOfOneInputShareOneCopy) {
  config::RunConfig cfg = testing::TinyConfig(0);
  cfg.mutable_train()->set_precision(config::TrainConfig::BF16);
  cfg.mutable_train()->set_fp32_residual_connection(true);
  const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
  const int64_t c = cfg.model().hidden_size(), layers = cfg.model().num_layers();
  EXPECT_EQ(DistinctRows(stash, c, DType::kBF16).size(), 3u * layers + 1);
  EXPECT_EQ(DistinctRows(stash, c, DType::kF32).size(), (layers + 1) + 2u * layers + 1)
      << "the residual stream, each layer's two norm outputs and the final one";
}

// Under BF16 (Megatron's default) the residual stream and the norms'
// outputs are bf16 themselves and the GEMMs read them without a copy: per
// dense layer its input, the two norm outputs and the attention's output,
// plus the last block's output and the final norm's; no fp32 [N, C]
// activation is kept at all (the norms' rstd are fp32 [N] vectors), the
// router's input included (its f32 products run on bf16 parts).
TEST(ModelPrecisionTest, Bf16KeepsTheResidualStreamInBf16) {
  for (int experts : {0, 4}) {
    SCOPED_TRACE(experts ? "moe" : "dense");
    config::RunConfig cfg = testing::TinyConfig(experts);
    cfg.mutable_train()->set_precision(config::TrainConfig::BF16);
    const ForwardCacheStash stash = ForwardCacheOfOneStep(cfg);
    const int64_t c = cfg.model().hidden_size(), layers = cfg.model().num_layers();
    const size_t bf16_rows = DistinctRows(stash, c, DType::kBF16).size();
    const size_t f32_rows = DistinctRows(stash, c, DType::kF32).size();
    if (experts == 0) {
      EXPECT_EQ(bf16_rows, 4u * layers + 2);
      EXPECT_EQ(f32_rows, 0u);
    } else {
      // The MoE layers add their permuted rows (bf16); the router reads
      // its bf16 input as it is.
      EXPECT_GT(bf16_rows, 4u * layers + 2);
      EXPECT_EQ(f32_rows, 0u);
    }
    int rstd = 0;
    stash.ForEachTensor([&](const Tensor& t) {
      if (t.defined() && t.ndim() == 1 && t.dim(0) == 10 &&  // 2 x 5 tokens
          t.dtype() != DType::kI32 && t.dtype() != DType::kI64) {
        ++rstd;
        EXPECT_EQ(t.dtype(), DType::kF32) << "a norm's rstd " << t.DebugString();
      }
    });
    EXPECT_GE(rstd, 2 * layers + 1);
  }
}

// The router's map stays f32 under BF16: an f32 input gives the FP32 run's
// bits, and a bf16 one (taken as it is, the weight on three bf16 parts)
// the f32 logits of the same values up to f32 accumulation.
TEST(ModelPrecisionTest, TheRouterKeepsFp32Operands) {
  const Tensor x_bf16 = RandomTensor({10, 8}, 4, 1.0, DType::kBF16);
  Tensor x = Tensor::Empty(x_bf16.shape(), DType::kF32);
  x.CopyFrom(x_bf16);
  std::vector<double> logits[3];
  for (int run = 0; run < 3; ++run) {
    config::RunConfig cfg = testing::TinyConfig(4);
    cfg.mutable_train()->set_precision(run == 0 ? config::TrainConfig::FP32
                                                : config::TrainConfig::BF16);
    ParamRegistry registry;
    Router router(registry, cfg, 0, "layers.0.moe", nullptr, 0);
    Must(registry.Materialize(9, DType::kF32, Device::kCPU));
    const ExecContext ctx;
    Must(router.PrepareStep(ctx, DType::kF32));
    EXPECT_EQ(router.takes_bf16_input(), run != 0);
    Must(router.Forward(ctx, run == 2 ? x_bf16 : x));
    EXPECT_EQ(router.logits().dtype(), DType::kF32);
    logits[run] = router.logits().ToVector();
  }
  EXPECT_EQ(logits[0], logits[1]);
  double max_abs = 0;
  for (double v : logits[0]) max_abs = std::max(max_abs, std::abs(v));
  for (size_t i = 0; i < logits[0].size(); ++i) {
    EXPECT_NEAR(logits[2][i], logits[0][i], 1e-6 * max_abs) << "logit " << i;
    EXPECT_NE(logits[2][i], 0.0);
  }
}

}  // namespace
}  // namespace scalemoe
