#include "optim/adamw.h"

#include <cmath>

namespace scalemoe {
namespace {

struct AdamWScalars {
  double lr, weight_decay, beta1, beta2, eps, bias_correction1, bias_correction2;
};

template <typename T>
void AdamWKernel(T* p, const T* g, T* m, T* v, int64_t n, const AdamWScalars& s) {
  const T decay = static_cast<T>(1.0 - s.lr * s.weight_decay);
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - s.beta1), one_minus_b2 = static_cast<T>(1.0 - s.beta2);
  const T step_size = static_cast<T>(s.lr / s.bias_correction1);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(s.bias_correction2));
  const T eps = static_cast<T>(s.eps);
  for (int64_t i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] = b1 * m[i] + one_minus_b1 * g[i];
    v[i] = b2 * v[i] + one_minus_b2 * g[i] * g[i];
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

void CheckRange(const Tensor& t, int64_t length, DType dtype, const char* what) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.is_contiguous() && t.numel() == length &&
                   t.dtype() == dtype,
               "AdamW::Step ", what, " ", t.DebugString(), ": need contiguous CPU ",
               DTypeName(dtype), " of ", length, " elements");
}

}  // namespace

AdamW::AdamW(const AdamWOptions& options, const ParamGroups& groups, int64_t begin, int64_t end,
             DType dtype, Device device)
    : options_(options), begin_(begin), end_(end), groups_(groups.groups()) {
  SM_CHECK_MSG(dtype == DType::kF32 || dtype == DType::kF64, "AdamW state dtype ",
               DTypeName(dtype), ": f32 or f64");
  SM_CHECK_MSG(device == Device::kCPU, "AdamW: CUDA path not in this build");
  for (const FlatSegment& s : groups.SegmentsIn(begin, end)) {
    if (groups_[s.group].rule == UpdateRule::kAdamW) segments_.push_back(s);
  }
  m_ = Tensor::Zeros({end - begin}, dtype, device);
  v_ = Tensor::Zeros({end - begin}, dtype, device);
}

void AdamW::Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
                 int64_t t) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "AdamW: CUDA path not in this build");
  SM_CHECK_MSG(t >= 1, "AdamW::Step update count ", t, " must be >= 1");
  const int64_t length = end_ - begin_;
  CheckRange(values, length, m_.dtype(), "values");
  CheckRange(grads, length, m_.dtype(), "grads");
  AdamWScalars s{};
  s.beta1 = options_.beta1;
  s.beta2 = options_.beta2;
  s.eps = options_.eps;
  s.bias_correction1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t));
  s.bias_correction2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t));
  for (const FlatSegment& seg : segments_) {
    const ParamGroup& g = groups_[seg.group];
    s.lr = lr * g.lr_mult;
    s.weight_decay = g.EffectiveWeightDecay(options_.weight_decay);
    const int64_t off = seg.begin - begin_, n = seg.end - seg.begin;
    if (m_.dtype() == DType::kF32) {
      AdamWKernel(values.data<float>() + off, grads.data<float>() + off, m_.data<float>() + off,
                  v_.data<float>() + off, n, s);
    } else {
      AdamWKernel(values.data<double>() + off, grads.data<double>() + off,
                  m_.data<double>() + off, v_.data<double>() + off, n, s);
    }
  }
}

}  // namespace scalemoe
