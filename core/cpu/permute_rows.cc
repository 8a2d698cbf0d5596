// Token permutation ops on the CPU: sort assignments by expert, and the row
// gather / weighted scatter-add / gathered row dot that permute, combine and
// their backward are made of.
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"

namespace scalemoe::cpu {
namespace {

void CheckIndexed(const char* what, const Tensor& rows, const Tensor& indices,
                  const Tensor& table) {
  SM_CHECK_MSG(indices.dtype() == DType::kI32 && indices.numel() == rows.dim(0) &&
                   rows.ndim() == 2 && table.ndim() == 2 && rows.dim(1) == table.dim(1) &&
                   rows.dtype() == table.dtype() && rows.is_contiguous() &&
                   table.is_contiguous(),
               what, ": rows ", rows.DebugString(), " indices ", indices.DebugString(),
               " table ", table.DebugString());
}

template <typename T>
void GatherTyped(int64_t m, int64_t c, const T* x, const int32_t* idx, int divisor, T* out) {
  for (int64_t i = 0; i < m; ++i) {
    T* o = out + i * c;
    if (idx[i] < 0) {
      for (int64_t j = 0; j < c; ++j) o[j] = T{};
      continue;
    }
    const T* xr = x + static_cast<int64_t>(idx[i] / divisor) * c;
    for (int64_t j = 0; j < c; ++j) o[j] = xr[j];
  }
}

template <typename T>
void ScatterTyped(int64_t m, int64_t c, const T* y, const int32_t* idx, int divisor,
                  const T* w, T* out) {
  for (int64_t i = 0; i < m; ++i) {
    if (idx[i] < 0) continue;
    const T wi = w ? w[i] : T(1);
    T* o = out + static_cast<int64_t>(idx[i] / divisor) * c;
    for (int64_t j = 0; j < c; ++j) o[j] += wi * y[i * c + j];
  }
}

template <typename T>
void DotTyped(int64_t m, int64_t c, const T* x, const int32_t* idx, int divisor, const T* y,
              T* out) {
  for (int64_t i = 0; i < m; ++i) {
    T acc = 0;
    if (idx[i] >= 0) {
      const T* xr = x + static_cast<int64_t>(idx[i] / divisor) * c;
      for (int64_t j = 0; j < c; ++j) acc += xr[j] * y[i * c + j];
    }
    out[i] = acc;
  }
}

}  // namespace

void SortByExpert(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept,
                  int num_experts, const Tensor& perm_slot, const Tensor& counts) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "SortByExpert: CUDA path not in this build");
  const int64_t m = expert_ids.numel();
  SM_CHECK_MSG(expert_ids.dtype() == DType::kI32 && kept.dtype() == DType::kI32 &&
                   kept.numel() == m && perm_slot.dtype() == DType::kI32 &&
                   perm_slot.numel() == m && counts.dtype() == DType::kI64 &&
                   counts.numel() == num_experts,
               "SortByExpert: ids ", expert_ids.DebugString(), " kept ", kept.DebugString(),
               " perm_slot ", perm_slot.DebugString(), " counts ", counts.DebugString());
  const int32_t* ids = expert_ids.data<int32_t>();
  const int32_t* keep = kept.data<int32_t>();
  int64_t* cnt = counts.data<int64_t>();
  for (int e = 0; e < num_experts; ++e) cnt[e] = 0;
  for (int64_t i = 0; i < m; ++i) {
    SM_CHECK_MSG(ids[i] >= 0 && ids[i] < num_experts, "SortByExpert: expert id ", ids[i]);
    if (keep[i]) ++cnt[ids[i]];
  }
  std::vector<int64_t> next(num_experts, 0);  // counting sort: stable in slot order
  for (int e = 1; e < num_experts; ++e) next[e] = next[e - 1] + cnt[e - 1];
  int32_t* out = perm_slot.data<int32_t>();
  for (int64_t i = 0; i < m; ++i) out[i] = -1;
  for (int64_t i = 0; i < m; ++i) {
    if (keep[i]) out[next[ids[i]]++] = static_cast<int32_t>(i);
  }
}

void GatherRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "GatherRows: CUDA path not in this build");
  CheckIndexed("GatherRows", out, indices, x);
  const int64_t m = out.dim(0), c = out.dim(1);
  DispatchFloat(x, [&](auto t) {  // a copy of rows: bf16 moves as it is
    using T = decltype(t);
    GatherTyped(m, c, x.data<T>(), indices.data<int32_t>(), divisor, out.data<T>());
  });
}

void GatherScaledRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                      const Tensor& weights, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "GatherScaledRows: CUDA path not in this build");
  SM_CHECK_MSG(weights.defined() && weights.numel() == x.dim(0) * divisor &&
                   weights.is_contiguous() &&
                   (weights.dtype() == x.dtype() ||
                    (weights.dtype() == DType::kF32 && x.dtype() == DType::kBF16)),
               "GatherScaledRows: weights ", weights.DebugString(), " for x ", x.DebugString(),
               " and divisor ", divisor, " (x's dtype, or f32 for bf16 x)");
  // The reference is the two passes it fuses: their bits by construction.
  GatherRows(ctx, x, indices, divisor, out);
  const int64_t m = out.dim(0);
  Tensor row = Tensor::Empty({m, 1}, weights.dtype());
  GatherRows(ctx, weights.View({weights.numel(), 1}), indices, 1, row);
  ScaleRowsCols(ctx, out, row.View({m}), Tensor(), out);
}

void ScatterAddRows(const ExecContext& ctx, const Tensor& y, const Tensor& indices, int divisor,
                    const Tensor& weights, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "ScatterAddRows: CUDA path not in this build");
  CheckIndexed("ScatterAddRows", y, indices, out);
  SM_CHECK_MSG(!weights.defined() ||
                   (weights.numel() == y.dim(0) && weights.dtype() == y.dtype()),
               "ScatterAddRows weights ", weights.DebugString());
  const int64_t m = y.dim(0), c = y.dim(1);
  if (y.dtype() == DType::kF64) {
    ScatterTyped(m, c, y.data<double>(), indices.data<int32_t>(), divisor,
                 weights.defined() ? weights.data<double>() : nullptr, out.data<double>());
  } else {
    ScatterTyped(m, c, y.data<float>(), indices.data<int32_t>(), divisor,
                 weights.defined() ? weights.data<float>() : nullptr, out.data<float>());
  }
}

void GatheredRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                    const Tensor& y, const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "GatheredRowDot: CUDA path not in this build");
  CheckIndexed("GatheredRowDot", y, indices, x);
  SM_CHECK_MSG(out.numel() == y.dim(0) && out.dtype() == y.dtype(), "GatheredRowDot out ",
               out.DebugString());
  const int64_t m = y.dim(0), c = y.dim(1);
  if (y.dtype() == DType::kF64) {
    DotTyped(m, c, x.data<double>(), indices.data<int32_t>(), divisor, y.data<double>(),
             out.data<double>());
  } else {
    DotTyped(m, c, x.data<float>(), indices.data<int32_t>(), divisor, y.data<float>(),
             out.data<float>());
  }
}

}  // namespace scalemoe::cpu
