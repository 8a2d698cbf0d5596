// GPU test: the router ops (RouterScores, TopKRouting, CapacityDrop, the
// load-balancing and z-losses single-rank and sharded, AssignmentCounts,
// SelectedScores, TopKWeightsAt, AccumulateExpertLoads, ExpertBiasUpdate) against the CPU
// reference on fresh Philox data: one token, k = 1 and k = 8 with 64
// experts, k = E, an expert with no token, every token on one expert,
// capacities that drop, sigmoid and softmax, expert bias, exact ties,
// f32 and f64 (bf16 where the op takes it). Outputs start as NaN; integer
// outputs and selections must equal the CPU's exactly.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_moe_test_util.h"

namespace scalemoe {
namespace {

using testing::ExpectIntsEqual;
using testing::ExpectParity;
using testing::IdMode;
using testing::IntHost;
using testing::ParityTolerance;
using testing::RandomExpertIds;
using testing::RandomHost;
using testing::RandomIndex;
using testing::ReferenceInput;
using testing::RouteShape;
using testing::RouteShapes;
using testing::ShapeName;

constexpr DType kRouterFloats[] = {DType::kF32, DType::kF64};
constexpr ops::ScoreFunction kFns[] = {ops::ScoreFunction::kSoftmax, ops::ScoreFunction::kSigmoid};

const char* FnName(ops::ScoreFunction fn) {
  return fn == ops::ScoreFunction::kSoftmax ? "softmax" : "sigmoid";
}

// Host scores [N, E] in dtype: RouterScores of random logits (CPU).
Tensor HostScores(const ExecContext& cpu, const RouteShape& s, DType dtype, ops::ScoreFunction fn,
                  uint64_t seed) {
  const Tensor logits = RandomHost({s.n, s.e}, dtype, seed, 1, 2.0);
  Tensor scores = Tensor::Empty({s.n, s.e}, dtype);
  ops::RouterScores(cpu, fn, logits, scores);
  return scores;
}

// Values on a grid of 1/4 in [0.25, 2]: many exact ties, sums of two exact,
// and no row of zeros (normalize divides by the sum).
Tensor TiedHost(const Shape& shape, DType dtype, uint64_t seed, uint64_t stream) {
  Tensor t = Tensor::Empty(shape, DType::kF64);
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<double>()[i] = 0.25 * static_cast<double>(1 + RandomIndex(8, seed, stream, i));
  }
  Tensor out = Tensor::Empty(shape, dtype);
  out.CopyFrom(t);
  return out;
}

class CudaRouterTest : public testing::CudaMoeOpTest {};

TEST_F(CudaRouterTest, RouterScoresAndBackwardMatchCpu) {
  uint64_t seed = 1;
  for (DType dtype : kRouterFloats) {
    for (ops::ScoreFunction fn : kFns) {
      for (const RouteShape& s : RouteShapes()) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(dtype), " ", FnName(fn), " ", ShapeName(s));
        const Tensor logits = RandomHost({s.n, s.e}, dtype, seed, 1, 3.0);
        Tensor scores = Poisoned({s.n, s.e}, dtype);
        ops::RouterScores(ctx_, fn, Dev(logits), scores);
        Tensor ref = Tensor::Empty({s.n, s.e}, ReferenceInput(logits).dtype());
        ops::RouterScores(cpu_, fn, ReferenceInput(logits), ref);
        ExpectParity(Host(scores), ref, ParityTolerance(dtype), "RouterScores " + what);

        const Tensor d_scores = RandomHost({s.n, s.e}, dtype, seed, 2);
        Tensor d_logits = Poisoned({s.n, s.e}, dtype);
        const Tensor host_scores = Host(scores);
        ops::RouterScoresBackward(ctx_, fn, scores, Dev(d_scores), d_logits);
        Tensor d_ref = Tensor::Empty({s.n, s.e}, ReferenceInput(logits).dtype());
        ops::RouterScoresBackward(cpu_, fn, ReferenceInput(host_scores), ReferenceInput(d_scores),
                                  d_ref);
        ExpectParity(Host(d_logits), d_ref, ParityTolerance(dtype), "RouterScoresBackward " + what);
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, TopKRoutingSelectsLikeCpuWithBiasAndTies) {
  uint64_t seed = 100;
  for (DType dtype : kRouterFloats) {
    for (ops::ScoreFunction fn : kFns) {
      for (const RouteShape& s : RouteShapes()) {
        for (int variant = 0; variant < 4; ++variant) {  // bit 0: bias; bit 1: tied values
          for (bool normalize : {false, true}) {
            ++seed;
            const bool tied = variant & 2;
            const std::string what =
                absl::StrCat(DTypeName(dtype), " ", FnName(fn), " ", ShapeName(s), " variant ",
                             variant, " normalize ", normalize);
            const Tensor scores =
                tied ? TiedHost({s.n, s.e}, dtype, seed, 1) : HostScores(cpu_, s, dtype, fn, seed);
            Tensor bias;
            if (variant & 1) {
              bias =
                  tied ? TiedHost({s.e}, dtype, seed, 2) : RandomHost({s.e}, dtype, seed, 2, 0.1);
            }
            Tensor ids = PoisonedIndex({s.n, s.k}, DType::kI32);
            Tensor weights = Poisoned({s.n, s.k}, dtype);
            ops::TopKRouting(ctx_, Dev(scores), Dev(bias), s.k, normalize, ids, weights);
            // The same dtype on the CPU: the keys round alike, so the
            // selections must agree exactly.
            Tensor ids_ref = Tensor::Empty({s.n, s.k}, DType::kI32);
            Tensor weights_ref = Tensor::Empty({s.n, s.k}, dtype);
            ops::TopKRouting(cpu_, scores, bias, s.k, normalize, ids_ref, weights_ref);
            const Tensor ids_got = Host(ids);
            ExpectIntsEqual(ids_got, ids_ref, "TopKRouting ids " + what);
            ExpectParity(Host(weights), weights_ref, ParityTolerance(dtype),
                         "TopKRouting weights " + what);

            // Backward at the CPU's selection: d_scores accumulates. The
            // reference is the same dtype too: with K = 1 and normalize,
            // (dw − dw·s/s)/s cancels, and an f32 residue divided by a tiny
            // score is the formula's own rounding, not the GPU's.
            const Tensor d_weights = RandomHost({s.n, s.k}, dtype, seed, 3);
            const Tensor d_scores0 = RandomHost({s.n, s.e}, dtype, seed, 4);
            Tensor d_scores = Dev(d_scores0);
            ops::TopKRoutingBackward(ctx_, Dev(scores), Dev(ids_ref), normalize, Dev(d_weights),
                                     d_scores);
            Tensor d_ref = d_scores0.Clone();
            ops::TopKRoutingBackward(cpu_, scores, ids_ref, normalize, d_weights, d_ref);
            ExpectParity(Host(d_scores), d_ref, ParityTolerance(dtype),
                         "TopKRoutingBackward " + what);
          }
        }
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, CapacityDropKeepsTheCpusAssignments) {
  uint64_t seed = 1000;
  for (DType dtype : kRouterFloats) {
    for (const RouteShape& s : RouteShapes()) {
      for (IdMode mode : {IdMode::kDistinctRows, IdMode::kSkipLast, IdMode::kAllToOne}) {
        for (bool tied : {false, true}) {
          const int64_t m = s.n * s.k;
          const int64_t even = (m + s.e - 1) / s.e;  // the balanced load
          for (int64_t capacity : {int64_t{0}, int64_t{-1}, int64_t{1}, even, even + 3, m}) {
            ++seed;
            const std::string what =
                absl::StrCat(DTypeName(dtype), " ", ShapeName(s), " mode ", static_cast<int>(mode),
                             " tied ", tied, " capacity ", capacity);
            const Tensor ids = RandomExpertIds(s, mode, seed);
            const Tensor priority = tied ? TiedHost({s.n, s.k}, dtype, seed, 5)
                                         : RandomHost({s.n, s.k}, dtype, seed, 5);
            Tensor kept = PoisonedIndex({s.n, s.k}, DType::kI32);
            ops::CapacityDrop(ctx_, Dev(ids), Dev(priority), static_cast<int>(s.e), capacity, kept);
            Tensor kept_ref = Tensor::Empty({s.n, s.k}, DType::kI32);
            ops::CapacityDrop(cpu_, ids, priority, static_cast<int>(s.e), capacity, kept_ref);
            ExpectIntsEqual(Host(kept), kept_ref, "CapacityDrop " + what);
          }
        }
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, LoadBalancingLossAndCountsMatchCpu) {
  uint64_t seed = 2000;
  for (DType dtype : kRouterFloats) {
    for (const RouteShape& s : RouteShapes()) {
      for (IdMode mode : {IdMode::kDistinctRows, IdMode::kSkipLast, IdMode::kAllToOne}) {
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", ShapeName(s), " mode ", static_cast<int>(mode));
        const Tensor scores = HostScores(cpu_, s, dtype, ops::ScoreFunction::kSoftmax, seed);
        const Tensor ids = RandomExpertIds(s, mode, seed);
        const DType ref_dtype = ReferenceInput(scores).dtype();

        Tensor loss = Poisoned({1}, dtype);
        ops::LoadBalancingLoss(ctx_, Dev(scores), Dev(ids), 0.01, loss);
        Tensor loss_ref = Tensor::Empty({1}, ref_dtype);
        ops::LoadBalancingLoss(cpu_, ReferenceInput(scores), ids, 0.01, loss_ref);
        ExpectParity(Host(loss), loss_ref, ParityTolerance(dtype), "LoadBalancingLoss " + what);

        const Tensor d0 = RandomHost({s.n, s.e}, dtype, seed, 6);
        Tensor d = Dev(d0);
        ops::LoadBalancingLossBackward(ctx_, Dev(ids), 0.01, 3.0, d);
        Tensor d_ref = ReferenceInput(d0).Clone();
        ops::LoadBalancingLossBackward(cpu_, ids, 0.01, 3.0, d_ref);
        ExpectParity(Host(d), d_ref, ParityTolerance(dtype), "LoadBalancingLossBackward " + what);

        Tensor counts = Poisoned({s.e}, DType::kF64);
        ops::AssignmentCounts(ctx_, Dev(ids), counts);
        Tensor counts_ref = Tensor::Empty({s.e}, DType::kF64);
        ops::AssignmentCounts(cpu_, ids, counts_ref);
        EXPECT_TRUE(testing::BitwiseEqual(Host(counts), counts_ref)) << "AssignmentCounts " << what;

        // The sharded form: this rank's rows of a larger micro-batch.
        const int64_t total = s.n + 5;
        Tensor fractions = RandomHost({s.e}, DType::kF64, seed, 8, 0.1, 0.5);
        Tensor share = Poisoned({1}, dtype);
        ops::LoadBalancingLossShare(ctx_, Dev(scores), Dev(fractions), total, 0.01, share);
        Tensor share_ref = Tensor::Empty({1}, ref_dtype);
        ops::LoadBalancingLossShare(cpu_, ReferenceInput(scores), fractions, total, 0.01,
                                    share_ref);
        ExpectParity(Host(share), share_ref, ParityTolerance(dtype),
                     "LoadBalancingLossShare " + what);
        Tensor ds = Dev(d0);
        ops::LoadBalancingLossShareBackward(ctx_, Dev(fractions), total, 0.01, 0.5, ds);
        Tensor ds_ref = ReferenceInput(d0).Clone();
        ops::LoadBalancingLossShareBackward(cpu_, fractions, total, 0.01, 0.5, ds_ref);
        ExpectParity(Host(ds), ds_ref, ParityTolerance(dtype),
                     "LoadBalancingLossShareBackward " + what);
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, ZLossMatchesCpu) {
  uint64_t seed = 3000;
  for (DType dtype : kRouterFloats) {
    for (const RouteShape& s : RouteShapes()) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " ", ShapeName(s));
      const Tensor logits = RandomHost({s.n, s.e}, dtype, seed, 1, 4.0, 1.0);
      const DType ref_dtype = ReferenceInput(logits).dtype();
      Tensor loss = Poisoned({1}, dtype);
      ops::ZLoss(ctx_, Dev(logits), 0.001, loss);
      Tensor loss_ref = Tensor::Empty({1}, ref_dtype);
      ops::ZLoss(cpu_, ReferenceInput(logits), 0.001, loss_ref);
      ExpectParity(Host(loss), loss_ref, ParityTolerance(dtype), "ZLoss " + what);

      const Tensor d0 = RandomHost({s.n, s.e}, dtype, seed, 2);
      Tensor d = Dev(d0);
      ops::ZLossBackward(ctx_, Dev(logits), 0.001, 2.0, d);
      Tensor d_ref = ReferenceInput(d0).Clone();
      ops::ZLossBackward(cpu_, ReferenceInput(logits), 0.001, 2.0, d_ref);
      ExpectParity(Host(d), d_ref, ParityTolerance(dtype), "ZLossBackward " + what);

      const int64_t total = 2 * s.n + 1;
      Tensor share = Poisoned({1}, dtype);
      ops::ZLossShare(ctx_, Dev(logits), total, 0.001, share);
      Tensor share_ref = Tensor::Empty({1}, ref_dtype);
      ops::ZLossShare(cpu_, ReferenceInput(logits), total, 0.001, share_ref);
      ExpectParity(Host(share), share_ref, ParityTolerance(dtype), "ZLossShare " + what);
      Tensor ds = Dev(d0);
      ops::ZLossShareBackward(ctx_, Dev(logits), total, 0.001, 2.0, ds);
      Tensor ds_ref = ReferenceInput(d0).Clone();
      ops::ZLossShareBackward(cpu_, ReferenceInput(logits), total, 0.001, 2.0, ds_ref);
      ExpectParity(Host(ds), ds_ref, ParityTolerance(dtype), "ZLossShareBackward " + what);
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, LossesAreTheSameBitsEveryRun) {
  const RouteShape s{4099, 64, 8};
  for (DType dtype : kRouterFloats) {
    const Tensor scores = Dev(HostScores(cpu_, s, dtype, ops::ScoreFunction::kSoftmax, 77));
    const Tensor ids = Dev(RandomExpertIds(s, IdMode::kDistinctRows, 77));
    Tensor first = Poisoned({1}, dtype), second = Poisoned({1}, dtype);
    ops::LoadBalancingLoss(ctx_, scores, ids, 0.01, first);
    ops::LoadBalancingLoss(ctx_, scores, ids, 0.01, second);
    EXPECT_TRUE(testing::BitwiseEqual(Host(first), Host(second))) << DTypeName(dtype);
    ops::ZLoss(ctx_, scores, 0.01, first);
    ops::ZLoss(ctx_, scores, 0.01, second);
    EXPECT_TRUE(testing::BitwiseEqual(Host(first), Host(second))) << DTypeName(dtype);
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, SelectedScoresMatchesCpuExactly) {
  uint64_t seed = 4000;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (const RouteShape& s : RouteShapes()) {
      ++seed;
      const Tensor scores = RandomHost({s.n, s.e}, dtype, seed, 1);
      const Tensor ids = RandomExpertIds(s, IdMode::kDistinctRows, seed);
      Tensor out = Poisoned({s.n, s.k}, dtype);
      ops::SelectedScores(ctx_, Dev(scores), Dev(ids), out);
      Tensor ref = Tensor::Empty({s.n, s.k}, dtype);
      ops::SelectedScores(cpu_, scores, ids, ref);
      EXPECT_TRUE(testing::BitwiseEqual(Host(out), ref)) << DTypeName(dtype) << " " << ShapeName(s);
    }
  }
  ExpectOk();
}

// At the ids TopKRouting picked the weights are TopKRouting's bits (a
// router with its selection forced reproduces an unforced step); at other
// ids they equal the CPU's.
TEST_F(CudaRouterTest, TopKWeightsAtMatchesCpuAndTheTopKWeightsExactly) {
  uint64_t seed = 4500;
  for (DType dtype : kRouterFloats) {
    for (const RouteShape& s : RouteShapes()) {
      for (bool normalize : {false, true}) {
        ++seed;
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", ShapeName(s), " normalize ", normalize);
        const Tensor scores = HostScores(cpu_, s, dtype, ops::ScoreFunction::kSoftmax, seed);
        Tensor top_ids = PoisonedIndex({s.n, s.k}, DType::kI32);
        Tensor top_w = Poisoned({s.n, s.k}, dtype);
        ops::TopKRouting(ctx_, Dev(scores), Tensor(), s.k, normalize, top_ids, top_w);
        Tensor at = Poisoned({s.n, s.k}, dtype);
        ops::TopKWeightsAt(ctx_, Dev(scores), top_ids, normalize, at);
        EXPECT_TRUE(testing::BitwiseEqual(Host(at), Host(top_w))) << "top-k ids " << what;

        const Tensor ids = RandomExpertIds(s, IdMode::kDistinctRows, seed);
        Tensor out = Poisoned({s.n, s.k}, dtype);
        ops::TopKWeightsAt(ctx_, Dev(scores), Dev(ids), normalize, out);
        Tensor ref = Tensor::Empty({s.n, s.k}, dtype);
        ops::TopKWeightsAt(cpu_, scores, ids, normalize, ref);
        EXPECT_TRUE(testing::BitwiseEqual(Host(out), ref)) << "random ids " << what;
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, AccumulateExpertLoadsMatchesCpu) {
  uint64_t seed = 5000;
  for (int64_t e : {1, 8, 64, 300}) {
    ++seed;
    std::vector<int64_t> c(e), st(e + 1);
    int64_t kept = 0;
    for (int64_t i = 0; i < e; ++i) {
      c[i] = i == 0 ? 0 : RandomIndex(50, seed, 1, i);  // expert 0: no token
      kept += c[i];
    }
    for (int64_t i = 0; i <= e; ++i) st[i] = RandomIndex(1000, seed, 2, i);
    const Tensor counts = IntHost({e}, DType::kI64, c);
    const Tensor step0 = IntHost({e + 1}, DType::kI64, st);
    Tensor step = Dev(step0);
    ops::AccumulateExpertLoads(ctx_, Dev(counts), kept + 17, step);
    Tensor ref = step0.Clone();
    ops::AccumulateExpertLoads(cpu_, counts, kept + 17, ref);
    ExpectIntsEqual(Host(step), ref, absl::StrCat("AccumulateExpertLoads E ", e));
  }
  ExpectOk();
}

TEST_F(CudaRouterTest, ExpertBiasUpdateMatchesCpuAndSkips) {
  uint64_t seed = 6000;
  for (DType dtype : kRouterFloats) {
    for (int64_t e : {1, 4, 64, 257}) {
      for (int skip_mode = 0; skip_mode < 3; ++skip_mode) {  // undefined, 0, 1
        ++seed;
        std::vector<int64_t> l(e);
        for (int64_t i = 0; i < e; ++i) l[i] = i % 4 == 0 ? 10 : RandomIndex(21, seed, 1, i);
        const Tensor loads = IntHost({e}, DType::kI64, l);
        const Tensor bias0 = RandomHost({e}, dtype, seed, 2, 0.1);
        const Tensor skip =
            skip_mode == 0 ? Tensor() : IntHost({1}, DType::kI32, {skip_mode == 2 ? 1 : 0});
        Tensor bias = Dev(bias0);
        ops::ExpertBiasUpdate(ctx_, Dev(loads), 0.001, Dev(skip), bias);
        Tensor ref = bias0.Clone();
        ops::ExpertBiasUpdate(cpu_, loads, 0.001, skip, ref);
        EXPECT_TRUE(testing::BitwiseEqual(Host(bias), ref))
            << DTypeName(dtype) << " E " << e << " skip mode " << skip_mode;
      }
    }
  }
  ExpectOk();
}

}  // namespace
}  // namespace scalemoe
