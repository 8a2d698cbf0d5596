// The MoE combine as a per-token sum on the CPU: CombineSlots (each token
// adds its own kept slots' rows, in slot order) and SlotRowDot (the combine
// weights' gradient). Deterministic by construction: no two tokens write the
// same output row, so a CUDA kernel needs no atomics either. bf16 rows take
// f32 weights (CombineSlots) and give an f32 out (SlotRowDot) as well as
// bf16 ones: the router's probabilities and their gradient stay f32.
#include <type_traits>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/moe_cpu_util.h"

namespace scalemoe::cpu {
namespace {

using moe_util::CheckCpu;
using moe_util::Compute;
using moe_util::ForFloat;
using moe_util::Load;
using moe_util::Store;

constexpr DType kI32 = DType::kI32;

// rows [M, C], x_or_out [N, C], slot_row [N, K]: shapes and dtypes agree.
void CheckSlots(const char* op, const Tensor& rows, const Tensor& slot_row,
                const Tensor& per_token) {
  CheckCpu(op, "rows", rows);
  CheckCpu(op, "slot_row", slot_row, &kI32);
  CheckCpu(op, "token rows", per_token);
  SM_CHECK_MSG(rows.ndim() == 2 && per_token.ndim() == 2 && rows.dim(1) == per_token.dim(1) &&
                   rows.dtype() == per_token.dtype() && slot_row.ndim() == 2 &&
                   slot_row.dim(0) == per_token.dim(0),
               op, ": rows ", rows.DebugString(), " slot_row ", slot_row.DebugString(),
               " token rows ", per_token.DebugString());
}

// f32 and f64 add each slot's term straight into the output row; bf16 sums
// a token's terms in f32 and rounds once. W is the weights' storage type: T,
// or f32 for bf16 T (loaded as they are: the f32 router's probabilities).
template <typename T, typename W = T>
void CombineTyped(int64_t n, int64_t k, int64_t c, int64_t m, const T* rows, const int32_t* sr,
                  const W* w, T* out) {
  using A = Compute<T>;
  constexpr bool kDirect = std::is_same_v<A, T>;
  std::vector<A> acc(kDirect ? 0 : c);
  for (int64_t t = 0; t < n; ++t) {
    T* o = out + t * c;
    if constexpr (!kDirect) {
      for (int64_t i = 0; i < c; ++i) acc[i] = Load(o[i]);
    }
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = sr[t * k + j];
      if (r < 0) continue;
      SM_CHECK_MSG(r < m, "CombineSlots: row ", r, " of token ", t, " not in [0, ", m, ")");
      const A wj = w ? Load(w[t * k + j]) : A(1);
      const T* y = rows + static_cast<int64_t>(r) * c;
      if constexpr (kDirect) {
        for (int64_t i = 0; i < c; ++i) o[i] += wj * y[i];
      } else {
        for (int64_t i = 0; i < c; ++i) acc[i] += wj * Load(y[i]);
      }
    }
    if constexpr (!kDirect) {
      for (int64_t i = 0; i < c; ++i) o[i] = Store<T>(acc[i]);
    }
  }
}

// O is out's storage type: T, or f32 for bf16 T (the f32 sum stored
// without a bf16 rounding).
template <typename T, typename O = T>
void DotTyped(int64_t n, int64_t k, int64_t c, int64_t m, const T* x, const int32_t* sr,
              const T* rows, O* out) {
  using A = Compute<T>;
  for (int64_t t = 0; t < n; ++t) {
    const T* xt = x + t * c;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = sr[t * k + j];
      A acc = 0;
      if (r >= 0) {
        SM_CHECK_MSG(r < m, "SlotRowDot: row ", r, " of token ", t, " not in [0, ", m, ")");
        const T* y = rows + static_cast<int64_t>(r) * c;
        for (int64_t i = 0; i < c; ++i) acc += Load(xt[i]) * Load(y[i]);
      }
      out[t * k + j] = Store<O>(acc);
    }
  }
}

}  // namespace

void CombineSlots(const ExecContext& ctx, const Tensor& rows, const Tensor& slot_row,
                  const Tensor& weights, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "CombineSlots: CUDA path not in this build");
  CheckSlots("CombineSlots", rows, slot_row, out);
  const int64_t n = out.dim(0), k = slot_row.dim(1), c = out.dim(1), m = rows.dim(0);
  const bool f32_weights =
      weights.defined() && weights.dtype() == DType::kF32 && rows.dtype() == DType::kBF16;
  if (weights.defined()) {
    CheckCpu("CombineSlots", "weights", weights);
    SM_CHECK_MSG(weights.numel() == n * k && (weights.dtype() == rows.dtype() || f32_weights),
                 "CombineSlots: weights ", weights.DebugString(), " for slot_row ",
                 slot_row.DebugString(), " and rows ", rows.DebugString(),
                 " (weights take the rows' dtype, or f32 for bf16 rows)");
  }
  if (f32_weights) {
    CombineTyped<bf16, float>(n, k, c, m, rows.data<bf16>(), slot_row.data<int32_t>(),
                              weights.data<float>(), out.data<bf16>());
    return;
  }
  ForFloat(out, [&](auto zero) {
    using T = decltype(zero);
    CombineTyped<T>(n, k, c, m, rows.data<T>(), slot_row.data<int32_t>(),
                    weights.defined() ? weights.data<T>() : nullptr, out.data<T>());
  });
}

void SlotRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& slot_row,
                const Tensor& rows, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "SlotRowDot: CUDA path not in this build");
  CheckSlots("SlotRowDot", rows, slot_row, x);
  CheckCpu("SlotRowDot", "out", out);
  const int64_t n = x.dim(0), k = slot_row.dim(1), c = x.dim(1), m = rows.dim(0);
  const bool f32_out = out.dtype() == DType::kF32 && x.dtype() == DType::kBF16;
  SM_CHECK_MSG(out.numel() == n * k && (out.dtype() == x.dtype() || f32_out), "SlotRowDot: out ",
               out.DebugString(), " for slot_row ", slot_row.DebugString(), " and x ",
               x.DebugString(), " (out takes x's dtype, or f32 for bf16 x)");
  if (f32_out) {
    DotTyped<bf16, float>(n, k, c, m, x.data<bf16>(), slot_row.data<int32_t>(), rows.data<bf16>(),
                          out.data<float>());
    return;
  }
  ForFloat(x, [&](auto zero) {
    using T = decltype(zero);
    DotTyped<T>(n, k, c, m, x.data<T>(), slot_row.data<int32_t>(), rows.data<T>(),
                out.data<T>());
  });
}

}  // namespace scalemoe::cpu
