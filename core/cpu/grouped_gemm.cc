// Grouped GEMMs on the CPU: the reference, one Gemm per group on the group's
// rows (core/ops.h states the contract; the CUDA kernels are checked
// against this).
#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

// offsets [G+1] on the host, checked against the row count; returns them.
std::vector<int64_t> GroupOffsets(const Tensor& offsets, int64_t groups, int64_t rows,
                                  const char* op) {
  SM_CHECK_MSG(offsets.dtype() == DType::kI64 && offsets.ndim() == 1 &&
                   offsets.numel() == groups + 1 && offsets.device() == Device::kCPU,
               op, ": offsets must be int64 [", groups + 1, "] on the CPU, got ",
               offsets.DebugString());
  const auto* p = static_cast<const int64_t*>(offsets.raw_data());
  std::vector<int64_t> out(p, p + groups + 1);
  for (int64_t g = 0; g < groups; ++g) {
    SM_CHECK_MSG(out[g] >= 0 && out[g] <= out[g + 1] && out[g + 1] <= rows, op,
                 ": offsets must be non-decreasing within [0, ", rows, "], group ", g, " has [",
                 out[g], ", ", out[g + 1], ")");
  }
  return out;
}

}  // namespace

void GroupedGemm(const ExecContext& ctx, const Tensor& a, const MatrixGroup& b,
                 const Tensor& offsets, const Tensor& c, const GroupedGemmOptions& o) {
  SM_CHECK_MSG(a.ndim() == 2 && c.ndim() == 2 && a.dim(0) == c.dim(0),
               "GroupedGemm: a and c must be [M, *] with one M, got ", a.DebugString(), " ",
               c.DebugString());
  const std::vector<int64_t> off = GroupOffsets(offsets, b.size(), a.dim(0), "GroupedGemm");
  for (int64_t g = 0; g < b.size(); ++g) {
    const int64_t rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    Gemm(ctx, a.Narrow(0, off[g], rows), b.matrices[g], c.Narrow(0, off[g], rows),
         {.trans_b = o.trans_b, .beta = o.beta});
  }
}

void GroupedGemmWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                           const Tensor& offsets, const MatrixGroup& c, double beta) {
  SM_CHECK_MSG(a.ndim() == 2 && b.ndim() == 2 && a.dim(0) == b.dim(0),
               "GroupedGemmWeightGrad: a and b must be [M, *] with one M, got ", a.DebugString(),
               " ", b.DebugString());
  const std::vector<int64_t> off =
      GroupOffsets(offsets, c.size(), a.dim(0), "GroupedGemmWeightGrad");
  for (int64_t g = 0; g < c.size(); ++g) {
    const int64_t rows = off[g + 1] - off[g];
    // A group without rows: c_g = beta * c_g (Gemm with K = 0 does that).
    Gemm(ctx, a.Narrow(0, off[g], rows), b.Narrow(0, off[g], rows), c.matrices[g],
         {.trans_a = Trans::kYes, .beta = beta});
  }
}

// The gathered forms: the gather, then the plain op (their bits by
// construction; the CUDA kernels that gather in their loads are checked
// against these).
void GroupedGemmGathered(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                         const MatrixGroup& b, const Tensor& offsets, const Tensor& c,
                         const GroupedGemmOptions& o) {
  SM_CHECK_MSG(x.ndim() == 2 && rows.ndim() == 1, "GroupedGemmGathered: x ", x.DebugString(),
               " must be [N, K] and rows ", rows.DebugString(), " [M]");
  const Tensor a = Tensor::Empty({rows.numel(), x.dim(1)}, x.dtype());
  GatherRows(ctx, x, rows, divisor, a);
  cpu::GroupedGemm(ctx, a, b, offsets, c, o);
}

void GroupedGemmWeightGradGathered(const ExecContext& ctx, const Tensor& a, const Tensor& x,
                                   const Tensor& rows, int divisor, const Tensor& offsets,
                                   const MatrixGroup& c, double beta) {
  SM_CHECK_MSG(x.ndim() == 2 && rows.ndim() == 1, "GroupedGemmWeightGradGathered: x ",
               x.DebugString(), " must be [N, K] and rows ", rows.DebugString(), " [M]");
  const Tensor b = Tensor::Empty({rows.numel(), x.dim(1)}, x.dtype());
  GatherRows(ctx, x, rows, divisor, b);
  cpu::GroupedGemmWeightGrad(ctx, a, b, offsets, c, beta);
}

void GroupedGemmSwiGlu(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                       const MatrixGroup& b, const Tensor& offsets, const Tensor& gate_up,
                       const Tensor& h) {
  const GroupedGemmOptions xwt{.trans_b = Trans::kYes};
  if (rows.defined()) {
    cpu::GroupedGemmGathered(ctx, x, rows, divisor, b, offsets, gate_up, xwt);
  } else {
    cpu::GroupedGemm(ctx, x, b, offsets, gate_up, xwt);
  }
  SwiGluPacked(ctx, gate_up, h);
}

void GroupedGemmSwiGluBackward(const ExecContext& ctx, const Tensor& d_y, const MatrixGroup& b,
                               const Tensor& offsets, const Tensor& gate_up,
                               const Tensor& d_gate_up) {
  SM_CHECK_MSG(gate_up.ndim() == 2 && gate_up.dim(1) % 2 == 0,
               "GroupedGemmSwiGluBackward: gate_up ", gate_up.DebugString(), " (want [M, 2F])");
  const Tensor d_h = Tensor::Empty({gate_up.dim(0), gate_up.dim(1) / 2}, gate_up.dtype());
  cpu::GroupedGemm(ctx, d_y, b, offsets, d_h, {.trans_b = Trans::kNo});
  SwiGluPackedBackward(ctx, gate_up, d_h, d_gate_up);
}

}  // namespace scalemoe::cpu
