// Token embedding lookup and its backward (CPU, f32/f64 weights, int32 ids).
#include <cstring>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void Check(const Tensor& tokens, const Tensor& weight, const Tensor& rows) {
  SM_CHECK_MSG(tokens.dtype() == DType::kI32 && tokens.is_contiguous(),
               "Embedding tokens must be contiguous int32, got ", tokens.DebugString());
  SM_CHECK_MSG(weight.ndim() == 2 && weight.is_contiguous(), "Embedding weight ",
               weight.DebugString());
  SM_CHECK_MSG(rows.numel() == tokens.numel() * weight.dim(1) && rows.dtype() == weight.dtype() &&
                   rows.is_contiguous(),
               "Embedding rows ", rows.DebugString(), " for ", tokens.DebugString());
}

int64_t CheckedId(const int32_t* ids, int64_t n, int64_t vocab) {
  const int64_t id = ids[n];
  SM_CHECK_MSG(id >= 0 && id < vocab, "token id ", id, " at position ", n,
               " outside the vocabulary [0, ", vocab, ")");
  return id;
}

}  // namespace

void EmbeddingLookup(const ExecContext&, const Tensor& tokens, const Tensor& weight,
                     const Tensor& out) {
  Check(tokens, weight, out);
  const int64_t vocab = weight.dim(0), c = weight.dim(1);
  const size_t row_bytes = static_cast<size_t>(c) * DTypeSize(weight.dtype());
  const char* w = static_cast<const char*>(weight.raw_data());
  char* o = static_cast<char*>(out.raw_data());
  const int32_t* ids = tokens.data<int32_t>();
  for (int64_t n = 0; n < tokens.numel(); ++n) {
    std::memcpy(o + n * row_bytes, w + CheckedId(ids, n, vocab) * row_bytes, row_bytes);
  }
}

void EmbeddingBackward(const ExecContext&, const Tensor& tokens, const Tensor& d_out,
                       const Tensor& d_weight) {
  Check(tokens, d_weight, d_out);
  const int64_t vocab = d_weight.dim(0), c = d_weight.dim(1);
  const int32_t* ids = tokens.data<int32_t>();
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const T* g = d_out.data<T>();
    T* dw = d_weight.data<T>();
    for (int64_t n = 0; n < tokens.numel(); ++n) {
      T* row = dw + CheckedId(ids, n, vocab) * c;
      for (int64_t j = 0; j < c; ++j) row[j] += g[n * c + j];
    }
  };
  if (d_weight.dtype() == DType::kF64) {
    run(double{});
  } else {
    run(float{});
  }
}

}  // namespace scalemoe::cpu
