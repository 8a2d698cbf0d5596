// The MoE ops of issue 12 (core/cpu/moe_index.cc, moe_combine.cc,
// moe_routing_stats.cc) against direct f64 references: index building from
// counts (experts without tokens, one token, capacity drops, k = 1, EP/ETP
// blocks with empty ranks and idle experts, padded sources), the per-token
// combine and its weight gradient (f32/f64/bf16), the capacity priority, the
// top-k weights at given ids,
// the step statistics and the expert-bias update.
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "core/ops.h"
#include "core/philox.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

const ExecContext kCtx = ExecContext::Cpu();

Tensor Ints(const Shape& shape, const std::vector<double>& v, DType dtype = DType::kI32) {
  return Tensor::FromVector(shape, v, dtype);
}

std::vector<int64_t> AsInts(const Tensor& t) {
  std::vector<int64_t> out;
  for (double v : t.ToVector()) out.push_back(static_cast<int64_t>(v));
  return out;
}

// ---------------------------------------------------------------- routing stats

TEST(MoeOpsTest, SelectedScoresPickTheRawScores) {
  const Tensor scores = testing::RandomTensor({3, 4}, 1);
  for (int k : {1, 2}) {
    const Tensor ids = k == 1 ? Ints({3, 1}, {3, 0, 2}) : Ints({3, 2}, {3, 1, 0, 2, 2, 1});
    Tensor out = Tensor::Empty({3, k}, DType::kF64);
    ops::SelectedScores(kCtx, scores, ids, out);
    for (int t = 0; t < 3; ++t) {
      for (int j = 0; j < k; ++j) {
        EXPECT_EQ(out.At(t * k + j), scores.At(t * 4 + static_cast<int>(ids.At(t * k + j))));
      }
    }
  }
}

TEST(MoeOpsTest, SelectedScoresEqualUnnormalizedTopKWeights) {
  // The priority the router used to get from a second, unnormalised top-k.
  const Tensor scores = testing::RandomTensor({7, 5}, 2);
  Tensor ids = Tensor::Empty({7, 3}, DType::kI32), w = Tensor::Empty({7, 3}, DType::kF64);
  ops::TopKRouting(kCtx, scores, Tensor(), 3, /*normalize=*/false, ids, w);
  Tensor out = Tensor::Empty({7, 3}, DType::kF64);
  ops::SelectedScores(kCtx, scores, ids, out);
  EXPECT_EQ(out.ToVector(), w.ToVector());
}

TEST(MoeOpsTest, TopKWeightsAtTheTopKIdsAreTheTopKWeightsBitForBit) {
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (bool normalize : {false, true}) {
      const Tensor scores = testing::RandomTensor({9, 6}, 3, 1.0, dtype, 3.0);
      Tensor ids = Tensor::Empty({9, 3}, DType::kI32), w = Tensor::Empty({9, 3}, dtype);
      ops::TopKRouting(kCtx, scores, Tensor(), 3, normalize, ids, w);
      Tensor at = Tensor::Empty({9, 3}, dtype);
      ops::TopKWeightsAt(kCtx, scores, ids, normalize, at);
      // f32 and f64 convert to double exactly: equal vectors are equal bits.
      EXPECT_EQ(at.ToVector(), w.ToVector()) << DTypeName(dtype) << " normalize " << normalize;
    }
  }
}

TEST(MoeOpsTest, TopKWeightsAtOtherIdsGatherAndRenormalise) {
  const Tensor scores = testing::RandomTensor({3, 4}, 4, 1.0, DType::kF64, 3.0);
  // Not the top-k, and in no particular order.
  const Tensor ids = Ints({3, 2}, {3, 1, 0, 2, 2, 1});
  for (bool normalize : {false, true}) {
    Tensor w = Tensor::Empty({3, 2}, DType::kF64);
    ops::TopKWeightsAt(kCtx, scores, ids, normalize, w);
    for (int t = 0; t < 3; ++t) {
      const double a = scores.At(t * 4 + static_cast<int>(ids.At(t * 2)));
      const double b = scores.At(t * 4 + static_cast<int>(ids.At(t * 2 + 1)));
      const double sum = normalize ? a + b : 1.0;
      EXPECT_DOUBLE_EQ(w.At(t * 2), a / sum);
      EXPECT_DOUBLE_EQ(w.At(t * 2 + 1), b / sum);
    }
  }
}

TEST(MoeOpsTest, AccumulateExpertLoadsAddsLoadsAndDrops) {
  Tensor step = Tensor::Zeros({5}, DType::kI64);
  // 10 assignments, 7 kept, expert 2 idle.
  ops::AccumulateExpertLoads(kCtx, Ints({4}, {3, 4, 0, 0}, DType::kI64), 10, step);
  EXPECT_EQ(AsInts(step), (std::vector<int64_t>{3, 4, 0, 0, 3}));
  // One token, dropless.
  ops::AccumulateExpertLoads(kCtx, Ints({4}, {0, 0, 1, 0}, DType::kI64), 1, step);
  EXPECT_EQ(AsInts(step), (std::vector<int64_t>{3, 4, 1, 0, 3}));
}

TEST(MoeOpsTest, ExpertBiasUpdateFollowsTheSignOfMeanMinusLoad) {
  for (DType dtype : {DType::kF64, DType::kF32}) {
    Tensor bias = Tensor::FromVector({4}, {0.5, 0, -1, 2}, dtype);
    ops::ExpertBiasUpdate(kCtx, Ints({4}, {8, 2, 5, 5}, DType::kI64), 0.25, Tensor(), bias);
    EXPECT_EQ(bias.ToVector(), (std::vector<double>{0.25, 0.25, -1, 2}));  // mean 5 exactly
    ops::ExpertBiasUpdate(kCtx, Ints({4}, {0, 0, 0, 0}, DType::kI64), 0.25, Tensor(), bias);
    EXPECT_EQ(bias.ToVector(), (std::vector<double>{0.25, 0.25, -1, 2}));  // balanced: no step
    // A skipped (non-finite) step moves nothing; an applied one moves.
    ops::ExpertBiasUpdate(kCtx, Ints({4}, {1, 0, 0, 0}, DType::kI64), 1,
                          Ints({1}, {1}, DType::kI32), bias);
    EXPECT_EQ(bias.ToVector(), (std::vector<double>{0.25, 0.25, -1, 2}));
    ops::ExpertBiasUpdate(kCtx, Ints({4}, {1, 0, 0, 0}, DType::kI64), 1,
                          Ints({1}, {0}, DType::kI32), bias);
    EXPECT_EQ(bias.ToVector(), (std::vector<double>{-0.75, 1.25, 0, 3}));
  }
}

// ---------------------------------------------------------------- index building

// SortByExpert then InvertRowIndex: every kept slot's row holds that slot,
// dropped slots get -1, rows are grouped by expert in slot order.
void ExpectPermutationInverse(const Tensor& ids, const Tensor& kept, int num_experts) {
  const int64_t m = ids.numel();
  Tensor perm = Tensor::Empty({m}, DType::kI32);
  Tensor counts = Tensor::Empty({num_experts}, DType::kI64);
  Tensor slot_row = Tensor::Empty(ids.shape(), DType::kI32);
  ops::SortByExpert(kCtx, ids, kept, num_experts, perm, counts);
  ops::InvertRowIndex(kCtx, perm, slot_row);
  // Reference: rows in expert order, slots ascending within an expert.
  std::vector<int64_t> want_row(m, -1), want_counts(num_experts, 0);
  int64_t row = 0;
  for (int e = 0; e < num_experts; ++e) {
    for (int64_t s = 0; s < m; ++s) {
      if (kept.At(s) != 0 && ids.At(s) == e) {
        want_row[s] = row++;
        ++want_counts[e];
      }
    }
  }
  EXPECT_EQ(AsInts(slot_row), want_row);
  EXPECT_EQ(AsInts(counts), want_counts);
  for (int64_t i = 0; i < m; ++i) {
    if (perm.At(i) >= 0) {
      EXPECT_EQ(slot_row.At(static_cast<int64_t>(perm.At(i))), i);
    }
  }
}

TEST(MoeOpsTest, InvertRowIndexWithDropsIdleExpertsAndK1) {
  // 4 tokens, k = 2, expert 3 idle, two slots dropped.
  ExpectPermutationInverse(Ints({4, 2}, {0, 1, 1, 0, 2, 0, 1, 2}),
                           Ints({4, 2}, {1, 1, 0, 1, 1, 1, 1, 0}), 4);
  // k = 1, all on one expert.
  ExpectPermutationInverse(Ints({3, 1}, {2, 2, 2}), Ints({3, 1}, {1, 1, 1}), 3);
  // One token, everything dropped.
  ExpectPermutationInverse(Ints({1, 2}, {1, 0}), Ints({1, 2}, {0, 0}), 2);
  // Random routing with random drops.
  std::vector<double> ids, kept;
  for (int i = 0; i < 60; ++i) {
    ids.push_back(std::floor(PhiloxUniform(5, 1, i) * 6));
    kept.push_back(PhiloxUniform(5, 2, i) < 0.8 ? 1 : 0);
  }
  ExpectPermutationInverse(Ints({30, 2}, ids), Ints({30, 2}, kept), 6);
}

TEST(MoeOpsTest, TiledRowIndexGroupsRowsByCopy) {
  for (int copies : {1, 3}) {
    for (int64_t n : {1, 4}) {
      Tensor gather = Tensor::Empty({copies * n}, DType::kI32);
      Tensor slot_row = Tensor::Empty({n, copies}, DType::kI32);
      ops::TiledRowIndex(kCtx, copies, gather, slot_row);
      for (int c = 0; c < copies; ++c) {
        for (int64_t t = 0; t < n; ++t) {
          EXPECT_EQ(gather.At(c * n + t), t);
          EXPECT_EQ(slot_row.At(t * copies + c), c * n + t);
        }
      }
    }
  }
}

// Reference of SourceToExpertOrder by direct enumeration.
void ExpectSourceToExpertOrder(int64_t sources, int64_t experts, const std::vector<double>& c,
                               int64_t stride) {
  SCOPED_TRACE(::testing::Message() << sources << "x" << experts << " stride " << stride);
  const Tensor counts = Ints({sources, experts}, c, DType::kI64);
  const int64_t total = static_cast<int64_t>(std::accumulate(c.begin(), c.end(), 0.0));
  // Source-order position (padded and packed) of (s, l, r).
  auto position = [&](int64_t s, int64_t l, int64_t r, bool padded) {
    int64_t at = 0;
    if (padded) {
      at = s * stride;
    } else {
      for (int64_t p = 0; p < s; ++p) {
        for (int64_t q = 0; q < experts; ++q) at += static_cast<int64_t>(c[p * experts + q]);
      }
    }
    for (int64_t q = 0; q < l; ++q) at += static_cast<int64_t>(c[s * experts + q]);
    return at + r;
  };
  std::vector<int64_t> want_expert, want_source(total, -1);
  for (int64_t l = 0; l < experts; ++l) {
    for (int64_t s = 0; s < sources; ++s) {
      for (int64_t r = 0; r < static_cast<int64_t>(c[s * experts + l]); ++r) {
        want_source[position(s, l, r, false)] = static_cast<int64_t>(want_expert.size());
        want_expert.push_back(position(s, l, r, stride > 0));
      }
    }
  }
  Tensor to_expert = Tensor::Empty({total}, DType::kI32);
  Tensor to_source = Tensor::Empty({total}, DType::kI32);
  ops::SourceToExpertOrder(kCtx, counts, stride, to_expert, to_source);
  EXPECT_EQ(AsInts(to_expert), want_expert);
  EXPECT_EQ(AsInts(to_source), want_source);
  if (stride == 0) {  // packed: the two orders are inverse permutations
    for (int64_t j = 0; j < total; ++j) {
      EXPECT_EQ(to_expert.At(static_cast<int64_t>(to_source.At(j))), j);
    }
  }
  Tensor totals = Tensor::Empty({experts}, DType::kI64);
  ops::SumSourceCounts(kCtx, counts, totals);
  for (int64_t l = 0; l < experts; ++l) {
    double sum = 0;
    for (int64_t s = 0; s < sources; ++s) sum += c[s * experts + l];
    EXPECT_EQ(totals.At(l), sum);
  }
}

TEST(MoeOpsTest, CountOffsetsArePrefixSumsFromZero) {
  const Tensor counts = Ints({6}, {3, 0, 5, 0, 0, 1}, DType::kI64);
  Tensor offsets = Tensor::Empty({7}, DType::kI64);
  offsets.Fill(-7);
  ops::CountOffsets(kCtx, counts, offsets);
  EXPECT_EQ(AsInts(offsets), (std::vector<int64_t>{0, 3, 3, 8, 8, 8, 9}));
  Tensor one = Tensor::Empty({1}, DType::kI64);  // no experts: just the 0
  ops::CountOffsets(kCtx, Tensor::Empty({0}, DType::kI64), one);
  EXPECT_EQ(one.At(0), 0);
  EXPECT_DEATH(ops::CountOffsets(kCtx, counts, Tensor::Empty({6}, DType::kI64)), "E \\+ 1");
}

TEST(MoeOpsTest, SourceToExpertOrderPackedAndPadded) {
  // EP 3, 2 local experts: rank 1 sends nothing, local expert 1 gets rows
  // from rank 2 only.
  ExpectSourceToExpertOrder(3, 2, {2, 0, 0, 0, 1, 3}, 0);
  // ETP 2 padded to the largest rank's 4 rows; rank 0 holds none.
  ExpectSourceToExpertOrder(2, 3, {0, 0, 0, 1, 0, 3}, 4);
  ExpectSourceToExpertOrder(2, 3, {0, 0, 0, 1, 0, 3}, 0);
  // One source, one expert, one row; everything empty.
  ExpectSourceToExpertOrder(1, 1, {1}, 0);
  ExpectSourceToExpertOrder(1, 1, {1}, 1);
  ExpectSourceToExpertOrder(4, 2, {0, 0, 0, 0, 0, 0, 0, 0}, 0);
  ExpectSourceToExpertOrder(2, 2, {0, 0, 0, 0}, 0);
  // Random counts with zeros.
  std::vector<double> c;
  for (int i = 0; i < 12; ++i) c.push_back(std::floor(PhiloxUniform(9, 1, i) * 4));
  ExpectSourceToExpertOrder(4, 3, c, 0);
  ExpectSourceToExpertOrder(4, 3, c, 12);
}

// ---------------------------------------------------------------- combine

// out[t] += Σ_j w[t, j] · rows[slot_row[t, j]] and its weight gradient,
// against f64 loops; with dropped slots (-1), k = 1 and no weights.
TEST(MoeOpsTest, CombineSlotsAndSlotRowDotMatchReference) {
  constexpr int64_t kN = 5, kC = 3, kM = 9;
  const Tensor rows = testing::RandomTensor({kM, kC}, 31);
  const Tensor x = testing::RandomTensor({kN, kC}, 32);
  for (int64_t k : {1, 2}) {
    std::vector<double> sr;
    for (int64_t i = 0; i < kN * k; ++i) sr.push_back(i % 4 == 3 ? -1 : (i * 7) % kM);
    const Tensor slot_row = Ints({kN, k}, sr);
    const Tensor w = testing::RandomTensor({kN, k}, 33);
    for (bool weighted : {true, false}) {
      Tensor out = testing::RandomTensor({kN, kC}, 34);
      const Tensor before = out.Clone();
      ops::CombineSlots(kCtx, rows, slot_row, weighted ? w : Tensor(), out);
      for (int64_t t = 0; t < kN; ++t) {
        for (int64_t i = 0; i < kC; ++i) {
          double want = before.At(t * kC + i);
          for (int64_t j = 0; j < k; ++j) {
            const int64_t r = static_cast<int64_t>(sr[t * k + j]);
            if (r >= 0) want += (weighted ? w.At(t * k + j) : 1.0) * rows.At(r * kC + i);
          }
          EXPECT_NEAR(out.At(t * kC + i), want, 1e-15 * (1 + std::abs(want)));
        }
      }
    }
    Tensor dot = Tensor::Empty({kN, k}, DType::kF64);
    ops::SlotRowDot(kCtx, x, slot_row, rows, dot);
    for (int64_t s = 0; s < kN * k; ++s) {
      const int64_t r = static_cast<int64_t>(sr[s]);
      double want = 0;
      for (int64_t i = 0; r >= 0 && i < kC; ++i) want += x.At(s / k * kC + i) * rows.At(r * kC + i);
      EXPECT_NEAR(dot.At(s), want, 1e-15 * (1 + std::abs(want)));
    }
  }
}

// The per-token combine equals the scatter-add over the permuted rows it
// replaces (ops::ScatterAddRows / GatheredRowDot with SortByExpert's order).
TEST(MoeOpsTest, CombineSlotsEqualsScatterOfPermutedRows) {
  constexpr int64_t kN = 6, kK = 2, kC = 4;
  const Tensor ids = Ints({kN, kK}, {0, 2, 2, 1, 0, 1, 3, 0, 2, 0, 1, 2});
  const Tensor kept = Ints({kN, kK}, {1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1});
  Tensor perm = Tensor::Empty({kN * kK}, DType::kI32);
  Tensor counts = Tensor::Empty({4}, DType::kI64);
  Tensor slot_row = Tensor::Empty({kN, kK}, DType::kI32);
  ops::SortByExpert(kCtx, ids, kept, 4, perm, counts);
  ops::InvertRowIndex(kCtx, perm, slot_row);
  const Tensor y = testing::RandomTensor({kN * kK, kC}, 41);
  const Tensor w = testing::RandomTensor({kN, kK}, 42);
  const Tensor d_out = testing::RandomTensor({kN, kC}, 43);
  Tensor row_w = Tensor::Empty({kN * kK, 1}, DType::kF64);
  ops::GatherRows(kCtx, w.View({kN * kK, 1}), perm, 1, row_w);
  Tensor scattered = Tensor::Zeros({kN, kC}, DType::kF64);
  ops::ScatterAddRows(kCtx, y, perm, kK, row_w.View({kN * kK}), scattered);
  Tensor combined = Tensor::Zeros({kN, kC}, DType::kF64);
  ops::CombineSlots(kCtx, y, slot_row, w, combined);
  for (int64_t i = 0; i < combined.numel(); ++i) {
    EXPECT_NEAR(combined.At(i), scattered.At(i), 1e-15 * (1 + std::abs(scattered.At(i))));
  }
  Tensor row_dot = Tensor::Empty({kN * kK, 1}, DType::kF64);
  ops::GatheredRowDot(kCtx, d_out, perm, kK, y, row_dot);
  Tensor d_w_scatter = Tensor::Zeros({kN * kK, 1}, DType::kF64);
  ops::ScatterAddRows(kCtx, row_dot, perm, 1, Tensor(), d_w_scatter);
  Tensor d_w = Tensor::Empty({kN, kK}, DType::kF64);
  ops::SlotRowDot(kCtx, d_out, slot_row, y, d_w);
  EXPECT_EQ(d_w.ToVector(), d_w_scatter.ToVector());
}

// out[i] = w[perm[i]] · x[perm[i] / K], zero rows past the kept slots: the
// combine's backward into the permuted rows, in f64, f32, and bf16 rows
// with f32 weights (the f32 product rounded once).
TEST(MoeOpsTest, GatherScaledRowsScalesEachGatheredRowByItsSlotWeight) {
  constexpr int64_t kN = 3, kK = 2, kC = 5;
  const Tensor perm = Ints({kN * kK}, {4, 0, 3, 5, 1, -1});
  for (auto [x_dtype, w_dtype] :
       {std::pair{DType::kF64, DType::kF64}, std::pair{DType::kF32, DType::kF32},
        std::pair{DType::kBF16, DType::kF32}}) {
    const Tensor x = testing::RandomTensor({kN, kC}, 61, 1.0, x_dtype);
    const Tensor w = testing::RandomTensor({kN, kK}, 62, 1.0, w_dtype);
    Tensor out = Tensor::Empty({kN * kK, kC}, x_dtype);
    out.Fill(std::nan(""));
    ops::GatherScaledRows(kCtx, x, perm, kK, w, out);
    for (int64_t i = 0; i < kN * kK; ++i) {
      const int64_t slot = static_cast<int64_t>(perm.At(i));
      for (int64_t j = 0; j < kC; ++j) {
        const double want = slot < 0 ? 0.0 : w.At(slot) * x.At(slot / kK * kC + j);
        // f32 products, and a bf16 rounding of one: within half an ulp (2^-8 of it).
        const double tol = x_dtype == DType::kF64   ? 0.0
                           : x_dtype == DType::kF32 ? 1e-7 * std::abs(want)
                                                    : std::ldexp(std::abs(want), -8);
        EXPECT_NEAR(out.At(i * kC + j), want, tol) << DTypeName(x_dtype) << " row " << i;
      }
    }
  }
}

TEST(MoeOpsTest, CombineSlotsInBf16AndF32) {
  constexpr int64_t kN = 4, kC = 8, kM = 6;
  const Tensor slot_row = Ints({kN, 2}, {0, 5, 2, -1, 4, 1, -1, -1});
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Tensor rows = testing::RandomTensor({kM, kC}, 51, 1.0, dtype);
    const Tensor w = testing::RandomTensor({kN, 2}, 52, 1.0, dtype);
    const Tensor x = testing::RandomTensor({kN, kC}, 53, 1.0, dtype);
    // The f64 reference on the same (rounded) values.
    Tensor rows64 = Tensor::Empty({kM, kC}, DType::kF64), w64 = Tensor::Empty({kN, 2}, DType::kF64);
    Tensor x64 = Tensor::Empty({kN, kC}, DType::kF64);
    rows64.CopyFrom(rows);
    w64.CopyFrom(w);
    x64.CopyFrom(x);
    Tensor out = Tensor::Zeros({kN, kC}, dtype), out64 = Tensor::Zeros({kN, kC}, DType::kF64);
    ops::CombineSlots(kCtx, rows, slot_row, w, out);
    ops::CombineSlots(kCtx, rows64, slot_row, w64, out64);
    Tensor dot = Tensor::Empty({kN, 2}, dtype), dot64 = Tensor::Empty({kN, 2}, DType::kF64);
    ops::SlotRowDot(kCtx, x, slot_row, rows, dot);
    ops::SlotRowDot(kCtx, x64, slot_row, rows64, dot64);
    const double tol = dtype == DType::kBF16 ? 1e-2 : 1e-5;
    for (int64_t i = 0; i < out.numel(); ++i) {
      EXPECT_NEAR(out.At(i), out64.At(i), tol * (1 + std::abs(out64.At(i)))) << i;
    }
    for (int64_t i = 0; i < dot.numel(); ++i) {
      EXPECT_NEAR(dot.At(i), dot64.At(i), tol * (1 + std::abs(dot64.At(i)))) << i;
    }
    EXPECT_EQ(out.At(3 * kC), 0.0);  // a token whose slots were all dropped
    EXPECT_EQ(dot.At(7), 0.0);
  }
}

}  // namespace
}  // namespace scalemoe
