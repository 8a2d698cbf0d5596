// GPU test: device Philox init equals the host init bit for bit.
#include <cuda_runtime.h>

#include "core/cuda/philox_fill.h"
#include "core/philox.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using CudaPhiloxTest = testing::CudaOpTest;  // skips without a device

TEST_F(CudaPhiloxTest, DeviceInitEqualsHostInit) {
  const int64_t n = 100003, first = 77;
  float* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, n * sizeof(float)), cudaSuccess);
  ASSERT_TRUE(cuda::PhiloxNormalFill(dev, n, 5, HashName("w"), first, 0.02, nullptr).ok());
  std::vector<float> host(n);
  ASSERT_EQ(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dev);
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    float want = static_cast<float>(0.02 * PhiloxNormal(5, HashName("w"), first + i));
    mismatches += host[i] != want;
  }
  // Device libm may differ from glibc in the last ulp of log/cos.
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace scalemoe
