// Causal softmax attention with grouped-query heads, forward and backward
// (CPU reference, f32/f64; accumulations in f64).
#include <cmath>
#include <vector>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

struct Dims {
  int64_t b, t, h, kv, d;
  int64_t QIndex(int64_t bi, int64_t ti, int64_t hi) const { return ((bi * t + ti) * h + hi) * d; }
  int64_t KIndex(int64_t bi, int64_t ti, int64_t ki) const {
    return ((bi * t + ti) * kv + ki) * d;
  }
  int64_t PIndex(int64_t bi, int64_t hi, int64_t ti) const { return ((bi * h + hi) * t + ti) * t; }
};

Dims Check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs) {
  SM_CHECK_MSG(q.ndim() == 4 && q.is_contiguous() && q.device() == Device::kCPU,
               "CausalAttention q must be [B, T, H, D], got ", q.DebugString());
  Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  for (const Tensor* t : {&k, &v}) {
    SM_CHECK_MSG(t->ndim() == 4 && t->dim(0) == d.b && t->dim(1) == d.t && t->dim(2) == d.kv &&
                     t->dim(3) == d.d && t->dtype() == q.dtype() && t->is_contiguous(),
                 "CausalAttention k/v ", t->DebugString(), " for q ", q.DebugString());
  }
  SM_CHECK_MSG(d.kv > 0 && d.h % d.kv == 0, "CausalAttention: kv heads ", d.kv,
               " must divide query heads ", d.h);
  SM_CHECK_MSG(probs.numel() == d.b * d.h * d.t * d.t && probs.dtype() == q.dtype() &&
                   probs.is_contiguous(),
               "CausalAttention probs ", probs.DebugString());
  return d;
}

template <typename T>
void Forward(const Dims& d, const T* q, const T* k, const T* v, T* out, T* probs) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.d));
  const int64_t group = d.h / d.kv;
  std::vector<double> acc(d.d);
  for (int64_t bi = 0; bi < d.b; ++bi) {
    for (int64_t hi = 0; hi < d.h; ++hi) {
      const int64_t ki = hi / group;
      for (int64_t ti = 0; ti < d.t; ++ti) {
        const T* qt = q + d.QIndex(bi, ti, hi);
        T* p = probs + d.PIndex(bi, hi, ti);
        double max = -INFINITY;
        std::vector<double> s(ti + 1);
        for (int64_t j = 0; j <= ti; ++j) {
          const T* kj = k + d.KIndex(bi, j, ki);
          double dot = 0;
          for (int64_t c = 0; c < d.d; ++c) dot += static_cast<double>(qt[c]) * kj[c];
          s[j] = dot * scale;
          max = std::max(max, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= ti; ++j) {
          s[j] = std::exp(s[j] - max);
          sum += s[j];
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < d.t; ++j) {
          if (j > ti) {
            p[j] = T(0);
            continue;
          }
          const double pj = s[j] / sum;
          p[j] = static_cast<T>(pj);
          const T* vj = v + d.KIndex(bi, j, ki);
          for (int64_t c = 0; c < d.d; ++c) acc[c] += pj * vj[c];
        }
        T* ot = out + d.QIndex(bi, ti, hi);
        for (int64_t c = 0; c < d.d; ++c) ot[c] = static_cast<T>(acc[c]);
      }
    }
  }
}

template <typename T>
void Backward(const Dims& d, const T* q, const T* k, const T* v, const T* probs, const T* dout,
              T* dq, T* dk, T* dv) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.d));
  const int64_t group = d.h / d.kv;
  const int64_t kv_numel = d.b * d.t * d.kv * d.d;
  // Accumulate k/v gradients in f64 over the query heads and positions.
  std::vector<double> dk_acc(kv_numel, 0.0), dv_acc(kv_numel, 0.0), dp(d.t), dq_acc(d.d);
  for (int64_t bi = 0; bi < d.b; ++bi) {
    for (int64_t hi = 0; hi < d.h; ++hi) {
      const int64_t ki = hi / group;
      for (int64_t ti = 0; ti < d.t; ++ti) {
        const T* p = probs + d.PIndex(bi, hi, ti);
        const T* go = dout + d.QIndex(bi, ti, hi);
        const T* qt = q + d.QIndex(bi, ti, hi);
        double pdp = 0;
        for (int64_t j = 0; j <= ti; ++j) {
          const int64_t kj = d.KIndex(bi, j, ki);
          double dot = 0;
          for (int64_t c = 0; c < d.d; ++c) {
            dot += static_cast<double>(go[c]) * v[kj + c];
            dv_acc[kj + c] += static_cast<double>(p[j]) * go[c];
          }
          dp[j] = dot;
          pdp += static_cast<double>(p[j]) * dot;
        }
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
        for (int64_t j = 0; j <= ti; ++j) {
          const double ds = static_cast<double>(p[j]) * (dp[j] - pdp) * scale;
          const int64_t kj = d.KIndex(bi, j, ki);
          for (int64_t c = 0; c < d.d; ++c) {
            dq_acc[c] += ds * k[kj + c];
            dk_acc[kj + c] += ds * qt[c];
          }
        }
        T* dqt = dq + d.QIndex(bi, ti, hi);
        for (int64_t c = 0; c < d.d; ++c) dqt[c] = static_cast<T>(dq_acc[c]);
      }
    }
  }
  for (int64_t i = 0; i < kv_numel; ++i) {
    dk[i] = static_cast<T>(dk_acc[i]);
    dv[i] = static_cast<T>(dv_acc[i]);
  }
}

}  // namespace

void CausalAttention(const ExecContext&, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& probs) {
  const Dims d = Check(q, k, v, probs);
  SM_CHECK_MSG(out.numel() == q.numel() && out.dtype() == q.dtype() && out.is_contiguous(),
               "CausalAttention out ", out.DebugString());
  if (q.dtype() == DType::kF64) {
    Forward(d, q.data<double>(), k.data<double>(), v.data<double>(), out.data<double>(),
            probs.data<double>());
  } else {
    Forward(d, q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(),
            probs.data<float>());
  }
}

void CausalAttentionBackward(const ExecContext&, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Tensor& probs, const Tensor& d_out,
                             const Tensor& d_q, const Tensor& d_k, const Tensor& d_v) {
  const Dims d = Check(q, k, v, probs);
  SM_CHECK_MSG(d_out.numel() == q.numel() && d_q.numel() == q.numel() &&
                   d_k.numel() == k.numel() && d_v.numel() == v.numel(),
               "CausalAttentionBackward gradient shapes");
  if (q.dtype() == DType::kF64) {
    using T = double;
    Backward(d, q.data<T>(), k.data<T>(), v.data<T>(), probs.data<T>(), d_out.data<T>(),
             d_q.data<T>(), d_k.data<T>(), d_v.data<T>());
  } else {
    using T = float;
    Backward(d, q.data<T>(), k.data<T>(), v.data<T>(), probs.data<T>(), d_out.data<T>(),
             d_q.data<T>(), d_k.data<T>(), d_v.data<T>());
  }
}

}  // namespace scalemoe::cpu
