// The ceiling a library grouped GEMM would give the experts: TFLOP/s of
// cuBLAS's cublasGemmGroupedBatchedEx (one call over every expert, each its
// own group: sizes may differ) on the expert shapes of bench/cuda_gemm_bench,
// bf16 operands, f32 accumulation, next to ops::GroupedGemm and
// ops::GroupedGemmWeightGrad (our kernels, device offsets) on the same data.
// cuBLAS takes the group sizes in host arrays, so the trainer would need the
// per-expert counts on the host: one read per MoE layer (the sync issue 14
// allows) against the kernels' none. This bench measures what that would buy
// before anything is built on it.
//   fwd    y_e  = x_e · W_eᵀ    (bf16 out)
//   dgrad  dx_e = dy_e · W_e    (bf16 out)
//   wgrad  dW_e += dy_eᵀ · x_e  (ours: f32 out, beta 1; cuBLAS's grouped
//          GEMM answered bf16 in / f32 out with CUBLAS_STATUS_NOT_SUPPORTED
//          on the H200, CUDA 13.0, so its row writes bf16 with beta 0: less
//          traffic than the trainer's f32 accumulation, and max_rel_diff
//          shows bf16's rounding, ~4e-3)
// Output: one tab-separated row per case and form:
//   case form experts tokens_per_expert in out ours_ms ours_tflops cublas_ms cublas_tflops
//   max_rel_diff
// (max_rel_diff: the two results of one call on the same inputs, the
// largest |ours - cuBLAS| over the largest |cuBLAS|: a wrong layout shows.)
// usage: cublas_grouped_bench
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "core/context.h"
#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

struct ExpertCase {
  const char* name;
  int experts, tokens, in, out;  // tokens: per expert (balanced routing)
};

// gpu_moe_125m (16 experts, top-2) and gpu_finegrained_64e (64, top-8) at
// micro-batch 8 x 1024 tokens.
constexpr ExpertCase kCases[] = {
    {"experts_up_125m", 16, 1024, 768, 1280},
    {"experts_down_125m", 16, 1024, 1280, 768},
    {"experts_up_64e", 64, 1024, 768, 256},
    {"experts_down_64e", 64, 1024, 256, 768},
};

constexpr int kWarmup = 3, kInner = 4, kSamples = 25;

enum class Form { kFwd, kDgrad, kWgrad };
const char* FormName(Form f) {
  constexpr const char* kNames[] = {"fwd", "dgrad", "wgrad"};
  return kNames[static_cast<int>(f)];
}

void CheckCublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cublas_grouped_bench: %s: cuBLAS status %d\n", what, static_cast<int>(s));
  std::exit(1);
}

// A device array of the given device pointers.
Tensor PointerTable(const ExecContext& ctx, const std::vector<const void*>& ptrs) {
  std::vector<int64_t> bits(ptrs.size());
  for (size_t i = 0; i < ptrs.size(); ++i) bits[i] = reinterpret_cast<int64_t>(ptrs[i]);
  return TableToDevice(ctx, {static_cast<int64_t>(bits.size())}, bits);
}

// The experts' operands, row-stacked as the trainer holds them: x [E·T, in],
// y (= dy) [E·T, out], dx [E·T, in]; W_e [out, in] bf16, dW_e f32.
struct Operands {
  Tensor x, y, dx, offsets;
  std::vector<Tensor> w, dw, dw_bf16;  // dw_bf16: cuBLAS's wgrad output
  ops::MatrixGroup w_group, dw_group;
};

Operands MakeOperands(const ExecContext& ctx, const ExpertCase& c) {
  using bench::RandomDevice;
  const int64_t rows = static_cast<int64_t>(c.experts) * c.tokens;
  Operands o;
  o.x = RandomDevice(ctx, {rows, c.in}, DType::kBF16, 1, 1.0);
  o.y = RandomDevice(ctx, {rows, c.out}, DType::kBF16, 2, 1.0);
  o.dx = ctx.Empty({rows, c.in}, DType::kBF16);
  std::vector<int64_t> offsets;
  for (int e = 0; e <= c.experts; ++e) offsets.push_back(static_cast<int64_t>(e) * c.tokens);
  o.offsets = TableToDevice(ctx, {c.experts + 1}, offsets);
  for (int e = 0; e < c.experts; ++e) {
    o.w.push_back(RandomDevice(ctx, {c.out, c.in}, DType::kBF16, 10 + 2 * e, 0.02));
    o.dw.push_back(RandomDevice(ctx, {c.out, c.in}, DType::kF32, 11 + 2 * e, 1.0));
    o.dw_bf16.push_back(ctx.Empty({c.out, c.in}, DType::kBF16));
  }
  o.w_group = ops::MakeMatrixGroup(ctx, o.w);
  o.dw_group = ops::MakeMatrixGroup(ctx, o.dw);
  return o;
}

// The form's output tensors (a MatrixGroup's for wgrad; cuBLAS's own for
// its wgrad).
std::vector<Tensor> Outputs(const Operands& o, Form form, bool cublas) {
  switch (form) {
    case Form::kFwd:
      return {o.y};
    case Form::kDgrad:
      return {o.dx};
    case Form::kWgrad:
      return cublas ? o.dw_bf16 : o.dw;
  }
  return {};
}

// Host copies of the form's outputs.
std::vector<Tensor> HostOutputs(const ExecContext& ctx, const Operands& o, Form form, bool cublas) {
  std::vector<Tensor> host;
  for (const Tensor& t : Outputs(o, form, cublas)) host.push_back(ctx.ToHost(t));
  return host;
}

double MaxRelDiff(const std::vector<Tensor>& ours, const std::vector<Tensor>& theirs) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    for (int64_t j = 0; j < ours[i].numel(); ++j) {
      diff = std::max(diff, std::abs(ours[i].At(j) - theirs[i].At(j)));
      scale = std::max(scale, std::abs(theirs[i].At(j)));
    }
  }
  return scale > 0 ? diff / scale : diff;
}

// Sets the form's outputs to the same values before each implementation's
// one checked call (wgrad accumulates into dW).
void ResetOutputs(const ExecContext& ctx, const Operands& o, Form form) {
  if (form == Form::kWgrad) {
    for (const Tensor& t : o.dw) ops::Zero(ctx, t);
  }
}

double Ours(const ExecContext& ctx, const Operands& o, Form form, int calls = 0) {
  auto call = [&](int) {
    switch (form) {
      case Form::kFwd:
        ops::GroupedGemm(ctx, o.x, o.w_group, o.offsets, o.y, {.trans_b = ops::Trans::kYes});
        break;
      case Form::kDgrad:
        ops::GroupedGemm(ctx, o.y, o.w_group, o.offsets, o.dx, {.trans_b = ops::Trans::kNo});
        break;
      case Form::kWgrad:
        ops::GroupedGemmWeightGrad(ctx, o.y, o.x, o.offsets, o.dw_group, 1.0);
        break;
    }
  };
  if (calls > 0) {
    for (int i = 0; i < calls; ++i) call(i);
    return 0;
  }
  return bench::MedianMsPerCall(ctx, kWarmup, kInner, kSamples, call, "ours");
}

// cuBLAS is column-major: a row-major [r, c] matrix is its column-major
// transpose [c, r] with leading dimension c. Each product below is written
// as the column-major one that gives the row-major result.
double Cublas(const ExecContext& ctx, cublasHandle_t handle, const Operands& o, const ExpertCase& c,
              Form form, int calls = 0) {
  const int g = c.experts;
  std::vector<const void*> a, b, out;
  std::vector<cublasOperation_t> ta(g), tb(g);
  std::vector<int> m(g), n(g), k(g), lda(g), ldb(g), ldc(g), size(g, 1);
  const size_t bf = 2;
  for (int e = 0; e < g; ++e) {
    const size_t row0 = static_cast<size_t>(e) * c.tokens;
    const char* x = static_cast<const char*>(o.x.raw_data()) + row0 * c.in * bf;
    const char* y = static_cast<const char*>(o.y.raw_data()) + row0 * c.out * bf;
    const char* dx = static_cast<const char*>(o.dx.raw_data()) + row0 * c.in * bf;
    switch (form) {
      case Form::kFwd:  // yᵀ [out, T] = W [out, in] · xᵀ [in, T]: W is Wᵀ stored, so op T
        ta[e] = CUBLAS_OP_T, tb[e] = CUBLAS_OP_N;
        m[e] = c.out, n[e] = c.tokens, k[e] = c.in;
        a.push_back(o.w[e].raw_data()), lda[e] = c.in;
        b.push_back(x), ldb[e] = c.in;
        out.push_back(y), ldc[e] = c.out;
        break;
      case Form::kDgrad:  // dxᵀ [in, T] = Wᵀ [in, out] · dyᵀ [out, T]
        ta[e] = CUBLAS_OP_N, tb[e] = CUBLAS_OP_N;
        m[e] = c.in, n[e] = c.tokens, k[e] = c.out;
        a.push_back(o.w[e].raw_data()), lda[e] = c.in;
        b.push_back(y), ldb[e] = c.out;
        out.push_back(dx), ldc[e] = c.in;
        break;
      case Form::kWgrad:  // dWᵀ [in, out] += xᵀ [in, T] · dy [T, out]
        ta[e] = CUBLAS_OP_N, tb[e] = CUBLAS_OP_T;
        m[e] = c.in, n[e] = c.out, k[e] = c.tokens;
        a.push_back(x), lda[e] = c.in;
        b.push_back(y), ldb[e] = c.out;
        out.push_back(o.dw_bf16[e].raw_data()), ldc[e] = c.in;
        break;
    }
  }
  const Tensor a_table = PointerTable(ctx, a), b_table = PointerTable(ctx, b);
  const Tensor c_table = PointerTable(ctx, out);
  const std::vector<float> alpha(g, 1.0f), beta(g, 0.0f);
  auto call = [&](int) {
    CheckCublas(cublasGemmGroupedBatchedEx(
                    handle, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
                    static_cast<const void* const*>(a_table.raw_data()), CUDA_R_16BF, lda.data(),
                    static_cast<const void* const*>(b_table.raw_data()), CUDA_R_16BF, ldb.data(),
                    beta.data(), static_cast<void* const*>(c_table.raw_data()), CUDA_R_16BF,
                    ldc.data(), g, size.data(), CUBLAS_COMPUTE_32F),
                "cublasGemmGroupedBatchedEx");
  };
  if (calls > 0) {
    for (int i = 0; i < calls; ++i) call(i);
    return 0;
  }
  return bench::MedianMsPerCall(ctx, kWarmup, kInner, kSamples, call, "cublas");
}

int Main() {
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  bench::Check(ctx.status(), "ExecContext::Cuda(0)");
  cublasHandle_t handle = nullptr;
  CheckCublas(cublasCreate(&handle), "cublasCreate");
  CheckCublas(cublasSetStream(handle, static_cast<cudaStream_t>(ctx->stream())), "cublasSetStream");
  CheckCublas(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
  std::printf(
      "case\tform\texperts\ttokens_per_expert\tin\tout\tours_ms\tours_tflops\tcublas_ms\t"
      "cublas_tflops\tmax_rel_diff\n");
  for (const ExpertCase& c : kCases) {
    const Operands o = MakeOperands(*ctx, c);
    for (Form form : {Form::kFwd, Form::kDgrad, Form::kWgrad}) {
      const double flops = 2.0 * c.experts * c.tokens * c.in * c.out;
      const double ours = Ours(*ctx, o, form), cublas = Cublas(*ctx, handle, o, c, form);
      ResetOutputs(*ctx, o, form);
      Ours(*ctx, o, form, /*calls=*/1);
      const std::vector<Tensor> ours_out = HostOutputs(*ctx, o, form, /*cublas=*/false);
      ResetOutputs(*ctx, o, form);
      Cublas(*ctx, handle, o, c, form, /*calls=*/1);
      const double diff = MaxRelDiff(ours_out, HostOutputs(*ctx, o, form, /*cublas=*/true));
      std::printf("%s\t%s\t%d\t%d\t%d\t%d\t%.4f\t%.1f\t%.4f\t%.1f\t%.2e\n", c.name, FormName(form),
                  c.experts, c.tokens, c.in, c.out, ours, flops / (ours * 1e-3) / 1e12, cublas,
                  flops / (cublas * 1e-3) / 1e12, diff);
      std::fflush(stdout);
    }
  }
  CheckCublas(cublasDestroy(handle), "cublasDestroy");
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main() { return scalemoe::Main(); }
