// The MoE combine as a per-token sum on the CPU: CombineSlots (each token
// adds its own kept slots' rows, in slot order) and SlotRowDot (the combine
// weights' gradient). Deterministic by construction: no two tokens write the
// same output row, so a CUDA kernel needs no atomics either.
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
// a token's terms in f32 and rounds once.
template <typename T>
void CombineTyped(int64_t n, int64_t k, int64_t c, int64_t m, const T* rows, const int32_t* sr,
                  const T* w, T* out) {
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

template <typename T>
void DotTyped(int64_t n, int64_t k, int64_t c, int64_t m, const T* x, const int32_t* sr,
              const T* rows, T* out) {
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
      out[t * k + j] = Store<T>(acc);
    }
  }
}

}  // namespace

void CombineSlots(const ExecContext& ctx, const Tensor& rows, const Tensor& slot_row,
                  const Tensor& weights, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "CombineSlots: CUDA path not in this build");
  CheckSlots("CombineSlots", rows, slot_row, out);
  const int64_t n = out.dim(0), k = slot_row.dim(1), c = out.dim(1), m = rows.dim(0);
  if (weights.defined()) {
    CheckCpu("CombineSlots", "weights", weights);
    SM_CHECK_MSG(weights.numel() == n * k && weights.dtype() == rows.dtype(),
                 "CombineSlots: weights ", weights.DebugString(), " for slot_row ",
                 slot_row.DebugString());
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
  SM_CHECK_MSG(out.numel() == n * k && out.dtype() == x.dtype(), "SlotRowDot: out ",
               out.DebugString(), " for slot_row ", slot_row.DebugString());
  ForFloat(x, [&](auto zero) {
    using T = decltype(zero);
    DotTyped<T>(n, k, c, m, x.data<T>(), slot_row.data<int32_t>(), rows.data<T>(),
                out.data<T>());
  });
}

}  // namespace scalemoe::cpu
