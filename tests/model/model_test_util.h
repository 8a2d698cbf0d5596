// Helpers for the model tests: tiny configs and parameter-wise gradient
// checks (f64 central differences on a sample of each parameter's elements).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/params.h"
#include "core/philox.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe::testing {

// 2 layers, C=8, 2 heads, 1 kv head, V=16, T=5; MoE E=4, k=2 (num_experts
// 0 for the dense model).
inline config::RunConfig TinyConfig(int num_experts) {
  config::RunConfig cfg;
  config::ModelConfig& m = *cfg.mutable_model();
  m.set_num_layers(2);
  m.set_hidden_size(8);
  m.set_num_heads(2);
  m.set_num_kv_heads(1);
  m.set_ffn_hidden_size(12);
  m.set_vocab_size(16);
  m.set_seq_length(5);
  m.set_init_std(0.5);  // large enough that every path matters in the loss
  config::MoEConfig& moe = *cfg.mutable_moe();
  moe.set_num_experts(num_experts);
  moe.set_top_k(2);
  moe.set_expert_ffn_hidden_size(6);
  return cfg;
}

// Moves every scale-vector element away from 1 (γ = 1 hides swapped or
// missing factors) and returns the registry's scale-vector count.
inline int64_t PerturbScaleVectors(ParamRegistry& registry, uint64_t stream) {
  int64_t count = 0;
  for (const auto& p : registry.params()) {
    if (!IsScaleVector(p->spec.role)) continue;
    for (int64_t i = 0; i < p->local_numel(); ++i) {
      const double v = 1.0 + 0.3 * PhiloxNormal(77, stream + count, i);
      Tensor t = p->value.View({p->local_numel()}).Narrow(0, i, 1);
      t.Fill(v);
    }
    ++count;
  }
  return count;
}

// Gradient norms below this (for O(1) losses) are symmetry zeros.
constexpr double kSymmetryFloor = 1e-3;

// Central differences of `loss` w.r.t. up to `max_samples` evenly spread
// elements of `p`, compared (tensor-wise relative error) with p.grad.
inline double SampledGradError(const std::function<double()>& loss, Param& p,
                               int64_t max_samples = 16, double h = 1e-5) {
  const int64_t n = p.local_numel();
  const int64_t count = std::min(n, max_samples);
  Tensor analytic = Tensor::Empty({count}, DType::kF64);
  Tensor numeric = Tensor::Empty({count}, DType::kF64);
  double* values = p.value.data<double>();
  for (int64_t s = 0; s < count; ++s) {
    const int64_t i = s * n / count;
    numeric.data<double>()[s] = CentralDifference(loss, values + i, h);
    analytic.data<double>()[s] = p.grad.data<double>()[i];
  }
  // Relative error, but a gradient that vanishes by symmetry (e.g. the β of
  // an input γ whose every branch is re-normalized: only eps sees it) is
  // compared absolutely: the denominator never drops below kSymmetryFloor.
  double diff = 0, na = 0, nn = 0;
  for (int64_t s = 0; s < count; ++s) {
    const double a = analytic.At(s), b = numeric.At(s);
    diff += (a - b) * (a - b);
    na += a * a;
    nn += b * b;
  }
  return std::sqrt(diff) / std::max({std::sqrt(na), std::sqrt(nn), kSymmetryFloor});
}

// Checks every parameter of `registry` (EXPECT per parameter, named).
inline void ExpectAllParamGrads(ParamRegistry& registry, const std::function<double()>& loss,
                                int64_t max_samples = 16) {
  for (const auto& p : registry.params()) {
    if (!IsTrainable(p->spec.role)) continue;
    EXPECT_LT(SampledGradError(loss, *p, max_samples), kGradTolerance) << p->spec.name;
  }
}

}  // namespace scalemoe::testing
