// CopyHeads (CPU): y = x over head vectors, either token-strided
// (core/head_rows.h), a row of D elements' bytes at a time.
#include <cstring>

#include "core/cpu/cpu_ops.h"
#include "core/head_rows.h"

namespace scalemoe::cpu {

void CopyHeads(const ExecContext&, const Tensor& x, const Tensor& y) {
  const char* op = "CopyHeads";
  SM_CHECK_MSG(x.device() == Device::kCPU && y.device() == Device::kCPU && x.shape() == y.shape() &&
                   x.dtype() == y.dtype(),
               op, " y ", y.DebugString(), " for x ", x.DebugString(), " (same shape and dtype)");
  const HeadRows xr = CheckHeadRows(x, op, "x"), yr = CheckHeadRows(y, op, "y");
  const size_t elem = DTypeSize(x.dtype()), row_bytes = static_cast<size_t>(xr.dim) * elem;
  const auto* src = static_cast<const char*>(x.raw_data());
  auto* dst = static_cast<char*>(y.raw_data());
  for (int64_t r = 0; r < xr.rows(); ++r) {
    std::memmove(dst + yr.offset(r) * elem, src + xr.offset(r) * elem, row_bytes);
  }
}

}  // namespace scalemoe::cpu
