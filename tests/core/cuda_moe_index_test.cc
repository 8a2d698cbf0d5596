// GPU test: the MoE permutation, index and combine ops (SortByExpert,
// GatherRows, GatherScaledRows, ScatterAddRows, GatheredRowDot, InvertRowIndex, TiledRowIndex,
// SourceToExpertOrder, SumSourceCounts, CountOffsets, CombineSlots, SlotRowDot) against
// the CPU reference on fresh Philox data: one token, k = 1 and k = 8 with 64
// experts, an expert with no token, every token on one expert, dropped
// slots (−1 rows), weights present or not, f32 and f64 (bf16 where the op
// takes it, and the combine's f32 weights with bf16 rows). Outputs start as
// NaN (or −1 bytes); index outputs must equal the CPU's exactly, and the
// scatter-add is the same bits every run. CombineSlots off a 16-byte
// boundary (one element at a time) gives the same bits as its 16-byte packs.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_moe_test_util.h"

namespace scalemoe {
namespace {

using testing::ExpectIntsEqual;
using testing::ExpectParity;
using testing::IdMode;
using testing::IntHost;
using testing::Misaligned;
using testing::ParityTolerance;
using testing::RandomExpertIds;
using testing::RandomHost;
using testing::RandomIndex;
using testing::ReferenceInput;
using testing::RouteShape;
using testing::RouteShapes;
using testing::ShapeName;

constexpr IdMode kModes[] = {IdMode::kDistinctRows, IdMode::kSkipLast, IdMode::kAllToOne};
constexpr int64_t kWidths[] = {1, 33, 128};
// CombineSlots also at a width of f32 and f64 packs but not of bf16 ones.
constexpr int64_t kCombineWidths[] = {1, 33, 40, 128};

// kept [N, K] i32: about `drop_percent` of the slots dropped.
Tensor RandomKept(const RouteShape& s, int drop_percent, uint64_t seed) {
  std::vector<int64_t> v(s.n * s.k);
  for (int64_t i = 0; i < s.n * s.k; ++i) v[i] = RandomIndex(100, seed, 11, i) >= drop_percent;
  return IntHost({s.n, s.k}, DType::kI32, v);
}

// The CPU's perm_slot [N·K] for these ids and kept slots.
Tensor CpuPermSlot(const ExecContext& cpu, const RouteShape& s, const Tensor& ids,
                   const Tensor& kept) {
  Tensor perm = Tensor::Empty({s.n * s.k}, DType::kI32);
  Tensor counts = Tensor::Empty({s.e}, DType::kI64);
  ops::SortByExpert(cpu, ids, kept, static_cast<int>(s.e), perm, counts);
  return perm;
}

// The CPU's slot_row [N, K] of a random routing (ids skipping the last
// expert, `drop` % of the slots dropped): the combine's input.
Tensor CpuSlotRow(const ExecContext& cpu, const RouteShape& s, int drop, uint64_t seed) {
  const Tensor perm =
      CpuPermSlot(cpu, s, RandomExpertIds(s, IdMode::kSkipLast, seed), RandomKept(s, drop, seed));
  Tensor slot_row = Tensor::Empty({s.n, s.k}, DType::kI32);
  ops::InvertRowIndex(cpu, perm, slot_row);
  return slot_row;
}

class CudaMoeIndexTest : public testing::CudaMoeOpTest {};

// The shapes of the other ops, and for the counting sort's tiles (1024
// slots; SCALEMOE_SORT_BY_EXPERT=counting, core_cuda_moe_index_counting_test)
// many of them, a partial last one, 1024 experts (its most) and 1500 (which
// it leaves to the radix sort).
TEST_F(CudaMoeIndexTest, SortByExpertIsStableLikeCpu) {
  uint64_t seed = 1;
  std::vector<RouteShape> shapes = RouteShapes();
  for (const RouteShape& s : {RouteShape{9000, 16, 2}, RouteShape{20000, 64, 8},
                              RouteShape{3000, 1024, 2}, RouteShape{70, 1500, 3}}) {
    shapes.push_back(s);
  }
  for (const RouteShape& s : shapes) {
    for (IdMode mode : kModes) {
      for (int drop : {0, 30, 100}) {
        ++seed;
        const std::string what =
            absl::StrCat(ShapeName(s), " mode ", static_cast<int>(mode), " drop ", drop);
        const Tensor ids = RandomExpertIds(s, mode, seed);
        const Tensor kept = RandomKept(s, drop, seed);
        Tensor perm = PoisonedIndex({s.n * s.k}, DType::kI32);
        Tensor counts = PoisonedIndex({s.e}, DType::kI64);
        ops::SortByExpert(ctx_, Dev(ids), Dev(kept), static_cast<int>(s.e), perm, counts);
        Tensor perm_ref = Tensor::Empty({s.n * s.k}, DType::kI32);
        Tensor counts_ref = Tensor::Empty({s.e}, DType::kI64);
        ops::SortByExpert(cpu_, ids, kept, static_cast<int>(s.e), perm_ref, counts_ref);
        ExpectIntsEqual(Host(perm), perm_ref, "perm_slot " + what);
        ExpectIntsEqual(Host(counts), counts_ref, "counts " + what);
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaMoeIndexTest, GatherScatterAndDotMatchCpu) {
  uint64_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const RouteShape& s : RouteShapes()) {
      for (int64_t c : kWidths) {
        for (IdMode mode : {IdMode::kDistinctRows, IdMode::kAllToOne}) {
          ++seed;
          const std::string what = absl::StrCat(DTypeName(dtype), " ", ShapeName(s), " C ", c,
                                                " mode ", static_cast<int>(mode));
          // Permuted rows of the kept slots (−1 past them), divisor K: the
          // layer's dispatch and combine.
          const Tensor ids = RandomExpertIds(s, mode, seed);
          const Tensor perm = CpuPermSlot(cpu_, s, ids, RandomKept(s, 20, seed));
          const int64_t m = s.n * s.k;
          const Tensor x = RandomHost({s.n, c}, dtype, seed, 1);
          Tensor gathered = Poisoned({m, c}, dtype);
          ops::GatherRows(ctx_, Dev(x), Dev(perm), s.k, gathered);
          Tensor gathered_ref = Tensor::Empty({m, c}, dtype);
          ops::GatherRows(cpu_, x, perm, s.k, gathered_ref);
          EXPECT_TRUE(testing::BitwiseEqual(Host(gathered), gathered_ref)) << "GatherRows " << what;

          const Tensor y = RandomHost({m, c}, dtype, seed, 2);
          const Tensor w = RandomHost({m}, dtype, seed, 3);
          const Tensor out0 = RandomHost({s.n, c}, dtype, seed, 4);
          for (bool weighted : {false, true}) {
            Tensor out = Dev(out0);
            ops::ScatterAddRows(ctx_, Dev(y), Dev(perm), s.k, weighted ? Dev(w) : Tensor(), out);
            Tensor out_ref = ReferenceInput(out0).Clone();
            ops::ScatterAddRows(cpu_, ReferenceInput(y), perm, s.k,
                                weighted ? ReferenceInput(w) : Tensor(), out_ref);
            ExpectParity(Host(out), out_ref, ParityTolerance(dtype),
                         absl::StrCat("ScatterAddRows weighted ", weighted, " ", what));
          }
          // Divisor 1 with every row to one destination (a deep run). Up to
          // 4096 rows: the op adds in the element type in index order, like
          // the CPU, and an f32 run of 32768 terms drifts from the f64
          // reference by ~7e-6 of its max on the CPU itself.
          if (m <= 4096) {
            const Tensor same = IntHost({m}, DType::kI32, std::vector<int64_t>(m, 0));
            Tensor out = Dev(out0);
            ops::ScatterAddRows(ctx_, Dev(y), Dev(same), 1, Dev(w), out);
            Tensor out_ref = ReferenceInput(out0).Clone();
            ops::ScatterAddRows(cpu_, ReferenceInput(y), same, 1, ReferenceInput(w), out_ref);
            ExpectParity(Host(out), out_ref, ParityTolerance(dtype),
                         "ScatterAddRows to one row " + what);
          }

          Tensor dots = Poisoned({m}, dtype);
          ops::GatheredRowDot(ctx_, Dev(x), Dev(perm), s.k, Dev(y), dots);
          Tensor dots_ref = Tensor::Empty({m}, ReferenceInput(x).dtype());
          ops::GatheredRowDot(cpu_, ReferenceInput(x), perm, s.k, ReferenceInput(y), dots_ref);
          ExpectParity(Host(dots), dots_ref, ParityTolerance(dtype), "GatheredRowDot " + what);
        }
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaMoeIndexTest, ScatterAddRowsIsTheSameBitsEveryRun) {
  const RouteShape s{2048, 64, 8};
  const int64_t m = s.n * s.k, c = 96;
  const Tensor perm =
      Dev(CpuPermSlot(cpu_, s, RandomExpertIds(s, IdMode::kDistinctRows, 9), RandomKept(s, 10, 9)));
  const Tensor y = Dev(RandomHost({m, c}, DType::kF32, 9, 1));
  const Tensor w = Dev(RandomHost({m}, DType::kF32, 9, 2));
  Tensor first = Dev(Tensor::Zeros({s.n, c}, DType::kF32));
  Tensor second = Dev(Tensor::Zeros({s.n, c}, DType::kF32));
  ops::ScatterAddRows(ctx_, y, perm, s.k, w, first);
  ops::ScatterAddRows(ctx_, y, perm, s.k, w, second);
  EXPECT_TRUE(testing::BitwiseEqual(Host(first), Host(second)));
  ExpectOk();
}

TEST_F(CudaMoeIndexTest, InvertAndTiledRowIndexMatchCpu) {
  uint64_t seed = 200;
  for (const RouteShape& s : RouteShapes()) {
    for (int drop : {0, 40}) {
      ++seed;
      const Tensor perm = CpuPermSlot(cpu_, s, RandomExpertIds(s, IdMode::kSkipLast, seed),
                                      RandomKept(s, drop, seed));
      Tensor slot_row = PoisonedIndex({s.n, s.k}, DType::kI32);
      ops::InvertRowIndex(ctx_, Dev(perm), slot_row);
      Tensor slot_row_ref = Tensor::Empty({s.n, s.k}, DType::kI32);
      ops::InvertRowIndex(cpu_, perm, slot_row_ref);
      ExpectIntsEqual(Host(slot_row), slot_row_ref,
                      absl::StrCat("InvertRowIndex ", ShapeName(s), " drop ", drop));
    }
  }
  for (int64_t n : {1, 7, 1000}) {
    for (int copies : {1, 2, 3}) {
      Tensor gather = PoisonedIndex({copies * n}, DType::kI32);
      Tensor slot_row = PoisonedIndex({n, copies}, DType::kI32);
      ops::TiledRowIndex(ctx_, copies, gather, slot_row);
      Tensor gather_ref = Tensor::Empty({copies * n}, DType::kI32);
      Tensor slot_row_ref = Tensor::Empty({n, copies}, DType::kI32);
      ops::TiledRowIndex(cpu_, copies, gather_ref, slot_row_ref);
      const std::string what = absl::StrCat("TiledRowIndex N ", n, " copies ", copies);
      ExpectIntsEqual(Host(gather), gather_ref, "gather " + what);
      ExpectIntsEqual(Host(slot_row), slot_row_ref, "slot_row " + what);
    }
  }
  ExpectOk();
}

TEST_F(CudaMoeIndexTest, SourceToExpertOrderSumSourceCountsAndCountOffsetsMatchCpu) {
  uint64_t seed = 300;
  for (int64_t sources : {1, 2, 5, 8}) {
    for (int64_t experts : {1, 3, 8, 64}) {
      for (int empty_mode = 0; empty_mode < 3; ++empty_mode) {  // none, some, all but one block
        ++seed;
        std::vector<int64_t> c(sources * experts);
        int64_t widest = 0;
        for (int64_t s = 0; s < sources; ++s) {
          int64_t at = 0;
          for (int64_t l = 0; l < experts; ++l) {
            int64_t v = RandomIndex(20, seed, 1, s * experts + l);
            if (empty_mode == 1 && RandomIndex(3, seed, 2, s * experts + l) == 0) v = 0;
            if (empty_mode == 2) v = s == sources - 1 && l == 0 ? 13 : 0;
            c[s * experts + l] = v;
            at += v;
          }
          widest = std::max(widest, at);
        }
        int64_t total = 0;
        for (int64_t v : c) total += v;
        const Tensor counts = IntHost({sources, experts}, DType::kI64, c);
        for (int64_t stride : {int64_t{0}, widest, widest + 3}) {
          if (stride == 0 && widest == 0) continue;
          const std::string what = absl::StrCat("S ", sources, " L ", experts, " empty mode ",
                                                empty_mode, " stride ", stride);
          Tensor to_expert = PoisonedIndex({total}, DType::kI32);
          Tensor to_source = PoisonedIndex({total}, DType::kI32);
          ops::SourceToExpertOrder(ctx_, Dev(counts), stride, to_expert, to_source);
          Tensor to_expert_ref = Tensor::Empty({total}, DType::kI32);
          Tensor to_source_ref = Tensor::Empty({total}, DType::kI32);
          ops::SourceToExpertOrder(cpu_, counts, stride, to_expert_ref, to_source_ref);
          ExpectIntsEqual(Host(to_expert), to_expert_ref, "to_expert_order " + what);
          ExpectIntsEqual(Host(to_source), to_source_ref, "to_source_order " + what);
        }
        Tensor totals = PoisonedIndex({experts}, DType::kI64);
        ops::SumSourceCounts(ctx_, Dev(counts), totals);
        Tensor totals_ref = Tensor::Empty({experts}, DType::kI64);
        ops::SumSourceCounts(cpu_, counts, totals_ref);
        ExpectIntsEqual(Host(totals), totals_ref,
                        absl::StrCat("SumSourceCounts S ", sources, " L ", experts));
        // The row offsets of source 0's counts (one row of the matrix).
        const Tensor row = counts.Narrow(0, 0, 1).View({experts});
        Tensor offsets = PoisonedIndex({experts + 1}, DType::kI64);
        ops::CountOffsets(ctx_, Dev(row), offsets);
        Tensor offsets_ref = Tensor::Empty({experts + 1}, DType::kI64);
        ops::CountOffsets(cpu_, row, offsets_ref);
        ExpectIntsEqual(Host(offsets), offsets_ref,
                        absl::StrCat("CountOffsets L ", experts, " empty mode ", empty_mode));
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaMoeIndexTest, CombineSlotsAndSlotRowDotMatchCpu) {
  uint64_t seed = 400;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (const RouteShape& s : RouteShapes()) {
      for (int64_t c : kCombineWidths) {
        for (int drop : {0, 25}) {
          ++seed;
          const std::string what =
              absl::StrCat(DTypeName(dtype), " ", ShapeName(s), " C ", c, " drop ", drop);
          const int64_t m = s.n * s.k;
          const Tensor slot_row = CpuSlotRow(cpu_, s, drop, seed);
          const Tensor rows = RandomHost({m, c}, dtype, seed, 1);
          const Tensor w = RandomHost({s.n, s.k}, dtype, seed, 2);
          const Tensor out0 = RandomHost({s.n, c}, dtype, seed, 3);
          for (bool weighted : {false, true}) {
            Tensor out = Dev(out0);
            ops::CombineSlots(ctx_, Dev(rows), Dev(slot_row), weighted ? Dev(w) : Tensor(), out);
            Tensor out_ref = ReferenceInput(out0).Clone();
            ops::CombineSlots(cpu_, ReferenceInput(rows), slot_row,
                              weighted ? ReferenceInput(w) : Tensor(), out_ref);
            ExpectParity(Host(out), out_ref, ParityTolerance(dtype),
                         absl::StrCat("CombineSlots weighted ", weighted, " ", what));
          }
          const Tensor x = RandomHost({s.n, c}, dtype, seed, 4);
          Tensor dots = Poisoned({s.n, s.k}, dtype);
          ops::SlotRowDot(ctx_, Dev(x), Dev(slot_row), Dev(rows), dots);
          Tensor dots_ref = Tensor::Empty({s.n, s.k}, ReferenceInput(x).dtype());
          ops::SlotRowDot(cpu_, ReferenceInput(x), slot_row, ReferenceInput(rows), dots_ref);
          ExpectParity(Host(dots), dots_ref, ParityTolerance(dtype), "SlotRowDot " + what);
        }
      }
    }
  }
  ExpectOk();
}

// bf16 rows with the router's f32 weights (CombineSlots) and an f32
// gradient of them (SlotRowDot), against the CPU's mixed-dtype path on the
// same inputs. CombineSlots: each element within one bf16 rounding of the
// CPU's (the same terms in the same slot order; the GPU may fuse a product
// and its add, which moves about one element in 10^4 to the next bf16), and
// at least 99 % of them the same bits: weights rounded to bf16 first would
// move 15-30 % of them. SlotRowDot: f32 tolerance, which a bf16 rounding of
// the dot (2^-9) would fail.
TEST_F(CudaMoeIndexTest, CombineSlotsAndSlotRowDotWithF32WeightsMatchCpu) {
  const DType bf = DType::kBF16, f32 = DType::kF32;
  uint64_t seed = 900;
  int64_t same = 0, total = 0;
  for (const RouteShape& s : RouteShapes()) {
    for (int64_t c : kCombineWidths) {
      for (int drop : {0, 25}) {
        ++seed;
        const std::string what =
            absl::StrCat("bf16 rows, f32 weights, ", ShapeName(s), " C ", c, " drop ", drop);
        const int64_t m = s.n * s.k;
        const Tensor slot_row = CpuSlotRow(cpu_, s, drop, seed);
        const Tensor rows = RandomHost({m, c}, bf, seed, 1);
        const Tensor w = RandomHost({s.n, s.k}, f32, seed, 2, 0.3, 0.2);
        const Tensor out0 = RandomHost({s.n, c}, bf, seed, 3);
        Tensor out = Dev(out0);
        ops::CombineSlots(ctx_, Dev(rows), Dev(slot_row), Dev(w), out);
        Tensor out_ref = out0.Clone();
        ops::CombineSlots(cpu_, rows, slot_row, w, out_ref);
        const Tensor got = Host(out);
        testing::ExpectBf16Parity(got, out_ref, 1e-6, "CombineSlots " + what);
        for (int64_t i = 0; i < got.numel(); ++i) same += got.At(i) == out_ref.At(i);
        total += got.numel();

        const Tensor x = RandomHost({s.n, c}, bf, seed, 4);
        Tensor dots = Poisoned({s.n, s.k}, f32);
        ops::SlotRowDot(ctx_, Dev(x), Dev(slot_row), Dev(rows), dots);
        Tensor dots_ref = Tensor::Empty({s.n, s.k}, f32);
        ops::SlotRowDot(cpu_, x, slot_row, rows, dots_ref);
        ExpectParity(Host(dots), dots_ref, ParityTolerance(f32), "SlotRowDot " + what);
      }
    }
  }
  EXPECT_GE(same, total * 99 / 100) << "CombineSlots elements with the CPU's bits, of " << total;
  ExpectOk();
}

// GatherScaledRows (the combine's backward into the permuted rows) gives
// the CPU's bits: a gathered row times its slot's weight, one product and
// one rounding an element, in f32, f64, bf16, and bf16 rows with the
// router's f32 weights; dropped slots give zero rows. Off a 16-byte
// boundary (one element at a time) too.
TEST_F(CudaMoeIndexTest, GatherScaledRowsMatchesCpuBitForBit) {
  const DType bf = DType::kBF16, f32 = DType::kF32, f64 = DType::kF64;
  const std::pair<DType, DType> kDTypes[] = {{f32, f32}, {f64, f64}, {bf, bf}, {bf, f32}};
  uint64_t seed = 1500;
  for (auto [dtype, w_dtype] : kDTypes) {
    for (const RouteShape& s : RouteShapes()) {
      for (int64_t c : kCombineWidths) {
        for (int drop : {0, 25}) {
          ++seed;
          const std::string what =
              absl::StrCat(DTypeName(dtype), " rows, ", DTypeName(w_dtype), " weights, ",
                           ShapeName(s), " C ", c, " drop ", drop);
          const Tensor ids = RandomExpertIds(s, IdMode::kSkipLast, seed);
          const Tensor perm = CpuPermSlot(cpu_, s, ids, RandomKept(s, drop, seed));
          const int64_t m = s.n * s.k;
          const Tensor x = RandomHost({s.n, c}, dtype, seed, 1);
          const Tensor w = RandomHost({s.n, s.k}, w_dtype, seed, 2, 0.3, 0.2);
          Tensor out = Poisoned({m, c}, dtype);
          ops::GatherScaledRows(ctx_, Dev(x), Dev(perm), static_cast<int>(s.k), Dev(w), out);
          Tensor out_ref = Tensor::Empty({m, c}, dtype);
          ops::GatherScaledRows(cpu_, x, perm, static_cast<int>(s.k), w, out_ref);
          const Tensor got = Host(out);
          EXPECT_TRUE(testing::BitwiseEqual(got, out_ref)) << "GatherScaledRows " << what;
          Tensor unaligned = Misaligned(ctx_, Tensor::Zeros({m, c}, dtype));
          ops::GatherScaledRows(ctx_, Misaligned(ctx_, x), Dev(perm), static_cast<int>(s.k), Dev(w),
                                unaligned);
          EXPECT_TRUE(testing::BitwiseEqual(Host(unaligned), got)) << "unaligned " << what;
        }
      }
    }
  }
  ExpectOk();
}

// CombineSlots on rows and out off a 16-byte boundary (one element at a
// time) gives the same bits as on aligned ones (16-byte packs), with and
// without weights, f32 weights with bf16 rows included.
TEST_F(CudaMoeIndexTest, CombineSlotsUnalignedIsThePackedPathBitForBit) {
  const RouteShape s{256, 64, 8};
  const int64_t m = s.n * s.k, c = 128;
  uint64_t seed = 1200;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (DType w_dtype : {dtype, DType::kF32}) {
      if (w_dtype != dtype && dtype != DType::kBF16) continue;
      ++seed;
      const std::string what =
          absl::StrCat(DTypeName(dtype), " rows, ", DTypeName(w_dtype), " weights");
      const Tensor slot_row = CpuSlotRow(cpu_, s, 25, seed);
      const Tensor rows = RandomHost({m, c}, dtype, seed, 1);
      const Tensor w = RandomHost({s.n, s.k}, w_dtype, seed, 2, 0.3, 0.2);
      const Tensor out0 = RandomHost({s.n, c}, dtype, seed, 3);
      for (bool weighted : {false, true}) {
        const Tensor weights = weighted ? Dev(w) : Tensor();
        Tensor packed = Dev(out0);
        ops::CombineSlots(ctx_, Dev(rows), Dev(slot_row), weights, packed);
        Tensor unaligned = Misaligned(ctx_, out0);
        ops::CombineSlots(ctx_, Misaligned(ctx_, rows), Dev(slot_row), weights, unaligned);
        EXPECT_TRUE(testing::BitwiseEqual(Host(packed), Host(unaligned)))
            << what << " weighted " << weighted;
      }
    }
  }
  ExpectOk();
}

}  // namespace
}  // namespace scalemoe
