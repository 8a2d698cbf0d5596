// MakeMatrixGroup and UpdateMatrixGroup (core/ops.h): the grouped GEMMs' table of per-group
// matrices, their addresses uploaded once to the context's device.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/matrix_group_checks.h"
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

void CheckMatrixGroup(const MatrixGroup& g, int64_t size, int64_t rows, int64_t cols, DType dtype,
                      Device device, bool optional, const char* op, const char* what) {
  if (optional && g.size() == 0) return;
  SM_CHECK_MSG(g.size() == size && g.rows == rows && g.cols == cols && g.dtype == dtype, op, " ",
               what, ": ", g.size(), " x [", g.rows, ", ", g.cols, "] ", DTypeName(g.dtype),
               ", expected ", size, " x [", rows, ", ", cols, "] ", DTypeName(dtype));
  if (device == Device::kCUDA) {
    SM_CHECK_MSG(
        g.addresses.numel() == g.size() && (g.size() == 0 || g.addresses.device() == Device::kCUDA),
        op, " ", what, ": the group's address table is not on the device (MakeMatrixGroup)");
  }
  for (const Tensor& m : g.matrices) {
    SM_CHECK_MSG(m.device() == device && m.is_contiguous(), op, " ", what, " needs contiguous ",
                 DeviceName(device), " tensors, got ", m.DebugString());
  }
}

void CheckOwnMatrices(const MatrixGroup& g, const char* op, const char* what) {
  std::vector<const void*> at;
  for (const Tensor& t : g.matrices) at.push_back(t.raw_data());
  std::sort(at.begin(), at.end());
  SM_CHECK_MSG(std::adjacent_find(at.begin(), at.end()) == at.end(), op, " ", what,
               ": two groups share a vector; each group's sums need a ", what, " of its own");
}

bool CheckOwnOrSharedMatrices(const MatrixGroup& g, const char* op, const char* what) {
  const bool shared =
      g.size() >= 2 && std::all_of(g.matrices.begin(), g.matrices.end(), [&](const Tensor& t) {
        return t.raw_data() == g.matrices.front().raw_data();
      });
  if (!shared) CheckOwnMatrices(g, op, what);
  return shared;
}

void CheckScaleRowsColsGroup(const MatrixGroup& x, const MatrixGroup& row, const MatrixGroup& col,
                             const MatrixGroup& out, Device device) {
  const char* op = "ScaleRowsColsGroup";
  const int64_t n = x.size(), r = x.rows, c = x.cols;
  const bool rounded = x.dtype == DType::kF32 && out.dtype == DType::kBF16;
  CheckMatrixGroup(x, n, r, c, x.dtype, device, false, op, "x");
  CheckMatrixGroup(row, n, 1, r, x.dtype, device, true, op, "row");
  CheckMatrixGroup(col, n, 1, c, x.dtype, device, true, op, "col");
  CheckMatrixGroup(out, n, r, c, rounded ? DType::kBF16 : x.dtype, device, false, op, "out");
}

bool CheckScaleRowsColsBackwardGroup(const MatrixGroup& x, const MatrixGroup& row,
                                     const MatrixGroup& col, const MatrixGroup& d_out,
                                     const MatrixGroup& d_x, const MatrixGroup& d_row,
                                     const MatrixGroup& d_col, Device device) {
  const char* op = "ScaleRowsColsBackwardGroup";
  const int64_t n = x.size(), r = x.rows, c = x.cols;
  const DType dt = x.dtype;
  CheckMatrixGroup(x, n, r, c, dt, device, false, op, "x");
  CheckMatrixGroup(row, n, 1, r, dt, device, true, op, "row");
  CheckMatrixGroup(col, n, 1, c, dt, device, true, op, "col");
  CheckMatrixGroup(d_out, n, r, c, dt, device, false, op, "d_out");
  CheckMatrixGroup(d_x, n, r, c, dt, device, true, op, "d_x");
  CheckMatrixGroup(d_row, n, 1, r, dt, device, true, op, "d_row");
  CheckMatrixGroup(d_col, n, 1, c, dt, device, true, op, "d_col");
  CheckOwnMatrices(d_row, op, "d_row");
  // A d_col shared by every group takes their sums in group order, as the
  // single calls in that order would.
  return CheckOwnOrSharedMatrices(d_col, op, "d_col");
}

void CheckMagnitudeDirectionGroup(const MatrixGroup& alpha, const MatrixGroup& beta,
                                  const MatrixGroup& gamma, Device device) {
  const char* op = "MagnitudeDirectionGroup";
  const int64_t n = alpha.size(), d = alpha.cols;
  CheckMatrixGroup(alpha, n, 1, d, alpha.dtype, device, false, op, "alpha");
  CheckMatrixGroup(beta, n, 1, 1, alpha.dtype, device, false, op, "beta");
  CheckMatrixGroup(gamma, n, 1, d, alpha.dtype, device, false, op, "gamma");
}

void CheckMagnitudeDirectionBackwardGroup(const MatrixGroup& alpha, const MatrixGroup& beta,
                                          const MatrixGroup& d_gamma, const MatrixGroup& d_alpha,
                                          const MatrixGroup& d_beta, Device device) {
  const char* op = "MagnitudeDirectionBackwardGroup";
  const int64_t n = alpha.size(), d = alpha.cols;
  CheckMatrixGroup(alpha, n, 1, d, alpha.dtype, device, false, op, "alpha");
  CheckMatrixGroup(beta, n, 1, 1, alpha.dtype, device, false, op, "beta");
  CheckMatrixGroup(d_gamma, n, 1, d, alpha.dtype, device, false, op, "d_gamma");
  CheckMatrixGroup(d_alpha, n, 1, d, alpha.dtype, device, false, op, "d_alpha");
  CheckMatrixGroup(d_beta, n, 1, 1, alpha.dtype, device, false, op, "d_beta");
  CheckOwnMatrices(d_alpha, op, "d_alpha");
  CheckOwnMatrices(d_beta, op, "d_beta");
}

}  // namespace scalemoe::ops
