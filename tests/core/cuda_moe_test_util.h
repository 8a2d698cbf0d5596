// Helpers of the MoE CUDA op tests (tests/core/cuda_router_test.cc,
// cuda_moe_index_test.cc): the routing shapes they sweep and Philox-random
// integer tensors (expert ids, counts, indices) on the host.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/philox.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe::testing {

// N tokens, E experts, K slots.
struct RouteShape {
  int64_t n, e;
  int k;
};

inline std::string ShapeName(const RouteShape& s) {
  return absl::StrCat("N ", s.n, " E ", s.e, " K ", s.k);
}

// One token; k = 1 and k = 8 with 64 experts; k = E; rows wider than a
// warp; 32768 assignments (the radix sorts' multi-block path); k = 12
// (CombineSlots' slots in two chunks of 8).
inline const std::vector<RouteShape>& RouteShapes() {
  static const std::vector<RouteShape> shapes = {
      {1, 8, 2},     {1, 64, 8}, {37, 16, 1}, {256, 64, 8},  {1000, 64, 1},
      {513, 128, 4}, {5, 1, 1},  {33, 6, 6},  {300, 200, 3}, {4096, 64, 8},
      {70, 32, 12},
  };
  return shapes;
}

// Uniform integer in [0, bound) by Philox (seed, stream, index).
inline int64_t RandomIndex(int64_t bound, uint64_t seed, uint64_t stream, uint64_t index) {
  const int64_t v =
      static_cast<int64_t>(PhiloxUniform(seed, stream, index) * static_cast<double>(bound));
  return v < bound ? v : bound - 1;
}

inline Tensor IntHost(const Shape& shape, DType dtype, const std::vector<int64_t>& values) {
  Tensor t = Tensor::Empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::kI32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(values[i]);
    } else {
      t.data<int64_t>()[i] = values[i];
    }
  }
  return t;
}

// How expert ids are drawn.
enum class IdMode {
  kDistinctRows,  // K distinct experts per token (what TopKRouting gives)
  kSkipLast,      // any expert but the last, repeats allowed: expert E−1 gets no token
  kAllToOne,      // every slot to expert 0
};

inline Tensor RandomExpertIds(const RouteShape& s, IdMode mode, uint64_t seed) {
  std::vector<int64_t> v(s.n * s.k);
  for (int64_t t = 0; t < s.n; ++t) {
    std::vector<int64_t> row;
    for (int j = 0; j < s.k; ++j) {
      const uint64_t i = static_cast<uint64_t>(t * s.k + j);
      int64_t id = 0;
      if (mode == IdMode::kSkipLast) {
        id = s.e > 1 ? RandomIndex(s.e - 1, seed, 7, i) : 0;
      } else if (mode == IdMode::kDistinctRows) {
        // Rejection-free: the r-th smallest unused expert.
        int64_t pick = RandomIndex(s.e - j, seed, 7, i);
        for (id = 0;; ++id) {
          bool used = false;
          for (int64_t u : row) used |= u == id;
          if (used) continue;
          if (pick-- == 0) break;
        }
      }
      row.push_back(id);
      v[t * s.k + j] = id;
    }
  }
  return IntHost({s.n, s.k}, DType::kI32, v);
}

inline void ExpectIntsEqual(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  for (int64_t i = 0; i < got.numel(); ++i) {
    ASSERT_EQ(got.At(i), want.At(i)) << what << ": element " << i;
  }
}

// The MoE op tests' fixture: integer outputs start as 0x7F7F... (not −1,
// a value the ops write on purpose), and the context's status is checked.
class CudaMoeOpTest : public CudaOpTest {
 protected:
  Tensor PoisonedIndex(const Shape& shape, DType dtype) const {
    Tensor t = ctx_.Empty(shape, dtype);
    if (t.nbytes() > 0) {
      EXPECT_EQ(
          cudaMemsetAsync(t.raw_data(), 0x7F, t.nbytes(), static_cast<cudaStream_t>(ctx_.stream())),
          cudaSuccess);
    }
    return t;
  }
  void ExpectOk() const {
    const Status st = ctx_.status();
    EXPECT_TRUE(st.ok()) << st;
  }
};

}  // namespace scalemoe::testing
