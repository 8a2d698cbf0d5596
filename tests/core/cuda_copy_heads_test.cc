// GPU test: CopyHeads (core/ops.h) between contiguous head vectors and
// token-strided ones (core/head_rows.h: q, k or v as heads of a fused
// q|k|v buffer [B, T, H + 2·KV, D], or columns of an [R, W] matrix), in
// both directions and between two strided layouts: the copied bits
// exactly, every element of the destination buffer outside its slice still
// NaN bits, the source buffer untouched, and the bits of the CPU's
// CopyHeads on the same buffers. f32, f64 and bf16; 16-byte packs
// (aligned, rows and strides on packs) and one element at a time (off a
// 16-byte boundary, odd D, a stride off the pack); more items than one grid
// covers (the grid-stride loop's token and column steps).
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"
#include "tests/core/head_rows_test_util.h"

namespace scalemoe {
namespace {

using testing::BitwiseEqual;
using testing::CudaOpTest;
using testing::RandomHost;

constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

// Slices of wider buffers: tests/core/head_rows_test_util.h.
using testing::Columns;
using testing::Contiguous;
using testing::Heads;
using testing::HostBuffer;
using testing::Layout;
using testing::Rank3Heads;
using testing::SliceOf;
using testing::SliceShape;

struct CopyCase {
  const char* what;
  Layout from, to;
};

class CudaCopyHeadsTest : public CudaOpTest {
 protected:
  // CopyHeads of random values from c.from's slice into c.to's, checked on
  // the whole of both buffers and against the CPU's CopyHeads.
  void Check(const CopyCase& c, DType dtype, uint64_t seed) {
    const std::string what = absl::StrCat(c.what, " ", DTypeName(dtype));
    const Shape shape = SliceShape(c.from);
    ASSERT_EQ(SliceShape(c.to), shape) << what;
    const Tensor values = RandomHost(shape, dtype, seed, 1);
    const Tensor src = HostBuffer(c.from, dtype, values);
    const Tensor dst = HostBuffer(c.to, dtype);
    Tensor want = dst.Clone();
    SliceOf(c.to, want).CopyFrom(values);

    const Tensor src_dev = Dev(src), dst_dev = Dev(dst);
    ops::CopyHeads(ctx_, SliceOf(c.from, src_dev), SliceOf(c.to, dst_dev));
    EXPECT_TRUE(BitwiseEqual(Host(dst_dev), want)) << "destination buffer " << what;
    EXPECT_TRUE(BitwiseEqual(Host(src_dev), src)) << "source buffer " << what;

    Tensor cpu_dst = dst.Clone();
    ops::CopyHeads(cpu_, SliceOf(c.from, src), SliceOf(c.to, cpu_dst));
    EXPECT_TRUE(BitwiseEqual(cpu_dst, want)) << "CPU " << what;
  }
};

TEST_F(CudaCopyHeadsTest, CopiesTheBitsAndNothingElse) {
  // clang-format off
  const std::vector<CopyCase> cases = {
      // k of a fused [B, T, H + 2·KV, D] (H = 4, KV = 2) in and out.
      {"contiguous -> k", Contiguous({2, 5, 2, 64}), Heads(2, 5, 8, 4, 2, 64)},
      {"k -> contiguous", Heads(2, 5, 8, 4, 2, 64), Contiguous({2, 5, 2, 64})},
      {"q -> contiguous", Heads(2, 5, 8, 0, 4, 64), Contiguous({2, 5, 4, 64})},
      // Between two strides (v of a wider buffer), packed and not.
      {"k -> v", Heads(2, 5, 8, 4, 2, 64), Heads(2, 5, 12, 10, 2, 64)},
      {"k off 16 bytes -> v", Heads(2, 5, 8, 4, 2, 64, 1), Heads(2, 5, 12, 10, 2, 64)},
      {"k -> v off 16 bytes", Heads(2, 5, 8, 4, 2, 64), Heads(2, 5, 12, 10, 2, 64, 1)},
      // Odd D, three heads; one token; one head a token.
      {"D 6", Heads(2, 3, 12, 6, 3, 6), Heads(2, 3, 5, 2, 3, 6)},
      {"one token", Heads(1, 1, 8, 4, 2, 64), Contiguous({1, 1, 2, 64}, 1)},
      {"one head", Heads(3, 4, 3, 1, 1, 128), Heads(3, 4, 2, 0, 1, 128)},
      // [R, D] columns of wider matrices: a stride off the pack (67), then on it.
      {"columns 67 -> 40", Columns(37, 67, 5, 24), Columns(37, 40, 16, 24)},
      {"columns -> contiguous", Columns(37, 40, 16, 24), Contiguous({37, 24})},
      // Rank 3: [tokens, H, D].
      {"rank 3", Rank3Heads(6, 8, 2, 3, 64), Contiguous({6, 3, 64})},
      // More items than one grid's threads (8192 blocks of 256): packed
      // (70000 tokens of 32 f32 packs), and one element at a time.
      {"many tokens", Heads(1, 70000, 4, 2, 2, 64), Contiguous({1, 70000, 2, 64})},
      {"many tokens off 16 bytes", Heads(1, 70000, 4, 2, 2, 64, 1),
       Contiguous({1, 70000, 2, 64})},
  };
  // clang-format on
  uint64_t seed = 100;
  for (DType dtype : kFloats) {
    for (const CopyCase& c : cases) Check(c, dtype, ++seed);
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// x and y the same view: nothing changes.
TEST_F(CudaCopyHeadsTest, ToItselfKeepsTheBuffer) {
  const Layout k = Heads(2, 5, 8, 4, 2, 64);
  const Tensor values = RandomHost({2, 5, 2, 64}, DType::kF32, 7, 1);
  const Tensor host = HostBuffer(k, DType::kF32, values);
  const Tensor dev = Dev(host);
  ops::CopyHeads(ctx_, SliceOf(k, dev), SliceOf(k, dev));
  EXPECT_TRUE(BitwiseEqual(Host(dev), host));
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
