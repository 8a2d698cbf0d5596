// GPU test: EmbeddingLookup, EmbeddingBackward, CrossEntropy and the
// vocab-parallel ops (VocabRowMax, VocabSoftmaxStats, VocabCrossEntropyLoss,
// VocabCrossEntropyBackward, VocabShardRows, CountOutOfRange) against the
// CPU reference on fresh Philox data: one token, token counts and
// vocabularies that fill no block, ids 0 and V − 1, targets on both sides
// of a shard's boundaries, f32, f64 and bf16. Outputs start as NaN; a NaN
// never passes. CrossEntropy also meets rows at every 16-byte alignment (V
// not a multiple of its pack; targets in a row's unpacked first and last
// elements), views that start off a 16-byte boundary, −inf logits, and a
// bf16 d_logits of f32 and f64 logits (the copied gradient's bits). The
// embedding's lookup is a copy and its backward adds in the CPU's order, so
// both match the CPU bit for bit (f32, f64), and the backward gives the
// same bits on every run with many repeated ids.
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::BitwiseEqual;
using testing::CudaOpTest;
using testing::ExpectParity;
using testing::F64;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

// n int32 ids uniform in [lo, hi) (Philox), with ids[0] = lo and
// ids[n − 1] = hi − 1 (the range's ends).
Tensor RandomIds(int64_t n, int64_t lo, int64_t hi, uint64_t seed) {
  Tensor ids = Tensor::Empty({n}, DType::kI32);
  int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    const double u = PhiloxUniform(seed, 9, static_cast<uint64_t>(i));
    p[i] = static_cast<int32_t>(
        lo + std::min<int64_t>(hi - lo - 1, static_cast<int64_t>(u * (hi - lo))));
  }
  p[0] = static_cast<int32_t>(lo);
  p[n - 1] = static_cast<int32_t>(hi - 1);
  return ids;
}

Tensor Ids(const std::vector<double>& values) {
  return Tensor::FromVector({static_cast<int64_t>(values.size())}, values, DType::kI32);
}

class CudaEmbeddingCeTest : public CudaOpTest {
 protected:
  // An integer output that must be written, poisoned with 0x5A bytes (not
  // −1, which VocabShardRows writes).
  Tensor PoisonedInts(const Shape& shape, DType dtype) const {
    Tensor t = ctx_.Empty(shape, dtype);
    if (t.nbytes() > 0) {
      EXPECT_EQ(
          cudaMemsetAsync(t.raw_data(), 0x5A, t.nbytes(), static_cast<cudaStream_t>(ctx_.stream())),
          cudaSuccess);
    }
    return t;
  }
};

// ---------------------------------------------------------------- embedding

struct EmbeddingDims {
  int64_t n, vocab, c;
};

const std::vector<EmbeddingDims> kEmbeddingDims = {
    {1, 1, 1},    {1, 50, 768},   {13, 37, 5},       {1000, 1000, 64},
    {257, 7, 33}, {4099, 3, 128}, {600, 2000, 1030},
};

TEST_F(CudaEmbeddingCeTest, LookupIsTheCpuCopyBitForBit) {
  uint64_t seed = 1;
  for (DType dtype : kFloats) {
    for (const EmbeddingDims& d : kEmbeddingDims) {
      ++seed;
      const Tensor tokens = RandomIds(d.n, 0, d.vocab, seed);
      const Tensor weight = RandomHost({d.vocab, d.c}, dtype, seed, 1);
      Tensor out = Poisoned({d.n, d.c}, dtype);
      ops::EmbeddingLookup(ctx_, Dev(tokens), Dev(weight), out);
      Tensor ref = Tensor::Empty({d.n, d.c}, dtype);
      ops::EmbeddingLookup(cpu_, tokens, weight, ref);
      EXPECT_TRUE(BitwiseEqual(Host(out), ref))
          << DTypeName(dtype) << " N " << d.n << " V " << d.vocab << " C " << d.c;
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, LookupOfABadIdIsANanRow) {
  const Tensor weight = RandomHost({4, 8}, DType::kF32, 5, 1);
  Tensor out = Poisoned({3, 8}, DType::kF32);
  ops::EmbeddingLookup(ctx_, Dev(Ids({2, -1, 4})), Dev(weight), out);
  const Tensor got = Host(out);
  for (int64_t j = 0; j < 8; ++j) {
    EXPECT_EQ(got.At(j), weight.At(2 * 8 + j));
    EXPECT_TRUE(std::isnan(got.At(8 + j)));
    EXPECT_TRUE(std::isnan(got.At(16 + j)));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, BackwardMatchesCpu) {
  uint64_t seed = 100;
  for (DType dtype : kFloats) {
    for (const EmbeddingDims& d : kEmbeddingDims) {
      ++seed;
      const std::string what =
          absl::StrCat(DTypeName(dtype), " N ", d.n, " V ", d.vocab, " C ", d.c);
      const Tensor tokens = RandomIds(d.n, 0, d.vocab, seed);
      const Tensor d_out = RandomHost({d.n, d.c}, dtype, seed, 1);
      const Tensor d_weight = RandomHost({d.vocab, d.c}, dtype, seed, 2);  // accumulated into
      Tensor got = Dev(d_weight);
      ops::EmbeddingBackward(ctx_, Dev(tokens), Dev(d_out), got);
      if (dtype == DType::kBF16) {  // no CPU bf16 path: f64 on the bf16 values
        Tensor ref = F64(d_weight).Clone();
        ops::EmbeddingBackward(cpu_, tokens, F64(d_out), ref);
        ExpectParity(Host(got), ref, ParityTolerance(dtype), what);
      } else {  // the CPU's order: the same bits
        Tensor ref = d_weight.Clone();
        ops::EmbeddingBackward(cpu_, tokens, d_out, ref);
        EXPECT_TRUE(BitwiseEqual(Host(got), ref)) << what;
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, BackwardIsTheSameBitsEveryRunWithRepeatedIds) {
  for (DType dtype : kFloats) {
    const int64_t n = 20000, vocab = 50, c = 96;
    // Most positions hold id 7; the rest a few others.
    Tensor tokens = RandomIds(n, 0, vocab, 11);
    for (int64_t i = 0; i < n; i += 3) tokens.data<int32_t>()[i] = 7;
    const Tensor tokens_dev = Dev(tokens);
    const Tensor d_out = Dev(RandomHost({n, c}, dtype, 11, 1));
    std::vector<Tensor> runs;
    for (int run = 0; run < 3; ++run) {
      Tensor d_weight = ctx_.Zeros({vocab, c}, dtype);
      ops::EmbeddingBackward(ctx_, tokens_dev, d_out, d_weight);
      runs.push_back(Host(d_weight));
    }
    EXPECT_TRUE(BitwiseEqual(runs[1], runs[0])) << DTypeName(dtype);
    EXPECT_TRUE(BitwiseEqual(runs[2], runs[0])) << DTypeName(dtype);
    Tensor ref = Tensor::Zeros({vocab, c}, DType::kF64);
    ops::EmbeddingBackward(cpu_, tokens, F64(Host(d_out)), ref);
    ExpectParity(runs[0], ref, ParityTolerance(dtype), DTypeName(dtype));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// Ids outside [0, V) add nothing (the lookup made their rows NaN already).
TEST_F(CudaEmbeddingCeTest, BackwardSkipsBadIds) {
  const int64_t c = 16;
  const Tensor d_out = RandomHost({5, c}, DType::kF32, 21, 1);
  Tensor d_weight = ctx_.Zeros({4, c}, DType::kF32);
  ops::EmbeddingBackward(ctx_, Dev(Ids({1, -3, 4, 1, 0})), Dev(d_out), d_weight);
  Tensor kept = Tensor::Empty({3, c}, DType::kF32);
  kept.Narrow(0, 0, 1).CopyFrom(d_out.Narrow(0, 0, 1));
  kept.Narrow(0, 1, 2).CopyFrom(d_out.Narrow(0, 3, 2));
  Tensor ref = Tensor::Zeros({4, c}, DType::kF32);
  ops::EmbeddingBackward(cpu_, Ids({1, 1, 0}), kept, ref);
  EXPECT_TRUE(BitwiseEqual(Host(d_weight), ref));
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// ---------------------------------------------------------------- cross-entropy

struct CeDims {
  int64_t n, v;
};

// Odd V puts consecutive rows at every alignment of a 16-byte pack (4
// f32, 8 bf16, 2 f64); V < 8 gives bf16 rows shorter than their unaligned
// head; 4 × 50257 (a GPT-2 vocabulary) runs the unrolled pack loop and its
// remainder.
const std::vector<CeDims> kCeDims = {
    {1, 64},   {1, 1},    {7, 5},     {5, 3},     {37, 37},   {300, 1000},
    {9, 4099}, {5, 5003}, {3, 32771}, {2, 65536}, {4, 50257},
};

// Random targets, the first four rows alternating the last and the first
// column: on rows that start off a 16-byte boundary these fall in the
// elements before the first pack and after the last.
Tensor CeTargets(int64_t n, int64_t v, uint64_t seed) {
  Tensor t = RandomIds(n, 0, v, seed);
  for (int64_t i = 0; i < n && i < 4; ++i) {
    t.data<int32_t>()[i] = static_cast<int32_t>(i % 2 == 0 ? v - 1 : 0);
  }
  return t;
}

TEST_F(CudaEmbeddingCeTest, CrossEntropyMatchesCpu) {
  uint64_t seed = 300;
  for (DType dtype : kFloats) {
    for (const CeDims& d : kCeDims) {
      for (bool with_grad : {true, false}) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(dtype), " N ", d.n, " V ", d.v,
                                              with_grad ? " with d_logits" : "");
        const Tensor logits = RandomHost({d.n, d.v}, dtype, seed, 1, 3.0);
        const Tensor targets = CeTargets(d.n, d.v, seed);
        Tensor d_logits = with_grad ? Poisoned({d.n, d.v}, dtype) : Tensor();
        Tensor loss = Poisoned({1}, DType::kF64);
        ops::CrossEntropy(ctx_, Dev(logits), Dev(targets), d_logits, loss);
        Tensor d_ref = with_grad ? Tensor::Empty({d.n, d.v}, DType::kF64) : Tensor();
        Tensor loss_ref = Tensor::Empty({1}, DType::kF64);
        ops::CrossEntropy(cpu_, F64(logits), targets, d_ref, loss_ref);
        ExpectParity(Host(loss), loss_ref, ParityTolerance(dtype), "loss " + what);
        if (with_grad) ExpectParity(Host(d_logits), d_ref, ParityTolerance(dtype), "d " + what);
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, CrossEntropyEdgeCases) {
  // No rows: a zero loss.
  Tensor loss = Poisoned({1}, DType::kF64);
  ops::CrossEntropy(ctx_, ctx_.Empty({0, 10}, DType::kF32), ctx_.Empty({0}, DType::kI32),
                    ctx_.Empty({0, 10}, DType::kF32), loss);
  EXPECT_EQ(Host(loss).At(0), 0.0);
  // A target outside the vocabulary: a NaN loss (the CPU SM_CHECKs instead).
  ops::CrossEntropy(ctx_, Dev(RandomHost({3, 10}, DType::kF32, 4, 1)), Dev(Ids({1, 10, 2})),
                    Tensor(), loss);
  EXPECT_TRUE(std::isnan(Host(loss).At(0)));
  // Same bits every run.
  const Tensor logits = Dev(RandomHost({1000, 4099}, DType::kBF16, 8, 1, 4.0));
  const Tensor targets = Dev(RandomIds(1000, 0, 4099, 8));
  std::vector<Tensor> runs;
  for (int run = 0; run < 2; ++run) {
    Tensor d = Poisoned({1000, 4099}, DType::kBF16);
    ops::CrossEntropy(ctx_, logits, targets, d, loss);
    runs.push_back(Host(loss));
    runs.push_back(Host(d));
  }
  EXPECT_TRUE(BitwiseEqual(runs[0], runs[2]));
  EXPECT_TRUE(BitwiseEqual(runs[1], runs[3]));
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// Logits or d_logits that start off a 16-byte boundary (a view one row into
// a tensor of odd V) take the unpacked kernel; the same results.
TEST_F(CudaEmbeddingCeTest, CrossEntropyOfUnalignedViewsMatchesCpu) {
  const int64_t n = 6, v = 1001;
  struct FirstRows {
    int64_t logits, d_logits;
  };
  uint64_t seed = 400;
  for (DType dtype : kFloats) {
    for (const FirstRows first : {FirstRows{1, 0}, FirstRows{0, 1}, FirstRows{1, 1}}) {
      ++seed;
      const std::string what = absl::StrCat(DTypeName(dtype), " logits from row ", first.logits,
                                            ", d_logits from row ", first.d_logits);
      const Tensor logits =
          Dev(RandomHost({n + 1, v}, dtype, seed, 1, 3.0)).Narrow(0, first.logits, n);
      const Tensor d_all = Poisoned({n + 1, v}, dtype);
      const Tensor d_logits = d_all.Narrow(0, first.d_logits, n);
      const Tensor targets = CeTargets(n, v, seed);
      Tensor loss = Poisoned({1}, DType::kF64);
      ops::CrossEntropy(ctx_, logits, Dev(targets), d_logits, loss);
      Tensor d_ref = Tensor::Empty({n, v}, DType::kF64);
      Tensor loss_ref = Tensor::Empty({1}, DType::kF64);
      ops::CrossEntropy(cpu_, F64(Host(logits)), targets, d_ref, loss_ref);
      ExpectParity(Host(loss), loss_ref, ParityTolerance(dtype), "loss " + what);
      ExpectParity(Host(d_logits), d_ref, ParityTolerance(dtype), "d " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// −inf logits (masked or padded vocabulary entries) add nothing: whole
// packs of them, a thread whose first packs are all −inf, a row that is
// −inf but for its target.
TEST_F(CudaEmbeddingCeTest, CrossEntropyOfMinusInfLogitsMatchesCpu) {
  const int64_t n = 3, v = 4099;
  const double inf = std::numeric_limits<double>::infinity();
  Tensor values = RandomHost({n, v}, DType::kF64, 500, 1, 3.0);
  double* p = values.data<double>();
  for (int64_t j = 0; j < 2000; ++j) p[j] = -inf;           // row 0: its first 2000
  for (int64_t j = 1; j < v; j += 2) p[v + j] = -inf;       // row 1: every odd column
  for (int64_t j = 0; j < v - 1; ++j) p[2 * v + j] = -inf;  // row 2: all but the last
  const Tensor targets = Ids({2500, 0, v - 1});
  for (DType dtype : kFloats) {
    Tensor logits = Tensor::Empty({n, v}, dtype);
    logits.CopyFrom(values);
    Tensor d_logits = Poisoned({n, v}, dtype);
    Tensor loss = Poisoned({1}, DType::kF64);
    ops::CrossEntropy(ctx_, Dev(logits), Dev(targets), d_logits, loss);
    Tensor d_ref = Tensor::Empty({n, v}, DType::kF64);
    Tensor loss_ref = Tensor::Empty({1}, DType::kF64);
    ops::CrossEntropy(cpu_, F64(logits), targets, d_ref, loss_ref);
    ExpectParity(Host(loss), loss_ref, ParityTolerance(dtype),
                 absl::StrCat("loss ", DTypeName(dtype)));
    ExpectParity(Host(d_logits), d_ref, ParityTolerance(dtype),
                 absl::StrCat("d ", DTypeName(dtype)));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// A bf16 d_logits of f32 or f64 logits (the LM head's under BF16) holds
// the bits of the logits-dtype gradient copied to bf16 (ops::Copy: what the
// head did before), at every row alignment and for views off a 16-byte
// boundary (the unpacked kernel: the reference's d_logits is a view of the
// same rows, so that both take it); the loss's bits do not change.
TEST_F(CudaEmbeddingCeTest, CrossEntropyBf16GradientIsTheCopiedGradientBitForBit) {
  struct Case {
    int64_t n, v, first_logits, first_d;  // rows [first, first + n) of a [n + 1, v] tensor
  };
  std::vector<Case> cases;
  for (const CeDims& d : kCeDims) cases.push_back({d.n, d.v, 0, 0});
  for (const Case c : {Case{6, 1001, 1, 0}, Case{6, 1001, 0, 1}, Case{6, 1001, 1, 1}}) {
    cases.push_back(c);
  }
  uint64_t seed = 600;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const Case& c : cases) {
      ++seed;
      const std::string what =
          absl::StrCat(DTypeName(dtype), " N ", c.n, " V ", c.v, ", logits from row ",
                       c.first_logits, ", d_logits from row ", c.first_d);
      const Tensor logits =
          Dev(RandomHost({c.n + 1, c.v}, dtype, seed, 1, 3.0)).Narrow(0, c.first_logits, c.n);
      const Tensor targets = Dev(CeTargets(c.n, c.v, seed));
      const Tensor d_wide = Poisoned({c.n + 1, c.v}, dtype).Narrow(0, c.first_d, c.n);
      Tensor loss_wide = Poisoned({1}, DType::kF64);
      ops::CrossEntropy(ctx_, logits, targets, d_wide, loss_wide);
      Tensor want = Poisoned({c.n, c.v}, DType::kBF16);
      ops::Copy(ctx_, d_wide, want);
      const Tensor d_bf16 = Poisoned({c.n + 1, c.v}, DType::kBF16).Narrow(0, c.first_d, c.n);
      Tensor loss = Poisoned({1}, DType::kF64);
      ops::CrossEntropy(ctx_, logits, targets, d_bf16, loss);
      EXPECT_TRUE(BitwiseEqual(Host(d_bf16), Host(want))) << what;
      EXPECT_TRUE(BitwiseEqual(Host(loss), Host(loss_wide))) << what;
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// A target outside the vocabulary makes its gradient row NaN; the other
// rows are the CPU's (same N).
TEST_F(CudaEmbeddingCeTest, CrossEntropyBadTargetMakesItsGradientRowNan) {
  const int64_t v = 1001;
  const Tensor logits = RandomHost({3, v}, DType::kF32, 6, 1, 3.0);
  Tensor d_logits = Poisoned({3, v}, DType::kF32);
  Tensor loss = Poisoned({1}, DType::kF64);
  ops::CrossEntropy(ctx_, Dev(logits), Dev(Ids({1, -1, 2})), d_logits, loss);
  EXPECT_TRUE(std::isnan(Host(loss).At(0)));
  Tensor d_ref = Tensor::Empty({3, v}, DType::kF64);
  Tensor loss_ref = Tensor::Empty({1}, DType::kF64);
  ops::CrossEntropy(cpu_, F64(logits), Ids({1, 0, 2}), d_ref, loss_ref);
  const Tensor got = Host(d_logits);
  for (int64_t j = 0; j < v; ++j) EXPECT_TRUE(std::isnan(got.At(v + j))) << j;
  for (int64_t r : {0, 2}) {
    ExpectParity(got.Narrow(0, r, 1).Clone(), d_ref.Narrow(0, r, 1).Clone(),
                 ParityTolerance(DType::kF32), absl::StrCat("row ", r));
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// ---------------------------------------------------------------- vocab-parallel

struct ShardDims {
  int64_t n, v_local, start;
};

const std::vector<ShardDims> kShards = {
    {1, 64, 0}, {7, 37, 37}, {300, 1000, 3000}, {5, 5003, 5003}, {3, 32771, 65542}, {64, 1, 9},
};

// Targets: both sides of each end of the shard, then random over a
// vocabulary that extends past it.
Tensor ShardTargets(const ShardDims& d, uint64_t seed) {
  Tensor t = RandomIds(d.n, 0, d.start + d.v_local + 100, seed);
  const int64_t edges[] = {d.start - 1, d.start, d.start + d.v_local - 1, d.start + d.v_local};
  for (int64_t i = 0; i < 4 && i < d.n; ++i) {
    t.data<int32_t>()[i] = static_cast<int32_t>(std::max<int64_t>(0, edges[i]));
  }
  return t;
}

TEST_F(CudaEmbeddingCeTest, VocabRowMaxIsTheCpuMaxExactly) {
  uint64_t seed = 600;
  for (DType dtype : kFloats) {
    for (const ShardDims& d : kShards) {
      ++seed;
      const Tensor logits = RandomHost({d.n, d.v_local}, dtype, seed, 1, 3.0);
      Tensor row_max = Poisoned({d.n}, DType::kF64);
      ops::VocabRowMax(ctx_, Dev(logits), row_max);
      Tensor ref = Tensor::Empty({d.n}, DType::kF64);
      ops::VocabRowMax(cpu_, logits, ref);
      EXPECT_TRUE(BitwiseEqual(Host(row_max), ref))
          << DTypeName(dtype) << " N " << d.n << " V_local " << d.v_local;
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, VocabStatsLossAndBackwardMatchCpu) {
  uint64_t seed = 700;
  for (DType dtype : kFloats) {
    for (const ShardDims& d : kShards) {
      ++seed;
      const std::string what =
          absl::StrCat(DTypeName(dtype), " N ", d.n, " V_local ", d.v_local, " start ", d.start);
      const Tensor logits = RandomHost({d.n, d.v_local}, dtype, seed, 1, 3.0);
      const Tensor ref_logits = ReferenceInput(logits);
      const Tensor targets = ShardTargets(d, seed);
      // The whole vocabulary's max: this shard's, or above it on odd rows
      // (another shard's).
      Tensor row_max = Tensor::Empty({d.n}, DType::kF64);
      ops::VocabRowMax(cpu_, ref_logits, row_max);
      for (int64_t i = 1; i < d.n; i += 2) row_max.data<double>()[i] += 0.75;

      Tensor stats = Poisoned({2, d.n}, DType::kF64);
      ops::VocabSoftmaxStats(ctx_, Dev(logits), Dev(targets), d.start, Dev(row_max), stats);
      Tensor stats_ref = Tensor::Empty({2, d.n}, DType::kF64);
      ops::VocabSoftmaxStats(cpu_, ref_logits, targets, d.start, row_max, stats_ref);
      const Tensor stats_got = Host(stats);
      ExpectParity(stats_got.Narrow(0, 0, 1), stats_ref.Narrow(0, 0, 1), ParityTolerance(dtype),
                   "softmax sums " + what);
      // The target logit is a copy.
      EXPECT_TRUE(
          BitwiseEqual(stats_got.Narrow(0, 1, 1).Clone(), stats_ref.Narrow(0, 1, 1).Clone()))
          << "target logits " << what;

      // Summed over shards (here: the reference's sums, given to both).
      Tensor loss = Poisoned({1}, DType::kF64);
      ops::VocabCrossEntropyLoss(ctx_, Dev(row_max), Dev(stats_ref), loss);
      Tensor loss_ref = Tensor::Empty({1}, DType::kF64);
      ops::VocabCrossEntropyLoss(cpu_, row_max, stats_ref, loss_ref);
      ExpectParity(Host(loss), loss_ref, 1e-12, "loss " + what);

      Tensor d_logits = Poisoned({d.n, d.v_local}, dtype);
      ops::VocabCrossEntropyBackward(ctx_, Dev(logits), Dev(targets), d.start, Dev(row_max),
                                     Dev(stats_ref), d_logits);
      Tensor d_ref = Tensor::Empty({d.n, d.v_local}, ref_logits.dtype());
      ops::VocabCrossEntropyBackward(cpu_, ref_logits, targets, d.start, row_max, stats_ref, d_ref);
      ExpectParity(Host(d_logits), d_ref, ParityTolerance(dtype), "d_logits " + what);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, VocabOpsAreTheSameBitsEveryRun) {
  const int64_t n = 513, v = 8191;
  const Tensor logits = Dev(RandomHost({n, v}, DType::kF32, 9, 1, 3.0));
  const Tensor targets = Dev(RandomIds(n, 0, 3 * v, 9));
  std::vector<Tensor> runs;
  for (int run = 0; run < 2; ++run) {
    Tensor row_max = Poisoned({n}, DType::kF64), stats = Poisoned({2, n}, DType::kF64);
    Tensor loss = Poisoned({1}, DType::kF64), d = Poisoned({n, v}, DType::kF32);
    ops::VocabRowMax(ctx_, logits, row_max);
    ops::VocabSoftmaxStats(ctx_, logits, targets, v, row_max, stats);
    ops::VocabCrossEntropyLoss(ctx_, row_max, stats, loss);
    ops::VocabCrossEntropyBackward(ctx_, logits, targets, v, row_max, stats, d);
    runs.push_back(Host(stats));
    runs.push_back(Host(loss));
    runs.push_back(Host(d));
  }
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(BitwiseEqual(runs[i], runs[i + 3])) << i;
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(CudaEmbeddingCeTest, ShardRowsAndOutOfRangeCountMatchCpu) {
  uint64_t seed = 800;
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{1} << 20}) {
    for (const ShardDims& d : kShards) {
      ++seed;
      Tensor tokens = RandomIds(n, -2, d.start + d.v_local + 3, seed);
      const std::string what = absl::StrCat("n ", n, " shard [", d.start, ", +", d.v_local, ")");
      Tensor rows = PoisonedInts({n}, DType::kI32);
      ops::VocabShardRows(ctx_, Dev(tokens), d.start, d.v_local, rows);
      Tensor rows_ref = Tensor::Empty({n}, DType::kI32);
      ops::VocabShardRows(cpu_, tokens, d.start, d.v_local, rows_ref);
      EXPECT_TRUE(BitwiseEqual(Host(rows), rows_ref)) << what;

      Tensor count = PoisonedInts({1}, DType::kI64);
      ops::CountOutOfRange(ctx_, Dev(tokens), d.start, d.start + d.v_local, count);
      Tensor count_ref = Tensor::Empty({1}, DType::kI64);
      ops::CountOutOfRange(cpu_, tokens, d.start, d.start + d.v_local, count_ref);
      EXPECT_EQ(Host(count).At(0), count_ref.At(0)) << what;
    }
  }
  Tensor count = Poisoned({1}, DType::kI64);
  ops::CountOutOfRange(ctx_, ctx_.Empty({0}, DType::kI32), 0, 8, count);
  EXPECT_EQ(Host(count).At(0), 0.0);
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
