// ops::Gemm on the GPU through cuBLASLt (the contract of core/ops.h):
// c = alpha·op(a)·op(b) + beta·c, row-major, 2-D or batched 3-D with a
// shared 2-D operand, f32 (exact: CUBLAS_COMPUTE_32F, never TF32), f64, and
// bf16 into bf16 or f32, accumulating in f32 (f64 for f64; a split-K
// algorithm for a bf16 output must reduce its parts in f32 too).
//
// Row-major to cuBLAS's column-major: a row-major [R, C] matrix is the
// column-major [C, R] matrix (its transpose) with the same bytes, so
//   cᵀ = op(b)ᵀ·op(a)ᵀ
// is one column-major product with cuBLAS's A = our b and B = our a, the
// transpose flags unchanged, m = N, n = M.
//
// Plans (descriptors, layouts and the heuristic's algorithm) are cached in
// the context's CudaLibraries per (dtypes, transposes, M, N, K, batch,
// shared operands, pointer alignments); the workspace comes from
// ctx.Workspace. Nothing here synchronises or allocates after the first call
// with a shape. Under SCALEMOE_SKINNY_GEMM=1, f32 products with a side of at
// most 64 run on core/cuda/skinny_gemm.cu's kernels instead.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/cuda/cublaslt_api.h"
#include "core/cuda/cuda_libraries.h"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/skinny_gemm.h"

namespace scalemoe::cuda {
namespace {

// The most workspace a plan may ask for (NVIDIA's recommendation for Hopper).
constexpr uint64_t kMaxWorkspaceBytes = uint64_t{32} << 20;

struct GemmShape {
  int64_t batch = 1, m = 0, n = 0, k = 0;
  // Batch strides in elements; 0 for an operand shared by every batch.
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};

GemmShape CheckGemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
                    const GemmOptions& o) {
  for (const Tensor* t : {&a, &b, &c}) {
    SM_CHECK_MSG(t->device() == Device::kCUDA && t->is_contiguous(),
                 "Gemm needs contiguous CUDA tensors (context on cuda:", ctx.device_ordinal(),
                 "), got ", t->DebugString());
  }
  const DType in = a.dtype();
  SM_CHECK_MSG(b.dtype() == in && (c.dtype() == in || (in == DType::kBF16 && c.dtype() == DType::kF32)) &&
                   (in == DType::kF32 || in == DType::kF64 || in == DType::kBF16),
               "Gemm dtypes: ", a.DebugString(), " x ", b.DebugString(), " -> ", c.DebugString(),
               " (f32, f64, bf16 -> bf16 or bf16 -> f32)");
  SM_CHECK_MSG(c.ndim() == 2 || c.ndim() == 3, "Gemm output ", c.DebugString());
  const bool batched = c.ndim() == 3;
  GemmShape s;
  s.batch = batched ? c.dim(0) : 1;
  auto operand = [&](const Tensor& t, int64_t& rows, int64_t& cols, int64_t& stride) {
    SM_CHECK_MSG(t.ndim() == 2 || (batched && t.ndim() == 3 && t.dim(0) == s.batch),
                 "Gemm operand ", t.DebugString(), " for output ", c.DebugString());
    rows = t.dim(-2);
    cols = t.dim(-1);
    stride = t.ndim() == 3 ? rows * cols : 0;
  };
  int64_t ar, ac, br, bc;
  operand(a, ar, ac, s.stride_a);
  operand(b, br, bc, s.stride_b);
  s.m = o.trans_a == Trans::kYes ? ac : ar;
  s.k = o.trans_a == Trans::kYes ? ar : ac;
  const int64_t kb = o.trans_b == Trans::kYes ? bc : br;
  s.n = o.trans_b == Trans::kYes ? br : bc;
  SM_CHECK_MSG(s.k == kb && c.dim(-2) == s.m && c.dim(-1) == s.n, "Gemm shapes ",
               a.DebugString(), (o.trans_a == Trans::kYes ? "ᵀ" : ""), " x ", b.DebugString(),
               (o.trans_b == Trans::kYes ? "ᵀ" : ""), " -> ", c.DebugString());
  s.stride_c = s.m * s.n;
  // A batch of row-major products against one shared b with a not
  // transposed is a single product with the batch folded into M.
  if (batched && s.stride_b == 0 && s.stride_a != 0 && o.trans_a == Trans::kNo) {
    s.m *= s.batch;
    s.batch = 1;
    s.stride_a = s.stride_c = 0;
  }
  if (s.batch == 1) s.stride_a = s.stride_b = s.stride_c = 0;
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  SM_CHECK_MSG(s.m <= kMax && s.n <= kMax && s.k <= kMax && s.batch <= kMax,
               "Gemm dimensions beyond int32: ", a.DebugString(), " x ", b.DebugString());
  return s;
}

// The largest power of two up to 256 dividing the address (and, for a
// batched operand, the byte stride to the next batch): cuBLASLt's heuristic
// assumes 256-byte alignment unless told otherwise.
uint32_t Alignment(const void* ptr, int64_t stride_elements, size_t element_size) {
  uint64_t bits = reinterpret_cast<uintptr_t>(ptr) |
                  static_cast<uint64_t>(stride_elements) * element_size;
  uint32_t align = 256;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

cudaDataType_t CudaType(DType d) {
  switch (d) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF64: return CUDA_R_64F;
    case DType::kBF16: return CUDA_R_16BF;
    default: SM_CHECK_MSG(false, "Gemm dtype ", DTypeName(d));
  }
  return CUDA_R_32F;
}

std::string CublasError(cublasStatus_t st) {
  return absl::StrCat(cuda::lt::GetStatusName(st), " (", cuda::lt::GetStatusString(st), ")");
}

// Everything cublasLtMatmul needs for one (shape, dtype, alignment) case.
struct GemmPlan : CudaLibraries::Entry {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t layout_a = nullptr;  // cuBLAS's A: our b
  cublasLtMatrixLayout_t layout_b = nullptr;  // cuBLAS's B: our a
  cublasLtMatrixLayout_t layout_c = nullptr;  // C and D: our c
  cublasLtMatmulAlgo_t algo{};
  size_t workspace_bytes = 0;
  ~GemmPlan() override {
    if (layout_c != nullptr) cuda::lt::MatrixLayoutDestroy(layout_c);
    if (layout_b != nullptr) cuda::lt::MatrixLayoutDestroy(layout_b);
    if (layout_a != nullptr) cuda::lt::MatrixLayoutDestroy(layout_a);
    if (desc != nullptr) cuda::lt::MatmulDescDestroy(desc);
  }
};

struct PlanRequest {
  DType in, out;
  Trans trans_a, trans_b;
  GemmShape shape;
  uint32_t align_a, align_b, align_c;
};

std::string PlanKey(const PlanRequest& r) {
  const GemmShape& s = r.shape;
  return absl::StrCat("Gemm ", DTypeName(r.in), "->", DTypeName(r.out), " t",
                      static_cast<int>(r.trans_a), static_cast<int>(r.trans_b), " m", s.m, " n",
                      s.n, " k", s.k, " batch", s.batch, " shared", s.stride_a == 0 ? 1 : 0,
                      s.stride_b == 0 ? 1 : 0, " align", r.align_a, ",", r.align_b, ",",
                      r.align_c);
}

// A column-major layout of `rows` x `cols` (ld = rows) with `batch`
// matrices `stride` elements apart.
cublasStatus_t MakeLayout(cublasLtMatrixLayout_t* layout, cudaDataType_t type, int64_t rows,
                          int64_t cols, int64_t batch, int64_t stride) {
  cublasStatus_t st = cuda::lt::MatrixLayoutCreate(layout, type, static_cast<uint64_t>(rows),
                                                   static_cast<uint64_t>(cols), rows);
  if (st != CUBLAS_STATUS_SUCCESS || batch == 1) return st;
  const int32_t count = static_cast<int32_t>(batch);
  st = cuda::lt::MatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                          sizeof(count));
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  return cuda::lt::MatrixLayoutSetAttribute(*layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                            &stride, sizeof(stride));
}

#define SM_RETURN_IF_CUBLAS(expr, what)                                              \
  do {                                                                               \
    const cublasStatus_t sm_st_ = (expr);                                            \
    if (sm_st_ != CUBLAS_STATUS_SUCCESS) {                                           \
      return absl::InternalError(absl::StrCat(what, " failed: ", CublasError(sm_st_))); \
    }                                                                                \
  } while (0)

StatusOr<std::unique_ptr<GemmPlan>> MakePlan(cublasLtHandle_t lt, const PlanRequest& r) {
  const GemmShape& s = r.shape;
  auto plan = std::make_unique<GemmPlan>();
  const bool f64 = r.in == DType::kF64;
  const cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  const cudaDataType_t scale = f64 ? CUDA_R_64F : CUDA_R_32F;
  SM_RETURN_IF_CUBLAS(cuda::lt::MatmulDescCreate(&plan->desc, compute, scale),
                      "cublasLtMatmulDescCreate");
  const cublasOperation_t op_a = r.trans_b == Trans::kYes ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = r.trans_a == Trans::kYes ? CUBLAS_OP_T : CUBLAS_OP_N;
  SM_RETURN_IF_CUBLAS(cuda::lt::MatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                       &op_a, sizeof(op_a)),
                      "cuda::lt::MatmulDescSetAttribute(TRANSA)");
  SM_RETURN_IF_CUBLAS(cuda::lt::MatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                       &op_b, sizeof(op_b)),
                      "cuda::lt::MatmulDescSetAttribute(TRANSB)");
  // Stored shapes, column-major: our b is [K, N] (or [N, K] transposed)
  // row-major, i.e. N x K (K x N) column-major; likewise a.
  const cudaDataType_t in = CudaType(r.in), out = CudaType(r.out);
  const int64_t a_rows = r.trans_b == Trans::kYes ? s.k : s.n;
  const int64_t a_cols = r.trans_b == Trans::kYes ? s.n : s.k;
  const int64_t b_rows = r.trans_a == Trans::kYes ? s.m : s.k;
  const int64_t b_cols = r.trans_a == Trans::kYes ? s.k : s.m;
  SM_RETURN_IF_CUBLAS(MakeLayout(&plan->layout_a, in, a_rows, a_cols, s.batch, s.stride_b),
                      "cuda::lt::MatrixLayoutCreate(b)");
  SM_RETURN_IF_CUBLAS(MakeLayout(&plan->layout_b, in, b_rows, b_cols, s.batch, s.stride_a),
                      "cuda::lt::MatrixLayoutCreate(a)");
  SM_RETURN_IF_CUBLAS(MakeLayout(&plan->layout_c, out, s.n, s.m, s.batch, s.stride_c),
                      "cuda::lt::MatrixLayoutCreate(c)");

  cublasLtMatmulPreference_t pref = nullptr;
  SM_RETURN_IF_CUBLAS(cuda::lt::MatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(cuda::lt::MatmulPreferenceDestroy)>
      pref_owner(pref, cuda::lt::MatmulPreferenceDestroy);
  SM_RETURN_IF_CUBLAS(
      cuda::lt::MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &kMaxWorkspaceBytes, sizeof(kMaxWorkspaceBytes)),
      "cuda::lt::MatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  if (r.out == DType::kBF16) {
    // Split-K partial sums in f32 only: INPLACE and OUTPUT_TYPE add them up
    // in the output type, bf16.
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    SM_RETURN_IF_CUBLAS(
        cuda::lt::MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                               &schemes, sizeof(schemes)),
        "cuda::lt::MatmulPreferenceSetAttribute(REDUCTION_SCHEME_MASK)");
  }
  const struct {
    cublasLtMatmulPreferenceAttributes_t attr;
    uint32_t value;
  } alignments[] = {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, r.align_b},
                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, r.align_a},
                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, r.align_c},
                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, r.align_c}};
  for (const auto& al : alignments) {
    SM_RETURN_IF_CUBLAS(
        cuda::lt::MatmulPreferenceSetAttribute(pref, al.attr, &al.value, sizeof(al.value)),
        "cuda::lt::MatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  SM_RETURN_IF_CUBLAS(
      cuda::lt::MatmulAlgoGetHeuristic(lt, plan->desc, plan->layout_a, plan->layout_b,
                                       plan->layout_c, plan->layout_c, pref, 1, &result, &found),
      "cublasLtMatmulAlgoGetHeuristic");
  if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS) {
    return absl::UnimplementedError(absl::StrCat(
        "cuBLASLt has no algorithm for this case (", PlanKey(r),
        found == 0 ? "" : absl::StrCat(": ", CublasError(result.state)), ")"));
  }
  plan->algo = result.algo;
  plan->workspace_bytes = result.workspaceSize;
  return plan;
}

// The cached plan for r, made on first use.
StatusOr<const GemmPlan*> FindPlan(const ExecContext& ctx, const PlanRequest& r) {
  CudaLibraries* libs = ctx.cuda_libraries();
  SM_CHECK_MSG(libs != nullptr, "Gemm: a CUDA context without its libraries");
  std::lock_guard<std::mutex> lock(libs->mu());
  const std::string key = PlanKey(r);
  auto it = libs->cache().find(key);
  if (it == libs->cache().end()) {
    SM_ASSIGN_OR_RETURN(const cublasLtHandle_t lt, libs->Lt());
    SM_ASSIGN_OR_RETURN(std::unique_ptr<GemmPlan> plan, MakePlan(lt, r));
    it = libs->cache().emplace(key, std::move(plan)).first;
  }
  return static_cast<const GemmPlan*>(it->second.get());
}

Status RunGemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
               const GemmOptions& o, const GemmShape& s) {
  const size_t in_size = DTypeSize(a.dtype()), out_size = DTypeSize(c.dtype());
  PlanRequest r{a.dtype(),
                c.dtype(),
                o.trans_a,
                o.trans_b,
                s,
                Alignment(a.raw_data(), s.stride_a, in_size),
                Alignment(b.raw_data(), s.stride_b, in_size),
                Alignment(c.raw_data(), s.stride_c, out_size)};
  SM_ASSIGN_OR_RETURN(const GemmPlan* plan, FindPlan(ctx, r));
  SM_ASSIGN_OR_RETURN(const cublasLtHandle_t lt, ctx.cuda_libraries()->Lt());  // made by FindPlan
  void* workspace = plan->workspace_bytes > 0 ? ctx.Workspace(plan->workspace_bytes) : nullptr;
  const float alpha32 = static_cast<float>(o.alpha), beta32 = static_cast<float>(o.beta);
  const bool f64 = a.dtype() == DType::kF64;
  const void* alpha = f64 ? static_cast<const void*>(&o.alpha) : &alpha32;
  const void* beta = f64 ? static_cast<const void*>(&o.beta) : &beta32;
  SM_RETURN_IF_CUBLAS(
      cuda::lt::Matmul(lt, plan->desc, alpha, b.raw_data(), plan->layout_a, a.raw_data(),
                       plan->layout_b, beta, c.raw_data(), plan->layout_c, c.raw_data(),
                       plan->layout_c, &plan->algo, workspace, plan->workspace_bytes,
                       static_cast<cudaStream_t>(ctx.stream())),
      "cublasLtMatmul");
  return absl::OkStatus();
}

}  // namespace

void Gemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
          const GemmOptions& o) {
  const GemmShape s = CheckGemm(ctx, a, b, c, o);
  if (s.batch == 0 || s.m == 0 || s.n == 0) return;
  if (s.k == 0) {  // an empty sum: c = beta·c
    if (o.beta == 0.0) {
      Zero(ctx, c);
    } else if (o.beta != 1.0) {
      Scale(ctx, o.beta, c);
    }
    return;
  }
  if (SkinnyGemm(ctx, a, b, c, o)) return;  // opt-in: SCALEMOE_SKINNY_GEMM=1
  const Status st = RunGemm(ctx, a, b, c, o, s);
  if (!st.ok()) {
    ctx.Fail(absl::Status(
        st.code(),
        absl::StrCat("Gemm ", a.DebugString(), (o.trans_a == Trans::kYes ? "ᵀ" : ""), " x ",
                     b.DebugString(), (o.trans_b == Trans::kYes ? "ᵀ" : ""), " -> ",
                     c.DebugString(), " (alpha ", o.alpha, ", beta ", o.beta, ") on cuda:",
                     ctx.device_ordinal(), ": ", st.message())));
  }
}

}  // namespace scalemoe::cuda
