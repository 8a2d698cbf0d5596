// One whole-model training step for the precision tests (the GPU's
// tests/model/cuda_model_test.cc and the CPU's forced_routing_test.cc share
// it, so the CPU runs the same code the GPU check relies on): the same
// parameters on any context, the loss, every parameter's gradient and the
// routing each MoE layer chose, on the host; optionally with the routing held
// fixed to another run's (MoeTransformer::ForceRouting), so that a bf16 run
// compared with an fp32 one measures rounding, not near-tie tokens that moved
// to other experts.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

namespace scalemoe::testing {

struct StepResult {
  double loss = 0;
  std::vector<Tensor> grads;   // host copies, per parameter
  std::vector<Tensor> values;  // host copies of the values the step ran from
  std::vector<std::string> names;
  std::vector<Tensor> routing;  // host copies of each MoE layer's expert_ids [B*T, K]
};

// One forward+backward of `cfg` on `ctx`, from the values in `values` (a
// host flat buffer of the registry's layout). The micro-batch is [2, seq]
// of ids below `vocab`. `dtype` f64 (CPU only): the reference in f64 from
// the same (f32) values. `routing` (host tensors, one per MoE layer, e.g.
// another StepResult's; empty: the model's own top-k) is forced on every
// MoE layer.
inline StepResult WholeModelStep(const config::RunConfig& cfg, const ExecContext& ctx,
                                 const Tensor& values, int seq = 5, int vocab = 16,
                                 DType dtype = DType::kF32,
                                 const std::vector<Tensor>& routing = {}) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  Must(registry.Materialize(cfg.train().seed(), dtype, ctx.device()));
  if (dtype == values.dtype()) {
    Must(ctx.CopyAcross(values, registry.flat_values()));
  } else {
    ops::Copy(ctx, values, registry.flat_values());
  }
  if (!routing.empty()) {
    std::vector<Tensor> on_device;
    for (const Tensor& ids : routing) on_device.push_back(ctx.ToDevice(ids));
    Must(model.ForceRouting(ctx, on_device));
  }
  std::vector<int32_t> ids(2 * seq), next(2 * seq);
  for (int i = 0; i < 2 * seq; ++i) {
    ids[i] = (7 * i + 3) % vocab;
    next[i] = (5 * i + 1) % vocab;
  }
  const Tensor tokens = Tensor::FromBlob(ids.data(), {2, seq}, DType::kI32, Device::kCPU);
  const Tensor targets = Tensor::FromBlob(next.data(), {2, seq}, DType::kI32, Device::kCPU);
  registry.ZeroGrads();
  Must(model.PrepareStep(ctx));
  StepResult r;
  r.loss = Must(model.Forward(ctx, tokens, targets)).total;
  Must(model.Backward(ctx, 1.0));
  Must(model.FinishBackward(ctx));
  Must(ctx.Synchronize());
  Must(ctx.status());
  for (const auto& p : registry.params()) {
    r.grads.push_back(ctx.ToHost(p->grad).Clone());
    r.values.push_back(ctx.ToHost(p->value).Clone());
    r.names.push_back(p->spec.name);
  }
  for (const Tensor& layer_ids : model.RoutedExperts()) {
    r.routing.push_back(ctx.ToHost(layer_ids).Clone());
  }
  return r;
}

// The CPU registry's initial values with every scale vector moved off 1.
inline Tensor StartValues(const config::RunConfig& cfg) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  Must(registry.Materialize(cfg.train().seed(), DType::kF32, Device::kCPU));
  PerturbScaleVectors(registry, 21);
  return registry.flat_values().Clone();
}

inline double Norm(const Tensor& t) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.At(i) * t.At(i);
  return std::sqrt(s);
}

inline double Cosine(const Tensor& a, const Tensor& b) {
  double dot = 0;
  for (int64_t j = 0; j < a.numel(); ++j) dot += a.At(j) * b.At(j);
  return dot / (Norm(a) * Norm(b));
}

// The smallest gradient cosine of `run` with `ref` over the gradients that
// are not symmetry zeros (kSymmetryFloor), and whose it is.
struct MinCosine {
  double cosine = 1;
  std::string name;
};
inline MinCosine SmallestCosine(const StepResult& ref, const StepResult& run) {
  MinCosine m;
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    if (Norm(ref.grads[i]) < kSymmetryFloor) continue;
    const double c = Cosine(ref.grads[i], run.grads[i]);
    if (!(c >= m.cosine)) m = {c, ref.names[i]};  // NaN counts as the smallest
  }
  return m;
}

// bf16 GEMM operands track the fp32 run: loss within 1%, every gradient's
// cosine >= 0.999; a symmetry zero stays one.
inline void ExpectBf16Tracks(const StepResult& fp32, const StepResult& bf16) {
  EXPECT_NEAR(bf16.loss, fp32.loss, 1e-2 * std::abs(fp32.loss));
  ASSERT_EQ(bf16.grads.size(), fp32.grads.size());
  for (size_t i = 0; i < fp32.grads.size(); ++i) {
    if (Norm(fp32.grads[i]) < kSymmetryFloor) {
      EXPECT_LT(Norm(bf16.grads[i]), kSymmetryFloor) << fp32.names[i];
      continue;
    }
    EXPECT_GE(Cosine(fp32.grads[i], bf16.grads[i]), 0.999) << fp32.names[i];
  }
}

// Assignments (token, slot) whose expert differs between two runs' routings.
inline int64_t MovedAssignments(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  int64_t moved = 0;
  for (size_t l = 0; l < a.size() && l < b.size(); ++l) {
    for (int64_t i = 0; i < a[l].numel(); ++i) moved += a[l].At(i) != b[l].At(i);
  }
  return moved;
}

}  // namespace scalemoe::testing
