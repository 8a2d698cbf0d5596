// The GPU tests' token-strided head vectors (core/head_rows.h): slices of
// wider host buffers of NaN bits, described by a Layout
// (tests/core/cuda_copy_heads_test.cc, tests/core/cuda_norm_rope_test.cc).
#pragma once

#include <cstring>

#include "core/tensor.h"

namespace scalemoe::testing {

// Head vectors as a slice of a wider buffer: heads [first, first + length)
// of a fused q|k|v buffer [B, T, H + 2·KV, D] (dim 2), or columns of an
// [R, W] matrix (dim 1); a contiguous tensor is the whole of its own buffer
// (dim 0). `skip` elements come before the buffer (1: off a 16-byte
// boundary).
struct Layout {
  Shape wide;
  int dim = 2;
  int64_t first = 0, length = 0, skip = 0;
};

inline Layout Contiguous(const Shape& shape, int64_t skip = 0) {
  return {shape, 0, 0, shape[0], skip};
}
inline Layout Heads(int64_t b, int64_t t, int64_t all_heads, int64_t first, int64_t heads,
                    int64_t d, int64_t skip = 0) {
  return {{b, t, all_heads, d}, 2, first, heads, skip};
}
inline Layout Columns(int64_t r, int64_t w, int64_t first, int64_t d, int64_t skip = 0) {
  return {{r, w}, 1, first, d, skip};
}
// Heads of [tokens, all_heads, D].
inline Layout Rank3Heads(int64_t tokens, int64_t all_heads, int64_t first, int64_t heads,
                         int64_t d) {
  return {{tokens, all_heads, d}, 1, first, heads, 0};
}
// The same slice at the end of a buffer `extra` heads (columns) wider: a
// second token stride.
inline Layout Wider(const Layout& l, int64_t extra) {
  Layout w = l;
  w.wide[w.dim] += extra;
  w.first = w.wide[w.dim] - w.length;
  return w;
}

// The slice that `l` describes of flat (skip elements, then the buffer).
inline Tensor SliceOf(const Layout& l, const Tensor& flat) {
  return flat.Narrow(0, l.skip, NumElements(l.wide)).View(l.wide).Narrow(l.dim, l.first, l.length);
}

inline Shape SliceShape(const Layout& l) {
  Shape s = l.wide;
  s[l.dim] = l.length;
  return s;
}

// A host buffer of NaN bits (0xFF bytes) with `values` (if defined) in its
// slice.
inline Tensor HostBuffer(const Layout& l, DType dtype, const Tensor& values = Tensor()) {
  Tensor flat = Tensor::Empty({l.skip + NumElements(l.wide)}, dtype);
  std::memset(flat.raw_data(), 0xFF, flat.nbytes());
  if (values.defined()) SliceOf(l, flat).CopyFrom(values);
  return flat;
}

}  // namespace scalemoe::testing
