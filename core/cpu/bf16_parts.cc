// SplitBf16 and AddParts on the CPU (core/ops.h): the reference, element by
// element; the CUDA kernels (core/cuda/bf16_parts.cu) give the same bits.
#include "core/bf16_parts_checks.h"
#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void CheckCpuContiguous(const char* op, const Tensor& t) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.is_contiguous(), op,
               " needs contiguous CPU tensors, got ", t.DebugString());
}

}  // namespace

void SplitBf16(const ExecContext&, const Tensor& x, int64_t reps, const Tensor& out) {
  CheckCpuContiguous("SplitBf16", x);
  CheckCpuContiguous("SplitBf16", out);
  ops::CheckSplitBf16Args(x, reps, out);
  const int64_t rows = x.dim(0), cols = x.dim(1);
  const float* xs = x.data<float>();
  bf16* os = out.data<bf16>();
  for (int64_t r = 0; r < rows; ++r) {
    bf16* row = os + r * 3 * reps * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = xs[r * cols + c];
      const bf16 hi(v);
      const float rest = v - static_cast<float>(hi);  // exact
      const bf16 mid(rest);
      const bf16 lo(rest - static_cast<float>(mid));  // exact difference
      const bf16 parts[3] = {hi, mid, lo};
      for (int64_t p = 0; p < 3; ++p) {
        for (int64_t q = 0; q < reps; ++q) row[(p * reps + q) * cols + c] = parts[p];
      }
    }
  }
}

void AddParts(const ExecContext&, const Tensor& x, double beta, const Tensor& out) {
  CheckCpuContiguous("AddParts", x);
  CheckCpuContiguous("AddParts", out);
  const int64_t parts = ops::CheckAddPartsArgs(x, beta, out);
  const int64_t rows = out.dim(0), cols = out.dim(1);
  const float* xs = x.data<float>();
  float* os = out.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      float sum = 0;
      for (int64_t p = 0; p < parts; ++p) sum += xs[(r * parts + p) * cols + c];
      float& o = os[r * cols + c];
      o = beta == 0.0 ? sum : o + sum;
    }
  }
}

}  // namespace scalemoe::cpu
