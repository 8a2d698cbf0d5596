// GPU test: ScaleRowsColsGroup and ScaleRowsColsBackwardGroup against the
// CPU reference on fresh Philox data (f32/f64/bf16; several group sizes,
// one included; a single row or column; R large enough for many chunks of
// d_col's sum; row or col undefined; any subset of d_x, d_row, d_col; the
// in-place unfold d_x = d_out; the fold rounded to bf16; a d_col shared by
// all groups), and bit for bit against one ScaleRowsCols /
// ScaleRowsColsBackward launch per group.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::BitwiseEqual;
using testing::CudaOpTest;
using testing::ExpectParity;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

struct Case {
  int64_t groups, r, c;
};
const Case kCases[] = {{1, 37, 5},   {3, 1, 768},  {2, 300, 1}, {5, 64, 64},
                       {16, 33, 24}, {2, 5000, 40}};  // the last: d_col sums 79 chunks of 64 rows
constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

class CudaScaleRowsColsGroupTest : public CudaOpTest {
 protected:
  // G host tensors of `shape` (none when !wanted).
  std::vector<Tensor> Hosts(bool wanted, int64_t groups, const Shape& shape, DType dtype,
                            uint64_t seed, uint64_t stream) const {
    std::vector<Tensor> out;
    for (int64_t g = 0; wanted && g < groups; ++g) {
      out.push_back(RandomHost(shape, dtype, seed * 64 + g, stream));
    }
    return out;
  }
  std::vector<Tensor> Devs(const std::vector<Tensor>& hosts) const {
    std::vector<Tensor> out;
    for (const Tensor& h : hosts) out.push_back(Dev(h));
    return out;
  }
  std::vector<Tensor> Refs(const std::vector<Tensor>& hosts) const {
    std::vector<Tensor> out;
    for (const Tensor& h : hosts) out.push_back(ReferenceInput(h).Clone());
    return out;
  }
  // Matrices as they are, vectors [n] as [1, n].
  static ops::MatrixGroup Group(const ExecContext& ctx, const std::vector<Tensor>& ts) {
    std::vector<Tensor> views;
    for (const Tensor& t : ts) views.push_back(t.ndim() == 1 ? t.View({1, t.numel()}) : t);
    return ops::MakeMatrixGroup(ctx, views);
  }
  static Tensor At(const std::vector<Tensor>& ts, size_t g) {
    return ts.empty() ? Tensor() : ts[g];
  }
};

TEST_F(CudaScaleRowsColsGroupTest, ForwardMatchesCpuAndOneLaunchPerGroup) {
  uint64_t seed = 1;
  for (DType dtype : kFloats) {
    for (const Case& k : kCases) {
      for (int mask = 0; mask < 4; ++mask) {  // bit 0: row defined, bit 1: col defined
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", k.groups, " x [", k.r, ", ", k.c, "] mask ", mask);
        const Shape xs{k.r, k.c};
        const auto x = Hosts(true, k.groups, xs, dtype, seed, 1);
        const auto row = Hosts(mask & 1, k.groups, {k.r}, dtype, seed, 2);
        const auto col = Hosts(mask & 2, k.groups, {k.c}, dtype, seed, 3);
        const auto x_dev = Devs(x), row_dev = Devs(row), col_dev = Devs(col);
        std::vector<Tensor> out;
        for (int64_t g = 0; g < k.groups; ++g) out.push_back(Poisoned(xs, dtype));
        ops::ScaleRowsColsGroup(ctx_, Group(ctx_, x_dev), Group(ctx_, row_dev),
                                Group(ctx_, col_dev), Group(ctx_, out));
        const auto x_ref = Refs(x), row_ref = Refs(row), col_ref = Refs(col);
        for (int64_t g = 0; g < k.groups; ++g) {
          Tensor ref = Tensor::Empty(xs, x_ref[g].dtype());
          ops::ScaleRowsCols(cpu_, x_ref[g], At(row_ref, g), At(col_ref, g), ref);
          ExpectParity(Host(out[g]), ref, ParityTolerance(dtype), absl::StrCat(what, " ", g));
          Tensor single = Poisoned(xs, dtype);
          ops::ScaleRowsCols(ctx_, x_dev[g], At(row_dev, g), At(col_dev, g), single);
          EXPECT_TRUE(BitwiseEqual(Host(out[g]), Host(single))) << what << " group " << g;
        }
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaScaleRowsColsGroupTest, ForwardRoundedToBf16EqualsFoldThenCopy) {
  for (const Case& k : kCases) {
    const Shape xs{k.r, k.c};
    const auto x = Devs(Hosts(true, k.groups, xs, DType::kF32, 7, 1));
    const auto row = Devs(Hosts(true, k.groups, {k.r}, DType::kF32, 7, 2));
    const auto col = Devs(Hosts(true, k.groups, {k.c}, DType::kF32, 7, 3));
    std::vector<Tensor> out;
    for (int64_t g = 0; g < k.groups; ++g) out.push_back(Poisoned(xs, DType::kBF16));
    ops::ScaleRowsColsGroup(ctx_, Group(ctx_, x), Group(ctx_, row), Group(ctx_, col),
                            Group(ctx_, out));
    for (int64_t g = 0; g < k.groups; ++g) {
      Tensor folded = ctx_.Empty(xs, DType::kF32);
      ops::ScaleRowsCols(ctx_, x[g], row[g], col[g], folded);
      Tensor ref = ctx_.Empty(xs, DType::kBF16);
      ops::Copy(ctx_, folded, ref);
      EXPECT_TRUE(BitwiseEqual(Host(out[g]), Host(ref)))
          << k.groups << " x [" << k.r << ", " << k.c << "] group " << g;
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaScaleRowsColsGroupTest, BackwardMatchesCpuAndOneLaunchPerGroup) {
  uint64_t seed = 1000;
  for (DType dtype : kFloats) {
    for (const Case& k : kCases) {
      // bits 0-1: row, col defined; bits 2-4: d_x, d_row, d_col requested;
      // bit 5: d_x is d_out (the in-place unfold).
      for (int mask :
           {0b111111, 0b011111, 0b011100, 0b000111, 0b010011, 0b001011, 0b011001, 0b010110}) {
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", k.groups, " x [", k.r, ", ", k.c, "] mask ", mask);
        const Shape xs{k.r, k.c};
        const int64_t n = k.groups;
        const bool in_place = mask & 32;
        const auto x = Hosts(true, n, xs, dtype, seed, 1);
        const auto row = Hosts(mask & 1, n, {k.r}, dtype, seed, 2);
        const auto col = Hosts(mask & 2, n, {k.c}, dtype, seed, 3);
        const auto d_out = Hosts(true, n, xs, dtype, seed, 4);
        const auto d_row = Hosts(mask & 8, n, {k.r}, dtype, seed, 5);
        const auto d_col = Hosts(mask & 16, n, {k.c}, dtype, seed, 6);
        const auto x_dev = Devs(x), row_dev = Devs(row), col_dev = Devs(col);
        // Group and single launches on their own copies of the outputs.
        const auto d_out_dev = Devs(d_out), d_row_dev = Devs(d_row), d_col_dev = Devs(d_col);
        const auto d_out_one = Devs(d_out), d_row_one = Devs(d_row), d_col_one = Devs(d_col);
        std::vector<Tensor> d_x_dev, d_x_one;
        for (int64_t g = 0; (mask & 4) && g < n; ++g) {
          d_x_dev.push_back(in_place ? d_out_dev[g] : Poisoned(xs, dtype));
          d_x_one.push_back(in_place ? d_out_one[g] : Poisoned(xs, dtype));
        }
        ops::ScaleRowsColsBackwardGroup(ctx_, Group(ctx_, x_dev), Group(ctx_, row_dev),
                                        Group(ctx_, col_dev), Group(ctx_, d_out_dev),
                                        Group(ctx_, d_x_dev), Group(ctx_, d_row_dev),
                                        Group(ctx_, d_col_dev));
        const Status st = ctx_.status();
        ASSERT_TRUE(st.ok()) << st;
        const auto x_ref = Refs(x), row_ref = Refs(row), col_ref = Refs(col);
        const auto d_out_ref = Refs(d_out), d_row_ref = Refs(d_row), d_col_ref = Refs(d_col);
        const double tol = ParityTolerance(dtype);
        for (int64_t g = 0; g < n; ++g) {
          const std::string at = absl::StrCat(what, " group ", g);
          Tensor d_x_ref = d_x_dev.empty() ? Tensor() : Tensor::Empty(xs, x_ref[g].dtype());
          ops::ScaleRowsColsBackward(cpu_, x_ref[g], At(row_ref, g), At(col_ref, g), d_out_ref[g],
                                     d_x_ref, At(d_row_ref, g), At(d_col_ref, g));
          ops::ScaleRowsColsBackward(ctx_, x_dev[g], At(row_dev, g), At(col_dev, g), d_out_one[g],
                                     At(d_x_one, g), At(d_row_one, g), At(d_col_one, g));
          if (!d_x_dev.empty()) {
            ExpectParity(Host(d_x_dev[g]), d_x_ref, tol, "d_x " + at);
            EXPECT_TRUE(BitwiseEqual(Host(d_x_dev[g]), Host(d_x_one[g]))) << "d_x " << at;
          }
          if (!d_row.empty()) {
            ExpectParity(Host(d_row_dev[g]), d_row_ref[g], tol, "d_row " + at);
            EXPECT_TRUE(BitwiseEqual(Host(d_row_dev[g]), Host(d_row_one[g]))) << "d_row " << at;
          }
          if (!d_col.empty()) {
            ExpectParity(Host(d_col_dev[g]), d_col_ref[g], tol, "d_col " + at);
            EXPECT_TRUE(BitwiseEqual(Host(d_col_dev[g]), Host(d_col_one[g]))) << "d_col " << at;
          }
        }
      }
    }
  }
}

// One d_col for every group (a γ shared by the maps, the baseline's
// experts): the groups' sums add into it in group order, bit for bit what
// one launch per group in that order gives, and near the CPU's in-order sum.
TEST_F(CudaScaleRowsColsGroupTest, BackwardSharedColEqualsOneLaunchPerGroupInOrder) {
  uint64_t seed = 5000;
  for (DType dtype : kFloats) {
    for (const Case& k : kCases) {
      if (k.groups < 2) continue;
      ++seed;
      const std::string what =
          absl::StrCat(DTypeName(dtype), " ", k.groups, " x [", k.r, ", ", k.c, "]");
      const Shape xs{k.r, k.c};
      const int64_t n = k.groups;
      const auto x = Hosts(true, n, xs, dtype, seed, 1);
      const auto row = Hosts(true, n, {k.r}, dtype, seed, 2);
      const Tensor col = RandomHost({k.c}, dtype, seed, 3);
      const auto grad = Hosts(true, n, xs, dtype, seed, 4);
      const Tensor d_col = RandomHost({k.c}, dtype, seed, 6);
      const auto x_dev = Devs(x), row_dev = Devs(row);
      const Tensor col_dev = Dev(col);
      const auto grad_dev = Devs(grad), grad_one = Devs(grad);
      const Tensor d_col_dev = Dev(d_col), d_col_one = Dev(d_col);
      const std::vector<Tensor> cols(n, col_dev), d_cols(n, d_col_dev);
      // The unfold of a shared γ: in place in W's gradient, no du.
      ops::ScaleRowsColsBackwardGroup(ctx_, Group(ctx_, x_dev), Group(ctx_, row_dev),
                                      Group(ctx_, cols), Group(ctx_, grad_dev),
                                      Group(ctx_, grad_dev), {}, Group(ctx_, d_cols));
      const Status st = ctx_.status();
      ASSERT_TRUE(st.ok()) << st;
      const auto x_ref = Refs(x), row_ref = Refs(row), grad_ref = Refs(grad);
      const Tensor col_ref = ReferenceInput(col).Clone(), d_col_ref = ReferenceInput(d_col).Clone();
      for (int64_t g = 0; g < n; ++g) {
        ops::ScaleRowsColsBackward(cpu_, x_ref[g], row_ref[g], col_ref, grad_ref[g], grad_ref[g],
                                   Tensor(), d_col_ref);
        ops::ScaleRowsColsBackward(ctx_, x_dev[g], row_dev[g], col_dev, grad_one[g], grad_one[g],
                                   Tensor(), d_col_one);
        EXPECT_TRUE(BitwiseEqual(Host(grad_dev[g]), Host(grad_one[g]))) << "d_x " << what << g;
      }
      ExpectParity(Host(d_col_dev), d_col_ref, ParityTolerance(dtype), "d_col " + what);
      EXPECT_TRUE(BitwiseEqual(Host(d_col_dev), Host(d_col_one))) << "d_col " << what;
    }
  }
}

}  // namespace
}  // namespace scalemoe
