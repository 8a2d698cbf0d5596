// CrossEntropy on the GPU, the contract of core/ops.h (core/cpu/
// cross_entropy.cc is the reference): logits [N, V] (f32, f64 or bf16),
// targets int32 [N], loss f64[1] = mean_n (log Σ_v exp(logits[n, v]) −
// logits[n, targets[n]]), d_logits (if defined) = (softmax − onehot) / N,
// in the logits' dtype or in bf16 (the LM head's GEMMs read it so, without
// the copy): computed alike, rounded once on store as ops::Copy rounds (to
// nearest even; f64 through f32), so the same bits as a copy of the
// logits-dtype gradient.
//
// A block per row and two passes over it. The op is bound by memory (each
// logit read twice, each gradient written once), so the kernel keeps the
// work per element small and the second read in L2:
// - 16-byte packed loads and stores (4 f32, 2 f64 or 8 bf16; a bf16
//   d_logits of f32 or f64 logits takes the logits' packs, 8 or 4 bytes).
//   A row that does not start on 16 bytes (V not a multiple of the pack)
//   takes the elements before its first boundary and its last (V − head)
//   mod pack elements one at a time. Logits or d_logits not 16-byte
//   aligned at all (a view) take the same kernel with packs of one element.
// - Pass 1: each thread keeps a running max and Σ exp(x − max) in the
//   compute type (f32 for f32 and bf16, f64 for f64), rescaling its sum at
//   most once per pack (when the pack raises the max); the threads' (max,
//   sum) pairs merge with f64 sums in a fixed butterfly: log Z in f64.
// - Pass 2: p = exp(x − log Z) in the compute type; for f32 and bf16 as
//   2^(x·log2(e) − log Z·log2(e)) with the second term split into two f32
//   (hi + lo), one fma and a subtraction whose error scales with |x − log
//   Z| (as the f64 difference rounded to f32 would), not with |log Z|. The
//   gradient is p / N, minus 1 / N at the target.
// - exp in f32 is the hardware's ex2.approx (__expf, exp2f: a relative
//   error of about 1e-7 · |argument|, and the arguments that matter are
//   small); f64 uses exp.
// - L2: pass 2 reads the row from L2 only if the rows in flight (a block
//   each) fit there, so the launcher gives the grid about half the L2 of
//   rows (at least a block per SM, at most what is resident at once); pass
//   2's loads and the gradient's stores are evict-first, so that they do
//   not push the rows still to be reread out.
// Row losses go to an f64 scratch [N] and one block adds them in a fixed
// order. No atomics; the order of every sum is fixed by V and the row's
// alignment, so the same tensors give the same bits on every run. The CPU
// SM_CHECKs the targets; here a target outside [0, V) makes its row's
// loss, so the mean, NaN, and its gradient row NaN (loud, without a host
// read).
#include <limits>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Packs a thread loads before it uses them, so that a block of
// kMaxRowThreads has 32 KB (bf16, f64) or 64 KB (f32) of loads in flight:
// with one or two such blocks per SM (see CrossEntropyBlocks) that covers
// HBM's latency. f32 and bf16 fit in 64 registers (two blocks per SM);
// f64 (for checks, not speed) may take 128.
template <typename T>
constexpr int kUnroll = sizeof(T) == 4 ? 8 : 4;
template <typename T>
constexpr int kMinBlocksPerSm = sizeof(T) == 8 ? 1 : 2;

template <typename A>
__device__ __forceinline__ A FastExp(A x);
template <>
__device__ __forceinline__ float FastExp<float>(float x) {
  return __expf(x);
}
template <>
__device__ __forceinline__ double FastExp<double>(double x) {
  return exp(x);
}

// p = exp(x − log Z) for one row's log Z. f32: 2^(x·c − log Z·c) with c
// the f32 log2(e) and log Z·c split into hi + lo f32s, so that the one fma
// loses no more than the f64 difference rounded to f32 would (the error
// scales with |x − log Z|, not with |log Z|). A NaN log Z gives NaN.
template <typename A>
struct Softmax;
template <>
struct Softmax<float> {
  static constexpr float kLog2e = 1.44269504088896341f;
  float hi, lo;
  __device__ explicit Softmax(double log_z) {
    const double scaled = log_z * static_cast<double>(kLog2e);
    hi = static_cast<float>(scaled);
    lo = static_cast<float>(scaled - static_cast<double>(hi));
  }
  __device__ float operator()(float x) const { return exp2f(fmaf(x, kLog2e, -hi) - lo); }
};
template <>
struct Softmax<double> {
  double log_z;
  __device__ explicit Softmax(double z) : log_z(z) {}
  __device__ double operator()(double x) const { return exp(x - log_z); }
};

// One thread's softmax denominator: Σ exp(x − max) over the values it saw.
template <typename A>
struct Running {
  A max;
  A sum;
};

// Adds P values (P a power of two): the pack's max first (a tree), so that
// the sum is rescaled at most once, then the pack's exps (a tree).
template <typename A, int P>
__device__ __forceinline__ void AddValues(Running<A>& m, const A (&x)[P]) {
  A t[P];
#pragma unroll
  for (int k = 0; k < P; ++k) t[k] = x[k];
#pragma unroll
  for (int w = P / 2; w > 0; w /= 2) {
#pragma unroll
    for (int k = 0; k < w; ++k) t[k] = MaxOp{}(t[k], t[k + w]);
  }
  if (t[0] > m.max) {                // fmax skips NaNs; a NaN reaches the sum below instead
    m.sum *= FastExp(m.max - t[0]);  // exp(−inf) = 0 while only −infs were seen
    m.max = t[0];
  }
  // Only −infs so far: shift by 0, so they add exp(−inf) = 0, not the NaN
  // of −inf − −inf.
  const A shift = m.max == NegInf<A>() ? A(0) : m.max;
#pragma unroll
  for (int k = 0; k < P; ++k) t[k] = FastExp(x[k] - shift);
#pragma unroll
  for (int w = P / 2; w > 0; w /= 2) {
#pragma unroll
    for (int k = 0; k < w; ++k) t[k] += t[k + w];
  }
  m.sum += t[0];
}

template <typename A>
__device__ __forceinline__ void AddValue(Running<A>& m, A x) {
  const A one[1] = {x};
  AddValues(m, one);
}

// The block's merge of the threads' denominators, with f64 sums.
template <typename A>
struct MaxSum {
  A max;
  double sum;
};

// Commutative (both lanes of a butterfly pair get the same bits).
template <typename A>
__device__ __forceinline__ MaxSum<A> Merge(MaxSum<A> a, MaxSum<A> b) {
  const A max = a.max > b.max ? a.max : b.max;
  const double sa = a.max == NegInf<A>() ? 0.0 : a.sum * static_cast<double>(exp(a.max - max));
  const double sb = b.max == NegInf<A>() ? 0.0 : b.sum * static_cast<double>(exp(b.max - max));
  return {max, sa + sb};
}

template <typename A>
__device__ MaxSum<A> BlockMaxSum(MaxSum<A> m) {
  __shared__ A maxes[32];
  __shared__ double sums[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum<A> other{__shfl_xor_sync(0xffffffffu, m.max, offset),
                          __shfl_xor_sync(0xffffffffu, m.sum, offset)};
    m = Merge(m, other);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    maxes[warp] = m.max;
    sums[warp] = m.sum;
  }
  __syncthreads();
  MaxSum<A> total{maxes[0], sums[0]};
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
    total = Merge(total, MaxSum<A>{maxes[w], sums[w]});
  }
  __syncthreads();
  return total;
}

// P elements at p (P · sizeof(T)-aligned) in the compute type. kLastRead:
// the logits' second read, evict-first so that it leaves L2 to the rows
// still to be reread.
template <bool kLastRead, typename T, int P>
__device__ __forceinline__ void LoadValues(const T* p, Acc<T> (&out)[P]) {
  Pack<T, P> pack;
  if constexpr (kLastRead && sizeof(pack) == 16) {
    *reinterpret_cast<int4*>(&pack) = __ldcs(reinterpret_cast<const int4*>(p));
  } else {
    pack = *reinterpret_cast<const Pack<T, P>*>(p);
  }
#pragma unroll
  for (int k = 0; k < P; ++k) out[k] = ToAcc(pack.v[k]);
}

// A gradient value v of the logits' compute type stored as a D: rounded as
// ops::Copy rounds (ConvertKernel: to D's compute type, then to D).
template <typename D, typename A>
__device__ __forceinline__ D StoreAs(A v) {
  return FromAcc<D>(static_cast<Acc<D>>(v));
}

// Gradients are stored evict-first: the next kernel to read them comes after
// the whole tensor, far more than L2 holds. A pack of P gradients in D (P
// the logits' pack): 16 bytes, or 8 (f32 logits) or 4 (f64) in bf16.
template <typename D, typename A, int P>
__device__ __forceinline__ void StoreValues(D* p, const A (&in)[P]) {
  Pack<D, P> pack;
#pragma unroll
  for (int k = 0; k < P; ++k) pack.v[k] = StoreAs<D>(in[k]);
  if constexpr (sizeof(pack) == 16) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&pack));
  } else if constexpr (P > 1 && sizeof(pack) == 8) {
    __stcs(reinterpret_cast<int2*>(p), *reinterpret_cast<const int2*>(&pack));
  } else if constexpr (P > 1 && sizeof(pack) == 4) {
    __stcs(reinterpret_cast<int*>(p), *reinterpret_cast<const int*>(&pack));
  } else {
    *reinterpret_cast<Pack<D, P>*>(p) = pack;
  }
}

// A row as [head | packs × P | tail]: the elements before its first
// 16-byte boundary (0 when it starts on one), aligned packs, then the
// remaining < P elements.
struct RowSplit {
  int head, packs, tail;
};

template <typename T, int P>
__device__ __forceinline__ RowSplit SplitRow(const T* row, int v) {
  int head = 0;
  if constexpr (P > 1) {
    const int off = static_cast<int>(reinterpret_cast<uintptr_t>(row) % 16 / sizeof(T));
    head = off == 0 ? 0 : min(v, P - off);
  }
  const int packs = (v - head) / P;
  return {head, packs, v - head - packs * P};
}

// body(pack index, values) over this thread's packs of first[0, packs · P):
// threadIdx.x + k · blockDim.x in increasing k (a fixed order), kUnroll
// loads issued before their values are used.
template <bool kLastRead, typename T, int P, typename F>
__device__ __forceinline__ void ForEachPack(const T* first, int packs, F&& body) {
  using A = Acc<T>;
  const int step = static_cast<int>(blockDim.x);
  int i = static_cast<int>(threadIdx.x);
  for (; i + (kUnroll<T> - 1) * step < packs; i += kUnroll<T> * step) {
    A x[kUnroll<T>][P];
#pragma unroll
    for (int u = 0; u < kUnroll<T>; ++u) LoadValues<kLastRead>(first + (i + u * step) * P, x[u]);
#pragma unroll
    for (int u = 0; u < kUnroll<T>; ++u) body(i + u * step, x[u]);
  }
  for (; i < packs; i += step) {
    A x[P];
    LoadValues<kLastRead>(first + i * P, x);
    body(i, x);
  }
}

// T: the logits' type, D: d_logits' (T, or bf16). P: elements per pack
// (16 bytes of logits, or 1 for unaligned tensors); d_logits' packs of P
// elements then start on a multiple of their size too.
template <typename T, typename D, int P>
__global__ void __launch_bounds__(kMaxRowThreads, kMinBlocksPerSm<T>)
    CrossEntropyRowKernel(int64_t n, int v, const T* logits, const int32_t* targets, D* d_logits,
                          double* row_loss) {
  using A = Acc<T>;
  const A scale = static_cast<A>(1.0 / static_cast<double>(n));
  const int t = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {  // uniform over the block
    const T* row = logits + r * v;
    const RowSplit split = SplitRow<T, P>(row, v);
    const T* packed = row + split.head;
    const int tail_start = split.head + split.packs * P;
    const int y = targets[r];
    const bool valid = y >= 0 && y < v;
    A target_logit = 0;
    if (t == 0 && valid) target_logit = ToAcc(row[y]);  // early: its latency hides in pass 1

    Running<A> m{NegInf<A>(), A(0)};
    if (t < split.head) AddValue(m, ToAcc(row[t]));
    ForEachPack<false, T, P>(packed, split.packs, [&](int, const A(&x)[P]) { AddValues(m, x); });
    if (t < split.tail) AddValue(m, ToAcc(row[tail_start + t]));
    const MaxSum<A> total = BlockMaxSum(MaxSum<A>{m.max, static_cast<double>(m.sum)});
    const double log_z = valid ? static_cast<double>(total.max) + log(total.sum) : NanOf<double>();
    if (t == 0) row_loss[r] = log_z - static_cast<double>(target_logit);
    if (d_logits == nullptr) continue;

    const Softmax<A> softmax(log_z);
    D* d = d_logits + r * v;
    // p / N everywhere; the target's − 1 / N where its pack or element is
    // written (one thread's, so no second write).
    const auto write_one = [&](int j) {
      const A g = softmax(ToAcc(row[j])) * scale;
      d[j] = StoreAs<D>(j == y ? g - scale : g);
    };
    if (t < split.head) write_one(t);
    ForEachPack<true, T, P>(packed, split.packs, [&](int i, const A(&x)[P]) {
      const int first = split.head + i * P;
      A g[P];
#pragma unroll
      for (int k = 0; k < P; ++k) g[k] = softmax(x[k]) * scale;
      if (static_cast<unsigned>(y) - static_cast<unsigned>(first) < static_cast<unsigned>(P)) {
#pragma unroll
        for (int k = 0; k < P; ++k) {
          if (first + k == y) g[k] -= scale;
        }
      }
      StoreValues(d + first, g);
    });
    if (t < split.tail) write_one(tail_start + t);
  }
}

// loss[0] = (Σ_r row_loss[r]) / N: each thread sums a fixed stride of rows
// in order, then the block's fixed butterfly.
__global__ void MeanLossKernel(int64_t n, const double* row_loss, double* loss) {
  double acc = 0;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) acc += row_loss[r];
  acc = BlockAllReduce(acc, SumOp{});
  if (threadIdx.x == 0) loss[0] = acc * (1.0 / static_cast<double>(n));
}

// ---------------------------------------------------------------- launchers

// Blocks for n rows of row_bytes: as many rows in flight as half the L2
// holds (their second read then hits L2), in whole blocks per SM (so no SM
// runs more rows than another at once), at least one per SM, at most what
// the SMs hold at once (a block that waited for a slot would run its rows
// after the others) and at most n. Any block count gives the same bits.
template <typename Kernel>
unsigned CrossEntropyBlocks(const ExecContext& ctx, Kernel kernel, int threads, int64_t n,
                            int64_t row_bytes) {
  constexpr const char* kOp = "CrossEntropy";
  const int device = ctx.device_ordinal();
  const int sms = MultiprocessorCount(ctx, kOp);
  int l2_bytes = 0, resident = 0;
  SM_CHECK_CUDA_CALL(ctx, cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device), kOp);
  SM_CHECK_CUDA_CALL(
      ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, 0), kOp);
  if (sms <= 0 || resident <= 0) return RowBlocks(n);  // the failure is recorded on ctx
  const int64_t per_sm = std::clamp<int64_t>(l2_bytes / 2 / row_bytes / sms, 1, resident);
  return static_cast<unsigned>(std::clamp<int64_t>(per_sm * sms, 1, std::min(n, kMaxBlocks)));
}

template <typename T, typename D, int P>
void LaunchCrossEntropy(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                        const Tensor& d_logits, const Tensor& row_loss) {
  const int64_t n = logits.dim(0), v = logits.dim(1);
  const auto kernel = CrossEntropyRowKernel<T, D, P>;
  const int threads = RowBlockThreads(v);
  const unsigned blocks =
      CrossEntropyBlocks(ctx, kernel, threads, n, v * static_cast<int64_t>(sizeof(T)));
  kernel<<<blocks, threads, 0, Stream(ctx)>>>(n, static_cast<int>(v), Ptr<const T>(logits),
                                              Ptr<const int32_t>(targets), Ptr<D>(d_logits),
                                              Ptr<double>(row_loss));
}

// The kernel for 16-byte packs of logits if `packed`, else of one element.
template <typename T, typename D>
void PickCrossEntropyKernel(const ExecContext& ctx, bool packed, const Tensor& logits,
                            const Tensor& targets, const Tensor& d_logits, const Tensor& row_loss) {
  if (packed) {
    LaunchCrossEntropy<T, D, kPack<T>>(ctx, logits, targets, d_logits, row_loss);
  } else {
    LaunchCrossEntropy<T, D, 1>(ctx, logits, targets, d_logits, row_loss);
  }
}

}  // namespace

void CrossEntropy(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                  const Tensor& d_logits, const Tensor& loss) {
  constexpr const char* kOp = "CrossEntropy";
  CheckOnDevice(ctx, logits, kOp, "logits");
  SM_CHECK_MSG(logits.ndim() == 2, kOp, " logits must be [N, V], got ", logits.DebugString());
  CheckOnDevice(ctx, targets, kOp, "targets");
  SM_CHECK_MSG(targets.dtype() == DType::kI32 && targets.numel() == logits.dim(0), kOp, " targets ",
               targets.DebugString(), " for ", logits.DebugString());
  if (d_logits.defined()) {
    CheckOnDevice(ctx, d_logits, kOp, "d_logits");
    SM_CHECK_MSG(d_logits.numel() == logits.numel(), kOp, " d_logits ", d_logits.DebugString(),
                 " must have the logits' size, for logits ", logits.DebugString());
    SM_CHECK_MSG(d_logits.dtype() == logits.dtype() || d_logits.dtype() == DType::kBF16, kOp,
                 " d_logits ", d_logits.DebugString(),
                 " must be in the logits' dtype or bf16, for logits ", logits.DebugString());
  }
  CheckOnDevice(ctx, loss, kOp, "loss");
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, kOp, " loss ", loss.DebugString(),
               " (want f64[1])");
  const int64_t n = logits.dim(0), v = logits.dim(1);
  if (n == 0) {
    SM_CHECK_CUDA_CALL(ctx, cudaMemsetAsync(loss.raw_data(), 0, sizeof(double), Stream(ctx)),
                       kOp);  // +0.0
    return;
  }
  SM_CHECK_MSG(v > 0, kOp, " needs a vocabulary, got ", logits.DebugString());
  SM_CHECK_MSG(v <= std::numeric_limits<int32_t>::max(), kOp,
               " takes int32 targets, so at most 2^31 − 1 classes, got ", logits.DebugString());
  const Tensor row_loss = ctx.Empty({n}, DType::kF64);
  const bool packed =
      AllAligned16({logits.raw_data(), d_logits.defined() ? d_logits.raw_data() : nullptr});
  const bool bf16_grad = d_logits.defined() && d_logits.dtype() != logits.dtype();
  DispatchFloat(logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (bf16_grad) {
      PickCrossEntropyKernel<T, __nv_bfloat16>(ctx, packed, logits, targets, d_logits, row_loss);
    } else {
      PickCrossEntropyKernel<T, T>(ctx, packed, logits, targets, d_logits, row_loss);
    }
  });
  SM_CHECK_LAUNCH(ctx, kOp, "CrossEntropyRowKernel");
  MeanLossKernel<<<1, kThreads, 0, Stream(ctx)>>>(n, Ptr<const double>(row_loss),
                                                  Ptr<double>(loss));
  SM_CHECK_LAUNCH(ctx, kOp, "MeanLossKernel");
}

}  // namespace scalemoe::cuda
