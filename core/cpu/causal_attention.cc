// Causal softmax attention with grouped-query heads, forward and backward
// (CPU reference). f32 and f64 accumulate in f64; bf16 is loaded into f32,
// computed in f32 and rounded on store. The forward keeps only the per-row
// log-sum-exp; the backward recomputes the probabilities from q, k and it
// (FlashAttention-2): P = exp(q·kᵀ/√D − lse), D_i = Σ d_out ⊙ out,
// dS = P ⊙ (dP − D_i).
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"
#include "core/head_rows.h"

namespace scalemoe::cpu {
namespace {

// The type a storage type T is accumulated in here: f64 for f32 and f64
// (the reference the GPU's f32 is measured against), f32 for bf16.
template <typename T>
struct AttnAccOf {
  using type = double;
};
template <>
struct AttnAccOf<bf16> {
  using type = float;
};
template <typename T>
using AttnAcc = typename AttnAccOf<T>::type;

// The log-sum-exp's element type: f64 for f64 inputs, else f32.
template <typename T>
using LseOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct Dims {
  int64_t b, t, h, kv, d;
  int64_t QIndex(int64_t bi, int64_t ti, int64_t hi) const { return ((bi * t + ti) * h + hi) * d; }
  int64_t KIndex(int64_t bi, int64_t ti, int64_t ki) const {
    return ((bi * t + ti) * kv + ki) * d;
  }
  int64_t LIndex(int64_t bi, int64_t hi, int64_t ti) const { return (bi * h + hi) * t + ti; }
};

Dims Check(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
           const Tensor& lse) {
  SM_CHECK_MSG(q.ndim() == 4 && q.is_contiguous() && q.device() == Device::kCPU, op,
               " q must be [B, T, H, D], got ", q.DebugString());
  Dims d{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  for (const Tensor* t : {&k, &v}) {
    SM_CHECK_MSG(t->ndim() == 4 && t->dim(0) == d.b && t->dim(1) == d.t && t->dim(2) == d.kv &&
                     t->dim(3) == d.d && t->dtype() == q.dtype() && t->is_contiguous() &&
                     t->device() == Device::kCPU,
                 op, " k/v ", t->DebugString(), " for q ", q.DebugString());
  }
  SM_CHECK_MSG(d.kv > 0 && d.h % d.kv == 0, op, ": kv heads ", d.kv, " must divide query heads ",
               d.h);
  SM_CHECK_MSG(out.shape() == q.shape() && out.dtype() == q.dtype() && out.is_contiguous() &&
                   out.device() == Device::kCPU,
               op, " out ", out.DebugString(), " for q ", q.DebugString());
  const DType lse_dtype = q.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  SM_CHECK_MSG(lse.ndim() == 3 && lse.dim(0) == d.b && lse.dim(1) == d.h && lse.dim(2) == d.t &&
                   lse.dtype() == lse_dtype && lse.is_contiguous() && lse.device() == Device::kCPU,
               op, " lse must be [B, H, T] ", DTypeName(lse_dtype), ", got ", lse.DebugString());
  return d;
}

template <typename T>
void Forward(const Dims& d, const T* q, const T* k, const T* v, T* out, LseOf<T>* lse) {
  using A = AttnAcc<T>;
  const A scale = A(1) / std::sqrt(static_cast<A>(d.d));
  const int64_t group = d.h / d.kv;
  std::vector<A> acc(d.d), s(d.t);
  for (int64_t bi = 0; bi < d.b; ++bi) {
    for (int64_t hi = 0; hi < d.h; ++hi) {
      const int64_t ki = hi / group;
      for (int64_t ti = 0; ti < d.t; ++ti) {
        const T* qt = q + d.QIndex(bi, ti, hi);
        A max = -INFINITY;
        for (int64_t j = 0; j <= ti; ++j) {
          const T* kj = k + d.KIndex(bi, j, ki);
          A dot = 0;
          for (int64_t c = 0; c < d.d; ++c) dot += static_cast<A>(qt[c]) * static_cast<A>(kj[c]);
          s[j] = dot * scale;
          max = std::max(max, s[j]);
        }
        A sum = 0;
        for (int64_t j = 0; j <= ti; ++j) {
          s[j] = std::exp(s[j] - max);
          sum += s[j];
        }
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t j = 0; j <= ti; ++j) {
          const A pj = s[j] / sum;
          const T* vj = v + d.KIndex(bi, j, ki);
          for (int64_t c = 0; c < d.d; ++c) acc[c] += pj * static_cast<A>(vj[c]);
        }
        T* ot = out + d.QIndex(bi, ti, hi);
        for (int64_t c = 0; c < d.d; ++c) ot[c] = static_cast<T>(acc[c]);
        lse[d.LIndex(bi, hi, ti)] = static_cast<LseOf<T>>(max + std::log(sum));
      }
    }
  }
}

template <typename T>
void Backward(const Dims& d, const T* q, const T* k, const T* v, const T* out, const LseOf<T>* lse,
              const T* dout, T* dq, T* dk, T* dv) {
  using A = AttnAcc<T>;
  const A scale = A(1) / std::sqrt(static_cast<A>(d.d));
  const int64_t group = d.h / d.kv;
  const int64_t kv_numel = d.b * d.t * d.kv * d.d;
  // Accumulate k/v gradients over the query heads and positions.
  std::vector<A> dk_acc(kv_numel, A(0)), dv_acc(kv_numel, A(0)), dq_acc(d.d);
  for (int64_t bi = 0; bi < d.b; ++bi) {
    for (int64_t hi = 0; hi < d.h; ++hi) {
      const int64_t ki = hi / group;
      for (int64_t ti = 0; ti < d.t; ++ti) {
        const T* go = dout + d.QIndex(bi, ti, hi);
        const T* qt = q + d.QIndex(bi, ti, hi);
        const T* ot = out + d.QIndex(bi, ti, hi);
        const A row_lse = static_cast<A>(lse[d.LIndex(bi, hi, ti)]);
        // D_i = Σ_j P_ij dP_ij = d_out · out.
        A di = 0;
        for (int64_t c = 0; c < d.d; ++c) di += static_cast<A>(go[c]) * static_cast<A>(ot[c]);
        std::fill(dq_acc.begin(), dq_acc.end(), A(0));
        for (int64_t j = 0; j <= ti; ++j) {
          const int64_t kj = d.KIndex(bi, j, ki);
          A s = 0, dp = 0;
          for (int64_t c = 0; c < d.d; ++c) {
            s += static_cast<A>(qt[c]) * static_cast<A>(k[kj + c]);
            dp += static_cast<A>(go[c]) * static_cast<A>(v[kj + c]);
          }
          const A p = std::exp(s * scale - row_lse);
          const A ds = p * (dp - di) * scale;
          for (int64_t c = 0; c < d.d; ++c) {
            dv_acc[kj + c] += p * static_cast<A>(go[c]);
            dq_acc[c] += ds * static_cast<A>(k[kj + c]);
            dk_acc[kj + c] += ds * static_cast<A>(qt[c]);
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

// Token-strided q, k, v (and d_q, d_k, d_v): the kernels above run on
// contiguous copies (core/head_rows.h).
bool Contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (!t->is_contiguous()) return false;
  }
  return true;
}

}  // namespace

void CausalAttention(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const AttentionOptions& options) {
  if (!Contiguous({&q, &k, &v})) {
    return cpu::CausalAttention(ctx, ContiguousHeads(ctx, q), ContiguousHeads(ctx, k),
                                ContiguousHeads(ctx, v), out, lse, options);
  }
  const Dims d = Check("CausalAttention", q, k, v, out, lse);
  DispatchFloat(q, [&](auto zero) {
    using T = decltype(zero);
    Forward(d, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<LseOf<T>>());
  });
}

void CausalAttentionBackward(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Tensor& out, const Tensor& lse,
                             const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                             const Tensor& d_v, const AttentionOptions& options) {
  if (!Contiguous({&q, &k, &v, &d_q, &d_k, &d_v})) {
    BackwardOnContiguousHeads(ctx, q, k, v, d_q, d_k, d_v,
                              [&](const Tensor& q2, const Tensor& k2, const Tensor& v2,
                                  const Tensor& dq, const Tensor& dk, const Tensor& dv) {
                                cpu::CausalAttentionBackward(ctx, q2, k2, v2, out, lse, d_out, dq,
                                                             dk, dv, options);
                              });
    return;
  }
  const char* op = "CausalAttentionBackward";
  const Dims d = Check(op, q, k, v, out, lse);
  for (const auto& [grad, like, what] :
       {std::tuple{&d_out, &q, "d_out"}, {&d_q, &q, "d_q"}, {&d_k, &k, "d_k"}, {&d_v, &v, "d_v"}}) {
    SM_CHECK_MSG(grad->shape() == like->shape() && grad->dtype() == q.dtype() &&
                     grad->is_contiguous() && grad->device() == Device::kCPU,
                 op, " ", what, " ", grad->DebugString(), " for ", like->DebugString());
  }
  DispatchFloat(q, [&](auto zero) {
    using T = decltype(zero);
    Backward(d, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<LseOf<T>>(),
             d_out.data<T>(), d_q.data<T>(), d_k.data<T>(), d_v.data<T>());
  });
}

}  // namespace scalemoe::cpu
