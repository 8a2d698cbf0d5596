// MakeMatrixGroup and UpdateMatrixGroup (core/ops.h): the grouped GEMMs' table of per-group
// matrices, their addresses uploaded once to the context's device.
#include <cstring>

#include "core/ops.h"

namespace scalemoe::ops {

MatrixGroup MakeMatrixGroup(const ExecContext& ctx, std::vector<Tensor> matrices) {
  MatrixGroup group;
  const int64_t g = static_cast<int64_t>(matrices.size());
  if (g > 0) {
    const Tensor& first = matrices.front();
    SM_CHECK_MSG(first.ndim() == 2, "MakeMatrixGroup: matrices must be 2-D, got ",
                 first.DebugString());
    group.rows = first.dim(0);
    group.cols = first.dim(1);
    group.dtype = first.dtype();
  }
  Tensor addresses = Tensor::Empty({g}, DType::kI64);
  auto* out = static_cast<int64_t*>(addresses.raw_data());
  for (int64_t i = 0; i < g; ++i) {
    const Tensor& m = matrices[i];
    SM_CHECK_MSG(m.shape() == Shape({group.rows, group.cols}) && m.dtype() == group.dtype &&
                     m.is_contiguous() && m.device() == ctx.device(),
                 "MakeMatrixGroup: matrix ", i, " is ", m.DebugString(), ", the group's are [",
                 group.rows, ", ", group.cols, "] ", DTypeName(group.dtype), " on ",
                 DeviceName(ctx.device()));
    const void* p = m.raw_data();
    std::memcpy(&out[i], &p, sizeof(p));
  }
  group.addresses = ctx.ToDevice(addresses);
  group.matrices = std::move(matrices);
  return group;
}

void UpdateMatrixGroup(const ExecContext& ctx, std::vector<Tensor> matrices, MatrixGroup& group) {
  bool same = group.size() == static_cast<int64_t>(matrices.size()) &&
              group.addresses.device() == ctx.device();
  for (size_t i = 0; same && i < matrices.size(); ++i) {
    const Tensor& a = matrices[i];
    const Tensor& b = group.matrices[i];
    same = a.raw_data() == b.raw_data() && a.dtype() == b.dtype() && a.shape() == b.shape();
  }
  if (!same) group = MakeMatrixGroup(ctx, std::move(matrices));
}

}  // namespace scalemoe::ops
