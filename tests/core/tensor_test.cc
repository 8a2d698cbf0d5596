#include "core/tensor.h"

#include "gtest/gtest.h"

namespace scalemoe {
namespace {

TEST(TensorTest, EmptyIsContiguousAndZerosIsZeroFilled) {
  Tensor t = Tensor::Empty({2, 3, 4}, DType::kF32);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.DebugString(), "f32[2, 3, 4] cpu");
  Tensor z = Tensor::Zeros({2, 3, 4}, DType::kF32);
  for (int i = 0; i < 24; ++i) EXPECT_EQ(z.data<float>()[i], 0.0f);
}

TEST(TensorTest, ViewAliasesAndInfers) {
  Tensor t = Tensor::FromVector({2, 3}, {0, 1, 2, 3, 4, 5}, DType::kF64);
  Tensor v = t.View({3, -1});
  EXPECT_EQ(v.shape(), (Shape{3, 2}));
  v.data<double>()[0] = 42;
  EXPECT_EQ(t.At(0), 42);
}

TEST(TensorTest, NarrowOnInnerDimIsStridedView) {
  Tensor t = Tensor::FromVector({2, 3}, {0, 1, 2, 3, 4, 5}, DType::kF32);
  Tensor col = t.Narrow(1, 1, 2);
  EXPECT_FALSE(col.is_contiguous());
  EXPECT_EQ(col.ToVector(), (std::vector<double>{1, 2, 4, 5}));
  Tensor row = t.Narrow(0, 1, 1);
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_EQ(row.ToVector(), (std::vector<double>{3, 4, 5}));
  Tensor copy = col.Clone();
  EXPECT_TRUE(copy.is_contiguous());
  EXPECT_EQ(copy.ToVector(), (std::vector<double>{1, 2, 4, 5}));
}

// Two row blocks of one buffer, the second right after the first, join
// into one aliasing view; anything else does not join.
TEST(TensorTest, JoinRowsOnlyJoinsWhatFollowsInOneStorage) {
  Tensor t = Tensor::FromVector({4, 2, 3}, std::vector<double>(24, 0.0), DType::kF32);
  const Tensor a = t.Narrow(0, 1, 1).View({2, 3}), b = t.Narrow(0, 2, 1).View({2, 3});
  Tensor both = a.JoinRows(b);
  ASSERT_TRUE(both.defined());
  EXPECT_EQ(both.shape(), (Shape{4, 3}));
  EXPECT_TRUE(both.is_contiguous());
  EXPECT_EQ(both.raw_data(), a.raw_data());
  both.data<float>()[6] = 7;  // b's first element
  EXPECT_EQ(b.At(0), 7);
  EXPECT_FALSE(b.JoinRows(a).defined());                                  // the wrong order
  EXPECT_FALSE(a.JoinRows(t.Narrow(0, 3, 1).View({2, 3})).defined());     // a gap
  EXPECT_FALSE(a.JoinRows(b.Clone()).defined());                          // another buffer
  EXPECT_FALSE(a.JoinRows(t.Narrow(0, 2, 1).View({3, 2})).defined());     // other rows
  EXPECT_FALSE(t.Narrow(2, 0, 1).JoinRows(t.Narrow(2, 1, 1)).defined());  // strided
  EXPECT_FALSE(Tensor().JoinRows(b).defined());
}

TEST(TensorTest, CopyConvertsDtypesIncludingBf16) {
  Tensor f = Tensor::FromVector({3}, {1.0, -2.5, 3.140625}, DType::kF32);
  Tensor b = Tensor::Empty({3}, DType::kBF16);
  b.CopyFrom(f);
  EXPECT_EQ(b.ToVector(), (std::vector<double>{1.0, -2.5, 3.140625}));
  // 1 + 2^-9 is not representable in bf16 and rounds to even (1.0).
  EXPECT_EQ(static_cast<float>(bf16(1.0f + 1.0f / 512)), 1.0f);
  Tensor i = Tensor::Empty({3}, DType::kI64);
  i.CopyFrom(Tensor::FromVector({3}, {7, 8, 9}, DType::kF64));
  EXPECT_EQ(i.data<int64_t>()[2], 9);
}

TEST(TensorTest, FromBlobDoesNotOwn) {
  std::vector<float> buf(6, 1.5f);
  {
    Tensor t = Tensor::FromBlob(buf.data(), {2, 3}, DType::kF32, Device::kCPU);
    t.Fill(2.0);
  }
  EXPECT_EQ(buf[5], 2.0f);  // still alive, written through the view
}

TEST(TensorTest, CudaWithoutBackendIsAClearError) {
#if !SCALEMOE_CUDA
  auto t = Tensor::TryEmpty({4}, DType::kF32, Device::kCUDA);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("without the CUDA backend"), std::string::npos);
#else
  GTEST_SKIP() << "CUDA backend built: covered by the gpu-labelled tests";
#endif
}

TEST(TensorTest, NegativeDimensionRefused) {
  auto t = Tensor::TryEmpty({2, -1}, DType::kF32, Device::kCPU);
  EXPECT_FALSE(t.ok());
}

}  // namespace
}  // namespace scalemoe
