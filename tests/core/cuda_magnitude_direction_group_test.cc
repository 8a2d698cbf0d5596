// GPU test: MagnitudeDirectionGroup and MagnitudeDirectionBackwardGroup
// against the CPU reference on fresh Philox data (f32/f64; several group
// sizes, one included; one element, odd lengths, lengths over one block).
// The forward gives MagnitudeDirection's bits; the backward's dot is one
// block's fixed-order sum: the same bits on every run.
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

struct Case {
  int64_t groups, d;
};
const Case kCases[] = {{1, 768}, {2, 1}, {3, 37}, {32, 1280}, {5, 2049}};

class CudaMagnitudeDirectionGroupTest : public CudaOpTest {
 protected:
  std::vector<Tensor> Hosts(int64_t groups, int64_t d, DType dtype, uint64_t seed,
                            uint64_t stream) const {
    std::vector<Tensor> out;
    for (int64_t g = 0; g < groups; ++g) out.push_back(RandomHost({1, d}, dtype, seed + g, stream));
    return out;
  }
  std::vector<Tensor> Devs(const std::vector<Tensor>& hosts) const {
    std::vector<Tensor> out;
    for (const Tensor& h : hosts) out.push_back(Dev(h));
    return out;
  }
  static std::vector<Tensor> Clones(const std::vector<Tensor>& ts) {
    std::vector<Tensor> out;
    for (const Tensor& t : ts) out.push_back(t.Clone());
    return out;
  }
};

TEST_F(CudaMagnitudeDirectionGroupTest, ForwardMatchesOneCallPerVector) {
  uint64_t seed = 1;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const Case& k : kCases) {
      seed += 100;
      const auto alpha = Devs(Hosts(k.groups, k.d, dtype, seed, 1));
      const auto beta = Devs(Hosts(k.groups, 1, dtype, seed, 2));
      std::vector<Tensor> gamma;
      for (int64_t g = 0; g < k.groups; ++g) gamma.push_back(Poisoned({1, k.d}, dtype));
      ops::MagnitudeDirectionGroup(ctx_, ops::MakeMatrixGroup(ctx_, alpha),
                                   ops::MakeMatrixGroup(ctx_, beta),
                                   ops::MakeMatrixGroup(ctx_, gamma));
      for (int64_t g = 0; g < k.groups; ++g) {
        Tensor one = Poisoned({1, k.d}, dtype);
        ops::MagnitudeDirection(ctx_, alpha[g], beta[g], Tensor(), 0, one);
        EXPECT_TRUE(BitwiseEqual(Host(gamma[g]), Host(one)))
            << DTypeName(dtype) << " " << k.groups << " x " << k.d << " vector " << g;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaMagnitudeDirectionGroupTest, BackwardMatchesCpuAndIsTheSameBitsEveryRun) {
  uint64_t seed = 5000;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const Case& k : kCases) {
      seed += 100;
      const std::string what = absl::StrCat(DTypeName(dtype), " ", k.groups, " x ", k.d);
      const auto alpha = Hosts(k.groups, k.d, dtype, seed, 1);
      const auto beta = Hosts(k.groups, 1, dtype, seed, 2);
      const auto d_gamma = Hosts(k.groups, k.d, dtype, seed, 3);
      const auto d_alpha = Hosts(k.groups, k.d, dtype, seed, 4);
      const auto d_beta = Hosts(k.groups, 1, dtype, seed, 5);
      std::vector<std::vector<Tensor>> runs_alpha, runs_beta;
      for (int run = 0; run < 2; ++run) {
        const auto d_alpha_dev = Devs(d_alpha), d_beta_dev = Devs(d_beta);
        ops::MagnitudeDirectionBackwardGroup(
            ctx_, ops::MakeMatrixGroup(ctx_, Devs(alpha)), ops::MakeMatrixGroup(ctx_, Devs(beta)),
            ops::MakeMatrixGroup(ctx_, Devs(d_gamma)), ops::MakeMatrixGroup(ctx_, d_alpha_dev),
            ops::MakeMatrixGroup(ctx_, d_beta_dev));
        std::vector<Tensor> a, b;
        for (int64_t g = 0; g < k.groups; ++g) {
          a.push_back(Host(d_alpha_dev[g]));
          b.push_back(Host(d_beta_dev[g]));
        }
        runs_alpha.push_back(a);
        runs_beta.push_back(b);
      }
      const auto d_alpha_ref = Clones(d_alpha), d_beta_ref = Clones(d_beta);
      ops::MagnitudeDirectionBackwardGroup(
          cpu_, ops::MakeMatrixGroup(cpu_, alpha), ops::MakeMatrixGroup(cpu_, beta),
          ops::MakeMatrixGroup(cpu_, d_gamma), ops::MakeMatrixGroup(cpu_, d_alpha_ref),
          ops::MakeMatrixGroup(cpu_, d_beta_ref));
      const double tol = ParityTolerance(dtype);
      for (int64_t g = 0; g < k.groups; ++g) {
        ExpectParity(runs_alpha[0][g], d_alpha_ref[g], tol, absl::StrCat("d_alpha ", what));
        ExpectParity(runs_beta[0][g], d_beta_ref[g], tol, absl::StrCat("d_beta ", what));
        EXPECT_TRUE(BitwiseEqual(runs_alpha[1][g], runs_alpha[0][g])) << what;
        EXPECT_TRUE(BitwiseEqual(runs_beta[1][g], runs_beta[0][g])) << what;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
