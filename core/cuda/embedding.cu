// EmbeddingLookup and EmbeddingBackward on the GPU, the contract of
// core/ops.h (core/cpu/embedding.cc is the reference): tokens int32 [N],
// weight / d_weight [V, C] (f32, f64 or bf16), out / d_out [N, C].
//   out[n, :] = weight[tokens[n], :]                       (overwritten)
//   d_weight[tokens[n], :] += d_out[n, :]                  (accumulated)
// The CPU SM_CHECKs the ids; the GPU cannot without a host read, so an id
// outside [0, V) gives a NaN row in the lookup (the loss turns NaN, loudly)
// and adds nothing in the backward. Callers that must report bad ids check
// them on the device first (ops::CountOutOfRange).
//
// The backward is deterministic, without atomics: the (id, position) pairs
// are sorted by id (CUB's radix sort, stable: positions stay ascending
// within an id), and the first entry of each id's run owns that row: it
// adds the run's d_out rows to d_weight's row in position order, in the
// compute type (f32 for f32 and bf16, f64 for f64). The order is the CPU's,
// so f32 and f64 match the CPU reference bit for bit.
#include <cub/device/device_radix_sort.cuh>
#include <limits>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// n = N·C elements in packs of V (C % V == 0: a pack never crosses a row).
template <typename T, int V>
__global__ void EmbeddingLookupKernel(int64_t n, int64_t c, int64_t vocab, const int32_t* tokens,
                                      const T* weight, T* out) {
  ForEachPack<V>(n, [&](int64_t i, int count) {
    const int64_t row = i / c, j = i - row * c;
    const int64_t id = tokens[row];
    Pack<T, V> pack;
    if (id >= 0 && id < vocab) {
      if (count == V) {
        pack = *reinterpret_cast<const Pack<T, V>*>(weight + id * c + j);
      } else {
        for (int k = 0; k < count; ++k) pack.v[k] = weight[id * c + j + k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) pack.v[k] = NanOf<T>();
    }
    if (count == V) {
      *reinterpret_cast<Pack<T, V>*>(out + i) = pack;
    } else {
      for (int k = 0; k < count; ++k) out[i + k] = pack.v[k];
    }
  });
}

// keys[n] = tokens[n], or `vocab` for an id outside [0, vocab) (sorted
// last, then skipped); positions[n] = n.
__global__ void SortInputsKernel(int64_t n, int64_t vocab, const int32_t* tokens, uint32_t* keys,
                                 int32_t* positions) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int32_t id = tokens[i];
    keys[i] = static_cast<uint32_t>(id >= 0 && id < vocab ? id : vocab);
    positions[i] = static_cast<int32_t>(i);
  }
}

// Block per sorted entry s: if s starts a run of one id, the block adds the
// run's d_out rows (in sorted, i.e. position, order) to that id's row,
// threads over the C columns.
template <typename T>
__global__ void EmbeddingBackwardKernel(int64_t n, int64_t c, int64_t vocab, const uint32_t* keys,
                                        const int32_t* positions, const T* d_out, T* d_weight) {
  using A = Acc<T>;
  for (int64_t s = blockIdx.x; s < n; s += gridDim.x) {  // uniform over the block
    const uint32_t id = keys[s];
    if (id >= vocab || (s > 0 && keys[s - 1] == id)) continue;
    T* row = d_weight + static_cast<int64_t>(id) * c;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      A acc = ToAcc(row[j]);
      for (int64_t k = s; k < n && keys[k] == id; ++k) {
        acc += ToAcc(d_out[static_cast<int64_t>(positions[k]) * c + j]);
      }
      row[j] = FromAcc<T>(acc);
    }
  }
}

// ---------------------------------------------------------------- launchers

void Check(const ExecContext& ctx, const char* op, const Tensor& tokens, const Tensor& weight,
           const Tensor& rows) {
  CheckOnDevice(ctx, tokens, op, "tokens");
  SM_CHECK_MSG(tokens.dtype() == DType::kI32, op, " tokens must be int32, got ",
               tokens.DebugString());
  CheckOnDevice(ctx, weight, op, "weight");
  SM_CHECK_MSG(weight.ndim() == 2, op, " weight must be [V, C], got ", weight.DebugString());
  CheckOnDevice(ctx, rows, op, "rows");
  SM_CHECK_MSG(rows.numel() == tokens.numel() * weight.dim(1) && rows.dtype() == weight.dtype(), op,
               " rows ", rows.DebugString(), " for tokens ", tokens.DebugString(), " and weight ",
               weight.DebugString());
  SM_CHECK_MSG(weight.dim(0) < std::numeric_limits<int32_t>::max() &&
                   tokens.numel() <= std::numeric_limits<int32_t>::max(),
               op, " needs int32 ids and positions: ", tokens.DebugString(), ", ",
               weight.DebugString());
}

// Bits that hold every key of [0, vocab] (vocab itself marks bad ids).
int KeyBits(int64_t vocab) {
  int bits = 1;
  while (bits < 31 && (int64_t{1} << bits) <= vocab) ++bits;
  return bits;
}

}  // namespace

void EmbeddingLookup(const ExecContext& ctx, const Tensor& tokens, const Tensor& weight,
                     const Tensor& out) {
  Check(ctx, "EmbeddingLookup", tokens, weight, out);
  const int64_t vocab = weight.dim(0), c = weight.dim(1);
  const int64_t n = out.numel();
  if (n == 0) return;
  DispatchFloat(weight, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kV = kPack<T>;
    const int32_t* ids = Ptr<const int32_t>(tokens);
    const T* w = Ptr<const T>(weight);
    T* o = Ptr<T>(out);
    if (c % kV == 0 && AllAligned16({w, o})) {
      EmbeddingLookupKernel<T, kV>
          <<<Blocks(n / kV), kThreads, 0, Stream(ctx)>>>(n, c, vocab, ids, w, o);
    } else {
      EmbeddingLookupKernel<T, 1><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(n, c, vocab, ids, w, o);
    }
  });
  SM_CHECK_LAUNCH(ctx, "EmbeddingLookup", "EmbeddingLookupKernel");
}

void EmbeddingBackward(const ExecContext& ctx, const Tensor& tokens, const Tensor& d_out,
                       const Tensor& d_weight) {
  constexpr const char* kOp = "EmbeddingBackward";
  Check(ctx, kOp, tokens, d_weight, d_out);
  const int64_t n = tokens.numel(), vocab = d_weight.dim(0), c = d_weight.dim(1);
  if (n == 0 || c == 0) return;
  // Keys are the ids as uint32 (in int32 tensors: no unsigned dtype).
  const Tensor keys_in = ctx.Empty({n}, DType::kI32), keys = ctx.Empty({n}, DType::kI32);
  const Tensor positions_in = ctx.Empty({n}, DType::kI32);
  const Tensor positions = ctx.Empty({n}, DType::kI32);
  SortInputsKernel<<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
      n, vocab, Ptr<const int32_t>(tokens), Ptr<uint32_t>(keys_in), Ptr<int32_t>(positions_in));
  SM_CHECK_LAUNCH(ctx, kOp, "SortInputsKernel");

  const int bits = KeyBits(vocab);
  const int num = static_cast<int>(n);
  size_t temp_bytes = 0;  // a size query: launches nothing
  SM_CHECK_CUDA_CALL(
      ctx,
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, Ptr<const uint32_t>(keys_in),
                                      Ptr<uint32_t>(keys), Ptr<const int32_t>(positions_in),
                                      Ptr<int32_t>(positions), num, 0, bits, Stream(ctx)),
      kOp);
  // At least one element: a null temp pointer would make the sort a size query.
  const Tensor temp =
      ctx.Empty({std::max<int64_t>(
                    1, static_cast<int64_t>((temp_bytes + sizeof(int64_t) - 1) / sizeof(int64_t)))},
                DType::kI64);
  SM_CHECK_CUDA_CALL(
      ctx,
      cub::DeviceRadixSort::SortPairs(temp.raw_data(), temp_bytes, Ptr<const uint32_t>(keys_in),
                                      Ptr<uint32_t>(keys), Ptr<const int32_t>(positions_in),
                                      Ptr<int32_t>(positions), num, 0, bits, Stream(ctx)),
      kOp);

  const int threads = static_cast<int>(std::clamp<int64_t>((c + 31) / 32 * 32, 32, kThreads));
  DispatchFloat(d_weight, [&](auto tag) {
    using T = typename decltype(tag)::type;
    EmbeddingBackwardKernel<T><<<RowBlocks(n), threads, 0, Stream(ctx)>>>(
        n, c, vocab, Ptr<const uint32_t>(keys), Ptr<const int32_t>(positions), Ptr<const T>(d_out),
        Ptr<T>(d_weight));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "EmbeddingBackwardKernel");
}

}  // namespace scalemoe::cuda
