// f32 products with one side of at most 64 (the router's backward:
// d_W = d_logitsᵀ·x and d_x = d_logits·W over 16 or 64 experts), off
// cuBLASLt. Its heuristic gives the weight gradient, 16 or 64 x 768 outputs
// reduced over 8,192 tokens, too few tiles for 132 SMs: the pair took
// 23.7 µs (16 experts) and 35.3 µs (64) a call on the H200, bandwidth for
// ~10 (bench/RESULTS.md, Dec 5). Opt-in (SCALEMOE_SKINNY_GEMM=1) until a GPU
// has timed and tested it.
// - aᵀ·b with M <= 64 and K >= 512 (WgradPartialsKernel): blocks of 64 columns x a
//   slice of K each write their partial sums, then one pass adds the
//   slices in order, so the bits depend only on the shape and the device's
//   SM count (which sets the slices), not on scheduling.
// - a·b with K <= 64 (DgradKernel): a block's 64 rows of a and the
//   matching K x 64 columns of b in shared memory, each thread 4 rows x 4
//   columns, k ascending.
// Exact f32 (FMA) like cuBLASLt's CUBLAS_COMPUTE_32F; beta = 0 ignores c.
#include <algorithm>
#include <cstdint>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/skinny_gemm.h"

namespace scalemoe::cuda {
namespace {

// Blocks of kernel_util's kThreads (256, as Blocks() counts them): the
// kernels' thread maps below assume that many.
static_assert(kThreads == 256, "64 columns x 4 row groups; 16 x 16 tiles of 4 x 4");
constexpr int kMaxSide = 64;  // the skinny side: M (weight gradient) or K (data gradient)
constexpr int kWCols = 64;    // weight gradient: output columns a block
constexpr int kWChunk = 32;   // ... k rows staged at a time
constexpr int kDRows = 64;    // data gradient: output rows a block
constexpr int kDCols = 64;    // ... and columns
constexpr int kMinWgradK = 512;

// part[s, m, n] = Σ a[k, m]·b[k, n] over k in slice s ([s·per, (s+1)·per)),
// k ascending. Thread t: column n0 + t % 64 and kRows consecutive rows from
// (t / 64)·kRows (4 row groups: M <= 4·kRows).
template <int kRows>
__global__ void __launch_bounds__(kThreads)
    WgradPartialsKernel(int64_t m, int64_t n, int64_t k, int64_t per, const float* __restrict__ a,
                        const float* __restrict__ b, float* __restrict__ part) {
  constexpr int kM = 4 * kRows;
  __shared__ __align__(16) float a_s[kWChunk][kM];
  __shared__ float b_s[kWChunk][kWCols];
  const int t = threadIdx.x, col = t % kWCols, row0 = (t / kWCols) * kRows;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kWCols;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t k1 = k0 + per < k ? k0 + per : k;
  float acc[kRows] = {};
  for (int64_t kc = k0; kc < k1; kc += kWChunk) {
    for (int i = t; i < kWChunk * kM; i += kThreads) {
      const int r = i / kM, c = i % kM;
      a_s[r][c] = kc + r < k1 && c < m ? a[(kc + r) * m + c] : 0.0f;
    }
    for (int i = t; i < kWChunk * kWCols; i += kThreads) {
      const int r = i / kWCols, c = i % kWCols;
      b_s[r][c] = kc + r < k1 && n0 + c < n ? b[(kc + r) * n + n0 + c] : 0.0f;
    }
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kWChunk; ++r) {
      const float bv = b_s[r][col];
#pragma unroll
      for (int i = 0; i < kRows; i += 4) {
        const float4 av = *reinterpret_cast<const float4*>(&a_s[r][row0 + i]);
        acc[i] = fmaf(av.x, bv, acc[i]);
        acc[i + 1] = fmaf(av.y, bv, acc[i + 1]);
        acc[i + 2] = fmaf(av.z, bv, acc[i + 2]);
        acc[i + 3] = fmaf(av.w, bv, acc[i + 3]);
      }
    }
    __syncthreads();
  }
  if (n0 + col >= n) return;
  float* out = part + static_cast<int64_t>(blockIdx.y) * m * n + n0 + col;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    if (row0 + i < m) out[(row0 + i) * n] = acc[i];
  }
}

// c[i] = alpha·Σ_s part[s, i] (s ascending) + beta·c[i].
__global__ void WgradFinishKernel(int64_t size, int64_t slices, const float* __restrict__ part,
                                  float alpha, float beta, float* __restrict__ c) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t s = 0; s < slices; ++s) sum += part[s * size + i];
    c[i] = beta == 0.0f ? alpha * sum : fmaf(beta, c[i], alpha * sum);
  }
}

// c[r, j] = alpha·Σ_k a[r, k]·b[k, j] + beta·c[r, j] (k ascending) for a
// block's 64 rows and 64 columns; thread t: columns 4 (t % 16) .. + 3 and
// rows 4 (t / 16) .. + 3. a is staged transposed (a_t[k][row]: a thread's
// four rows one 16-byte load; + 4 keeps the rows 16-byte aligned).
__global__ void __launch_bounds__(kThreads)
    DgradKernel(int64_t m, int64_t n, int64_t k, const float* __restrict__ a,
                const float* __restrict__ b, float alpha, float beta, float* __restrict__ c) {
  constexpr int kPitch = kDRows + 4;
  __shared__ __align__(16) float a_t[kMaxSide][kPitch];
  __shared__ __align__(16) float b_s[kMaxSide][kDCols];
  const int t = threadIdx.x, col0 = 4 * (t % 16), row0 = 4 * (t / 16);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kDRows;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kDCols;
  for (int i = t; i < kDRows * kMaxSide; i += kThreads) {
    const int r = i / kMaxSide, j = i % kMaxSide;
    a_t[j][r] = m0 + r < m && j < k ? a[(m0 + r) * k + j] : 0.0f;
  }
  for (int i = t; i < kMaxSide * kDCols; i += kThreads) {
    const int r = i / kDCols, j = i % kDCols;
    b_s[r][j] = r < k && n0 + j < n ? b[r * n + n0 + j] : 0.0f;
  }
  __syncthreads();
  float acc[4][4] = {};
  for (int j = 0; j < k; ++j) {
    const float4 av = *reinterpret_cast<const float4*>(&a_t[j][row0]);
    const float4 bv = *reinterpret_cast<const float4*>(&b_s[j][col0]);
    const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][e] = fmaf(ar[i], br[e], acc[i][e]);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = m0 + row0 + i;
    if (row >= m) continue;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t col = n0 + col0 + e;
      if (col >= n) continue;
      float* out = c + row * n + col;
      *out = beta == 0.0f ? alpha * acc[i][e] : fmaf(beta, *out, alpha * acc[i][e]);
    }
  }
}

}  // namespace

bool SkinnyGemmTakes(const Tensor& a, const Tensor& b, const Tensor& c, const ops::GemmOptions& o) {
  if (c.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || o.trans_b == ops::Trans::kYes) {
    return false;
  }
  for (const Tensor* x : {&a, &b, &c}) {
    if (x->dtype() != DType::kF32) return false;
  }
  if (o.trans_a == ops::Trans::kYes) return c.dim(0) <= kMaxSide && a.dim(0) >= kMinWgradK;
  return a.dim(1) <= kMaxSide;
}

bool SkinnyGemmEnabled() {
  static const bool on = EnvEquals("SCALEMOE_SKINNY_GEMM", "1");
  return on;
}

bool SkinnyGemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
                const ops::GemmOptions& o) {
  if (!SkinnyGemmEnabled() || !SkinnyGemmTakes(a, b, c, o)) return false;
  const int64_t m = c.dim(0), n = c.dim(1);
  const float alpha = static_cast<float>(o.alpha), beta = static_cast<float>(o.beta);
  if (o.trans_a == ops::Trans::kYes) {  // c = aᵀ b, a [K, M], b [K, N]
    const int64_t k = a.dim(0);
    const int64_t col_blocks = (n + kWCols - 1) / kWCols;
    // About two blocks an SM, each slice at least 256 rows long.
    const int64_t want = std::max<int64_t>(1, 2 * MultiprocessorCount(ctx, "Gemm") / col_blocks);
    const int64_t slices = std::min<int64_t>(want, std::max<int64_t>(1, k / 256));
    const int64_t per = (k + slices - 1) / slices;
    const Tensor part = ctx.Empty({slices, m, n}, DType::kF32);
    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(slices));
    if (m <= 16) {
      WgradPartialsKernel<4><<<grid, kThreads, 0, Stream(ctx)>>>(
          m, n, k, per, Ptr<const float>(a), Ptr<const float>(b), Ptr<float>(part));
    } else {
      WgradPartialsKernel<16><<<grid, kThreads, 0, Stream(ctx)>>>(
          m, n, k, per, Ptr<const float>(a), Ptr<const float>(b), Ptr<float>(part));
    }
    SM_CHECK_LAUNCH(ctx, "Gemm", "WgradPartialsKernel");
    WgradFinishKernel<<<Blocks(m * n), kThreads, 0, Stream(ctx)>>>(
        m * n, slices, Ptr<const float>(part), alpha, beta, Ptr<float>(c));
    SM_CHECK_LAUNCH(ctx, "Gemm", "WgradFinishKernel");
    return true;
  }
  const int64_t k = a.dim(1);  // c = a b, a [M, K], b [K, N]
  const dim3 grid(static_cast<unsigned>((n + kDCols - 1) / kDCols),
                  static_cast<unsigned>((m + kDRows - 1) / kDRows));
  DgradKernel<<<grid, kThreads, 0, Stream(ctx)>>>(
      m, n, k, Ptr<const float>(a), Ptr<const float>(b), alpha, beta, Ptr<float>(c));
  SM_CHECK_LAUNCH(ctx, "Gemm", "DgradKernel");
  return true;
}

}  // namespace scalemoe::cuda
