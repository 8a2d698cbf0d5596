// CopySegments on the GPU (core/ops.h): ranges of one flat buffer into
// another over the rows (src_begin, dst_begin, count) of a device segment
// table, one launch for all rows, converting among f32, f64 and bf16 as the
// CPU reference does (through f64 when either side is f64, else f32; bf16
// rounded to nearest even): the same bits.
#include <type_traits>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/multi_tensor.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

template <typename From, typename To>
__global__ void CopySegmentsKernel(const int64_t* __restrict__ rows,
                                   const int64_t* __restrict__ plan, int64_t count,
                                   const From* __restrict__ src, To* __restrict__ dst) {
  using A =
      std::conditional_t<std::is_same_v<From, double> || std::is_same_v<To, double>, double, float>;
  ForEachChunk(plan, count, [&](int64_t s, int64_t, int64_t offset) {
    const int64_t* r = rows + 3 * s;
    const int64_t last = offset + kChunk < r[2] ? offset + kChunk : r[2];
    const From* from = src + r[0];
    To* to = dst + r[1];
#pragma unroll 4
    for (int64_t i = offset + threadIdx.x; i < last; i += blockDim.x) {
      if constexpr (std::is_same_v<From, To>) {
        to[i] = from[i];
      } else {
        to[i] = FromAcc<To>(static_cast<Acc<To>>(static_cast<A>(ToAcc(from[i]))));
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------- launcher

void CopySegments(const ExecContext& ctx, const Tensor& src, const Tensor& dst,
                  const Tensor& segments) {
  constexpr const char* kOp = "CopySegments";
  CheckOnDevice(ctx, src, kOp, "src");
  CheckOnDevice(ctx, dst, kOp, "dst");
  const Tensor plan =
      ChunkPlan(ctx, segments, RowKind::kSrcDstCount, src.numel(), dst.numel(), kOp);
  const int64_t count = segments.dim(0);
  if (count == 0) return;
  DispatchFloat(src, [&](auto ftag) {
    DispatchFloat(dst, [&](auto ttag) {
      using From = typename decltype(ftag)::type;
      using To = typename decltype(ttag)::type;
      // Destination ranges are disjoint: at most dst.numel() elements move.
      CopySegmentsKernel<From, To>
          <<<ChunkBlocks(ChunkBound(dst.numel(), count)), kThreads, 0, Stream(ctx)>>>(
              Ptr<const int64_t>(segments), Ptr<const int64_t>(plan), count, Ptr<const From>(src),
              Ptr<To>(dst));
    });
  });
  SM_CHECK_LAUNCH(ctx, kOp, "CopySegmentsKernel");
}

}  // namespace scalemoe::cuda
