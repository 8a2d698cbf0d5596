// CPU GEMM through OpenBLAS (cblas), row-major. bf16 operands are converted
// to f32 first (f32 accumulation), a bf16 result rounded on store.
#include <cblas.h>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

struct GemmDims {
  int64_t batch, m, n, k;
  int64_t stride_a, stride_b, stride_c;  // 0 when shared across the batch
};

GemmDims CheckGemm(const Tensor& a, const Tensor& b, const Tensor& c, const GemmOptions& o) {
  SM_CHECK_MSG(a.dtype() == b.dtype() &&
                   (b.dtype() == c.dtype() ||
                    (b.dtype() == DType::kBF16 && c.dtype() == DType::kF32)),
               "Gemm dtypes ", a.DebugString(), " ", b.DebugString(), " ", c.DebugString());
  SM_CHECK_MSG(a.is_contiguous() && b.is_contiguous() && c.is_contiguous(),
               "Gemm needs contiguous tensors");
  SM_CHECK_MSG(c.ndim() == 2 || c.ndim() == 3, "Gemm output ", c.DebugString());
  const bool batched = c.ndim() == 3;
  const int64_t batch = batched ? c.dim(0) : 1;
  auto mat = [&](const Tensor& t, int64_t& rows, int64_t& cols, int64_t& stride) {
    SM_CHECK_MSG(t.ndim() == 2 || (batched && t.ndim() == 3 && t.dim(0) == batch),
                 "Gemm operand ", t.DebugString(), " vs output ", c.DebugString());
    rows = t.dim(-2);
    cols = t.dim(-1);
    stride = t.ndim() == 3 ? rows * cols : 0;
  };
  int64_t ar, ac, br, bc, sa, sb;
  mat(a, ar, ac, sa);
  mat(b, br, bc, sb);
  GemmDims d;
  d.batch = batch;
  d.m = o.trans_a == Trans::kYes ? ac : ar;
  d.k = o.trans_a == Trans::kYes ? ar : ac;
  const int64_t kb = o.trans_b == Trans::kYes ? bc : br;
  d.n = o.trans_b == Trans::kYes ? br : bc;
  SM_CHECK_MSG(d.k == kb && c.dim(-2) == d.m && c.dim(-1) == d.n, "Gemm shapes ",
               a.DebugString(), " x ", b.DebugString(), " -> ", c.DebugString());
  d.stride_a = sa;
  d.stride_b = sb;
  d.stride_c = d.m * d.n;
  return d;
}

// bf16 operands: the same product on f32 copies (into an f32 copy of c when
// c is bf16: read only when beta != 0, rounded back on store).
void GemmBf16(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
              const GemmOptions& o) {
  Tensor a32 = ctx.Empty(a.shape(), DType::kF32);
  Tensor b32 = ctx.Empty(b.shape(), DType::kF32);
  Copy(ctx, a, a32);
  Copy(ctx, b, b32);
  if (c.dtype() == DType::kF32) {
    cpu::Gemm(ctx, a32, b32, c, o);
    return;
  }
  Tensor c32 = ctx.Empty(c.shape(), DType::kF32);
  if (o.beta != 0.0) Copy(ctx, c, c32);
  cpu::Gemm(ctx, a32, b32, c32, o);
  Copy(ctx, c32, c);
}

}  // namespace

void Gemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
          const GemmOptions& o) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU && c.device() == Device::kCPU,
               "Gemm: CUDA path not in this build");
  const GemmDims d = CheckGemm(a, b, c, o);
  if (d.m == 0 || d.n == 0) return;
  if (a.dtype() == DType::kBF16) {
    GemmBf16(ctx, a, b, c, o);
    return;
  }
  const CBLAS_TRANSPOSE ta = o.trans_a == Trans::kYes ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = o.trans_b == Trans::kYes ? CblasTrans : CblasNoTrans;
  const int lda = static_cast<int>(a.dim(-1));
  const int ldb = static_cast<int>(b.dim(-1));
  const int ldc = static_cast<int>(d.n);
  for (int64_t i = 0; i < d.batch; ++i) {
    if (d.k == 0) {  // BLAS may skip the beta scaling; do it ourselves
      Tensor ci = c.ndim() == 3 ? c.Narrow(0, i, 1) : c;
      Scale(ctx, o.beta, ci);
      continue;
    }
    if (c.dtype() == DType::kF32) {
      cblas_sgemm(CblasRowMajor, ta, tb, d.m, d.n, d.k, static_cast<float>(o.alpha),
                  a.data<float>() + i * d.stride_a, lda, b.data<float>() + i * d.stride_b, ldb,
                  static_cast<float>(o.beta), c.data<float>() + i * d.stride_c, ldc);
    } else if (c.dtype() == DType::kF64) {
      cblas_dgemm(CblasRowMajor, ta, tb, d.m, d.n, d.k, o.alpha,
                  a.data<double>() + i * d.stride_a, lda, b.data<double>() + i * d.stride_b,
                  ldb, o.beta, c.data<double>() + i * d.stride_c, ldc);
    } else {
      SM_CHECK_MSG(false, "Gemm on the CPU supports f32/f64, got ", c.DebugString());
    }
  }
}

}  // namespace scalemoe::cpu
