// GPU test: the optimizer's multi-tensor ops (core/ops.h, "optimizer ops")
// and the trainer's non-finite tracker against the CPU reference on fresh
// Philox data: CopySegments, SegmentSumOfSquares, GradNormControl,
// AdamWUpdate, MuonMomentum, FrobeniusNormalize, MuonApply, TrackNonFinite.
//
// Segment layouts: one row of one element; rows of odd sizes (empty ones
// among them) listed out of buffer order with gaps between; 3001 rows (more
// chunks than an op launches blocks, so each block walks several rows), and
// a row of a million elements (hundreds of chunks). Outputs that must be written start as NaN;
// elements outside the rows must keep their bits; the step control lives on
// the device and is produced there (GradNormControl) for the multi-step
// AdamW run; the reductions give the same bits twice.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Rows (begin, length) in a buffer of n elements, listed in row order.
struct Layout {
  std::string name;
  int64_t n = 0;
  std::vector<std::pair<int64_t, int64_t>> rows;

  std::vector<bool> Mask() const {
    std::vector<bool> m(static_cast<size_t>(n), false);
    for (const auto& [b, len] : rows) {
      for (int64_t i = b; i < b + len; ++i) m[static_cast<size_t>(i)] = true;
    }
    return m;
  }
};

// Rows of `sizes` placed with gaps of 0..2 elements, then listed evens
// first and odds in reverse (not the buffer's order).
Layout Placed(std::string name, const std::vector<int64_t>& sizes) {
  Layout out{std::move(name), 0, {}};
  std::vector<std::pair<int64_t, int64_t>> placed;
  int64_t at = 2;
  for (size_t i = 0; i < sizes.size(); ++i) {
    placed.emplace_back(at, sizes[i]);
    at += sizes[i] + static_cast<int64_t>(i % 3);
  }
  out.n = at + 5;
  for (size_t i = 0; i < placed.size(); i += 2) out.rows.push_back(placed[i]);
  for (size_t i = placed.size(); i-- > 0;) {
    if (i % 2 == 1) out.rows.push_back(placed[i]);
  }
  return out;
}

std::vector<Layout> Layouts() {
  std::vector<Layout> out;
  out.push_back({"one element", 1, {{0, 1}}});
  out.push_back(Placed("odd rows", {1, 3, 5, 0, 7, 31, 33, 255, 257, 1023, 4095, 4096, 4097, 8191,
                                    12289, 2, 65537, 9, 100003}));
  std::vector<int64_t> many;
  for (int64_t s = 0; s < 3001; ++s) {
    many.push_back(s % 97 == 5 ? 9000 : s % 7 == 3 ? 0 : 1 + (s * 37) % 61);
  }
  out.push_back(Placed("3001 rows", many));
  out.push_back(Placed("large row", {3, 1'000'003, 1}));
  return out;
}

Tensor I64Table(int64_t rows, int width, const std::vector<double>& values) {
  return Tensor::FromVector({rows, width}, values, DType::kI64);
}

// (begin, end) rows.
Tensor BeginEndTable(const Layout& l) {
  std::vector<double> v;
  for (const auto& [b, len] : l.rows) {
    v.push_back(static_cast<double>(b));
    v.push_back(static_cast<double>(b + len));
  }
  return I64Table(static_cast<int64_t>(l.rows.size()), 2, v);
}

// (begin, end, packed_begin) rows, packed back to back in row order.
Tensor PackedTable(const Layout& l, int64_t* packed_n) {
  std::vector<double> v;
  int64_t at = 0;
  for (const auto& [b, len] : l.rows) {
    v.push_back(static_cast<double>(b));
    v.push_back(static_cast<double>(b + len));
    v.push_back(static_cast<double>(at));
    at += len;
  }
  *packed_n = at;
  return I64Table(static_cast<int64_t>(l.rows.size()), 3, v);
}

// Per-row f64 coefficients: width columns from f(row, column).
template <typename F>
Tensor Coefficients(int64_t rows, int width, F&& f) {
  std::vector<double> v;
  for (int64_t s = 0; s < rows; ++s) {
    for (int k = 0; k < width; ++k) v.push_back(f(s, k));
  }
  return Tensor::FromVector({rows, width}, v, DType::kF64);
}

Tensor Squared(const Tensor& t) {
  std::vector<double> v = t.ToVector();
  for (double& x : v) x *= x;
  return Tensor::FromVector(t.shape(), v, t.dtype());
}

// A host tensor of NaN bytes (as CudaOpTest::Poisoned on the device).
Tensor PoisonedHost(const Shape& shape, DType dtype) {
  Tensor t = Tensor::Empty(shape, dtype);
  if (t.nbytes() > 0) std::memset(t.raw_data(), 0xFF, t.nbytes());
  return t;
}

bool AllPoison(const Tensor& host) {
  const auto* bytes = static_cast<const unsigned char*>(host.raw_data());
  for (size_t i = 0; i < host.nbytes(); ++i) {
    if (bytes[i] != 0xFF) return false;
  }
  return true;
}

// Elements outside the layout's rows hold exactly their original values.
void ExpectUntouched(const Tensor& got, const Tensor& original, const std::vector<bool>& mask,
                     const std::string& what) {
  for (int64_t i = 0; i < got.numel(); ++i) {
    if (mask[static_cast<size_t>(i)]) continue;
    ASSERT_EQ(got.At(i), original.At(i)) << what << ": element " << i << " outside the rows";
  }
}

// Philox N(0, 1) entries scaled so that the rows' elements have 2-norm
// `norm` (before rounding to dtype), the rest left as drawn.
Tensor WithNorm(const Layout& l, const std::vector<bool>& mask, DType dtype, uint64_t seed,
                uint64_t stream, double norm) {
  Tensor t = RandomHost({l.n}, DType::kF64, seed, stream);
  double sum = 0;
  for (int64_t i = 0; i < l.n; ++i) {
    if (mask[static_cast<size_t>(i)]) sum += t.At(i) * t.At(i);
  }
  const double scale = norm / std::sqrt(sum);
  double* v = t.data<double>();
  for (int64_t i = 0; i < l.n; ++i) {
    if (mask[static_cast<size_t>(i)]) v[i] *= scale;
  }
  Tensor out = Tensor::Empty({l.n}, dtype);
  out.CopyFrom(t);
  return out;
}

// |got − ref| <= rel·|ref| per element (sums of squares: no cancellation).
void ExpectRelative(const Tensor& got, const Tensor& ref, double rel, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  for (int64_t i = 0; i < got.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(got.At(i))) << what << ": element " << i << " is " << got.At(i);
    EXPECT_LE(std::abs(got.At(i) - ref.At(i)), rel * std::abs(ref.At(i)))
        << what << ": element " << i << " got " << got.At(i) << " reference " << ref.At(i);
  }
}

class CudaOptimizerOpsTest : public CudaOpTest {
 protected:
  // A step control on the host and its device copy.
  struct Controls {
    ops::StepControl host, dev;
  };
  Controls MakeControl(int64_t num_updates, double clip, bool nonfinite) const {
    Controls c;
    c.host.clip_factor = Tensor::FromVector({1}, {clip}, DType::kF64);
    c.host.nonfinite = Tensor::FromVector({1}, {nonfinite ? 1.0 : 0.0}, DType::kI32);
    c.host.num_updates = Tensor::FromVector({1}, {static_cast<double>(num_updates)}, DType::kI64);
    c.dev.clip_factor = Dev(c.host.clip_factor);
    c.dev.nonfinite = Dev(c.host.nonfinite);
    c.dev.num_updates = Dev(c.host.num_updates);
    return c;
  }

  void ExpectOk() {
    const Status st = ctx_.Synchronize();
    EXPECT_TRUE(st.ok()) << st;
  }
};

// ---------------------------------------------------------------- CopySegments

TEST_F(CudaOptimizerOpsTest, CopySegmentsMatchesCpuBitForBitAcrossDtypes) {
  uint64_t seed = 1;
  for (const Layout& l : Layouts()) {
    // Destinations back to back in reverse row order, one element apart.
    std::vector<double> rows;
    int64_t at = 1;
    for (size_t i = l.rows.size(); i-- > 0;) {
      rows.insert(rows.begin(), {static_cast<double>(l.rows[i].first), static_cast<double>(at),
                                 static_cast<double>(l.rows[i].second)});
      at += l.rows[i].second + 1;
    }
    const int64_t dst_n = at;
    const Tensor table = I64Table(static_cast<int64_t>(l.rows.size()), 3, rows);
    const Tensor table_dev = Dev(table);
    for (DType from : {DType::kF32, DType::kF64, DType::kBF16}) {
      const Tensor src = RandomHost({l.n}, from, ++seed, 1, 3.0);
      const Tensor src_dev = Dev(src);
      for (DType to : {DType::kF32, DType::kF64, DType::kBF16}) {
        Tensor dst = Poisoned({dst_n}, to);
        ops::CopySegments(ctx_, src_dev, dst, table_dev);
        Tensor ref = PoisonedHost({dst_n}, to);
        ops::CopySegments(cpu_, src, ref, table);
        EXPECT_TRUE(testing::BitwiseEqual(Host(dst), ref))
            << l.name << ": " << DTypeName(from) << " -> " << DTypeName(to);
      }
    }
  }
  ExpectOk();
}

// ---------------------------------------------------------------- SegmentSumOfSquares

TEST_F(CudaOptimizerOpsTest, SegmentSumOfSquaresMatchesCpuAndIsDeterministic) {
  uint64_t seed = 100;
  for (const Layout& l : Layouts()) {
    const Tensor table = BeginEndTable(l);
    const Tensor table_dev = Dev(table);
    const int64_t rows = static_cast<int64_t>(l.rows.size());
    for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
      const Tensor x = RandomHost({l.n}, dtype, ++seed, 1, 1.0, 0.3);
      const Tensor x_dev = Dev(x);
      for (bool per_row : {true, false}) {
        const std::string what =
            absl::StrCat(l.name, " ", DTypeName(dtype), per_row ? " per row" : " total");
        // Added into: start from non-zero sums.
        std::vector<double> start;
        for (int64_t s = 0; s < (per_row ? rows : 1); ++s) start.push_back(0.5 + s);
        const Tensor sums0 =
            Tensor::FromVector({static_cast<int64_t>(start.size())}, start, DType::kF64);
        Tensor first = Dev(sums0);
        Tensor second = Dev(sums0);
        ops::SegmentSumOfSquares(ctx_, x_dev, table_dev, first);
        ops::SegmentSumOfSquares(ctx_, x_dev, table_dev, second);
        Tensor ref = sums0.Clone();
        ops::SegmentSumOfSquares(cpu_, x, table, ref);
        const Tensor got = Host(first);
        ExpectRelative(got, ref, 1e-12, what);
        EXPECT_TRUE(testing::BitwiseEqual(got, Host(second))) << what << ": two runs differ";
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaOptimizerOpsTest, SegmentSumOfSquaresOfANaNRowIsNaN) {
  const Layout l = Layouts()[1];
  const Tensor table = BeginEndTable(l);
  Tensor x = RandomHost({l.n}, DType::kF32, 150, 1);
  const auto [nan_begin, nan_len] = l.rows[3];
  x.Narrow(0, nan_begin + nan_len / 2, 1).Fill(kNaN);
  Tensor sums = ctx_.Zeros({static_cast<int64_t>(l.rows.size())}, DType::kF64);
  ops::SegmentSumOfSquares(ctx_, Dev(x), Dev(table), sums);
  Tensor total = ctx_.Zeros({1}, DType::kF64);
  ops::SegmentSumOfSquares(ctx_, Dev(x), Dev(table), total);
  const Tensor got = Host(sums);
  for (int64_t s = 0; s < got.numel(); ++s) {
    EXPECT_EQ(std::isnan(got.At(s)), s == 3) << "row " << s << ": " << got.At(s);
  }
  EXPECT_TRUE(std::isnan(Host(total).At(0)));
  ExpectOk();
}

// ---------------------------------------------------------------- GradNormControl

TEST_F(CudaOptimizerOpsTest, GradNormControlMatchesCpuExactly) {
  struct Case {
    double sum, max_norm;
  };
  const Case cases[] = {{0.25, 1.0}, {4.0, 1.0},  {4.0, 0.0},  {1.0, 1.0},  {0.0, 1.0},
                        {kNaN, 1.0}, {kInf, 1.0}, {-1.0, 1.0}, {1e300, 2.5}};
  for (const Case& c : cases) {
    const std::string what = absl::StrCat("sum ", c.sum, " max_norm ", c.max_norm);
    const Tensor sum = Tensor::FromVector({1}, {c.sum}, DType::kF64);
    ops::StepControl dev;
    dev.clip_factor = Poisoned({1}, DType::kF64);
    dev.nonfinite = Poisoned({1}, DType::kI32);
    dev.num_updates = Dev(Tensor::FromVector({1}, {7}, DType::kI64));
    Tensor norm = Poisoned({1}, DType::kF64);
    ops::GradNormControl(ctx_, Dev(sum), c.max_norm, norm, dev);
    ops::StepControl host;
    host.clip_factor = PoisonedHost({1}, DType::kF64);
    host.nonfinite = PoisonedHost({1}, DType::kI32);
    host.num_updates = Tensor::FromVector({1}, {7}, DType::kI64);
    Tensor norm_ref = PoisonedHost({1}, DType::kF64);
    ops::GradNormControl(cpu_, sum, c.max_norm, norm_ref, host);
    const double got_norm = Host(norm).At(0), want_norm = norm_ref.At(0);
    if (std::isnan(want_norm)) {
      EXPECT_TRUE(std::isnan(got_norm)) << what;
    } else {
      EXPECT_EQ(got_norm, want_norm) << what;
    }
    EXPECT_EQ(Host(dev.clip_factor).At(0), host.clip_factor.At(0)) << what;
    EXPECT_EQ(Host(dev.nonfinite).At(0), host.nonfinite.At(0)) << what;
    EXPECT_EQ(Host(dev.num_updates).At(0), host.num_updates.At(0)) << what;
  }
  ExpectOk();
}

// ---------------------------------------------------------------- AdamWUpdate

// Five steps on the device pipeline (SegmentSumOfSquares -> GradNormControl
// -> AdamWUpdate, the control never leaving the device) against the same on
// the CPU: clipping inactive, active, inactive, a NaN gradient (skipped:
// nothing moves, the count stays), active again; bias correction from the
// device's count; rows with and without weight decay and lr multipliers.
TEST_F(CudaOptimizerOpsTest, AdamWStepsMatchCpuWithTheControlOnTheDevice) {
  const double kNorms[] = {0.5, 3.0, 0.8, kNaN, 2.0};  // gradient norms; max_norm 1
  const ops::AdamWUpdateOptions options{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};
  uint64_t seed = 200;
  for (const Layout& l : Layouts()) {
    const Tensor table = BeginEndTable(l);
    const Tensor table_dev = Dev(table);
    const int64_t rows = static_cast<int64_t>(l.rows.size());
    const Tensor coeff = Coefficients(rows, 2, [](int64_t s, int k) {
      return k == 0 ? 0.5 + 0.25 * static_cast<double>(s % 3) : (s % 2 == 0 ? 0.1 : 0.0);
    });
    const Tensor coeff_dev = Dev(coeff);
    const std::vector<bool> mask = l.Mask();
    for (DType dtype : {DType::kF32, DType::kF64}) {
      for (DType gdtype : {dtype, DType::kBF16}) {
        const std::string what =
            absl::StrCat(l.name, " params ", DTypeName(dtype), " grads ", DTypeName(gdtype));
        ++seed;
        const Tensor p0 = RandomHost({l.n}, dtype, seed, 1);
        const Tensor m0 = RandomHost({l.n}, dtype, seed, 2, 0.1);
        const Tensor v0 = Squared(RandomHost({l.n}, dtype, seed, 3, 0.1));
        Tensor p = Dev(p0), m = Dev(m0), v = Dev(v0);
        Tensor rp = ReferenceInput(p0).Clone(), rm = ReferenceInput(m0).Clone(),
               rv = ReferenceInput(v0).Clone();
        Controls c = MakeControl(/*num_updates=*/4, 1.0, false);
        // Outputs of GradNormControl start as NaN.
        c.dev.clip_factor = Poisoned({1}, DType::kF64);
        c.dev.nonfinite = Poisoned({1}, DType::kI32);
        const double tol = ParityTolerance(dtype);
        for (int k = 0; k < 5; ++k) {
          const std::string step = absl::StrCat(what, " step ", k);
          const bool bad = std::isnan(kNorms[k]);
          Tensor g = WithNorm(l, mask, gdtype, seed, 10 + k, bad ? 1.0 : kNorms[k]);
          if (bad) {
            const auto [b, len] = l.rows.back();
            g.Narrow(0, b + len / 2, 1).Fill(kNaN);
          }
          const Tensor before_p = Host(p), before_m = Host(m), before_v = Host(v);
          const Tensor g_dev = Dev(g);
          Tensor sum = ctx_.Zeros({1}, DType::kF64);
          Tensor norm = Poisoned({1}, DType::kF64);
          ops::SegmentSumOfSquares(ctx_, g_dev, table_dev, sum);
          ops::GradNormControl(ctx_, sum, 1.0, norm, c.dev);
          ops::AdamWUpdate(ctx_, p, g_dev, m, v, table_dev, coeff_dev, options, c.dev);

          const Tensor rg = ReferenceInput(g);
          Tensor sum_ref = Tensor::Zeros({1}, DType::kF64);
          Tensor norm_ref = Tensor::Empty({1}, DType::kF64);
          ops::SegmentSumOfSquares(cpu_, rg, table, sum_ref);
          ops::GradNormControl(cpu_, sum_ref, 1.0, norm_ref, c.host);
          ops::AdamWUpdate(cpu_, rp, rg, rm, rv, table, coeff, options, c.host);

          ASSERT_EQ(Host(c.dev.nonfinite).At(0), bad ? 1.0 : 0.0) << step;
          ASSERT_EQ(Host(c.dev.num_updates).At(0), c.host.num_updates.At(0)) << step;
          if (bad) {
            EXPECT_TRUE(std::isnan(Host(norm).At(0))) << step;
            EXPECT_TRUE(testing::BitwiseEqual(Host(p), before_p)) << step << ": params moved";
            EXPECT_TRUE(testing::BitwiseEqual(Host(m), before_m)) << step << ": exp_avg moved";
            EXPECT_TRUE(testing::BitwiseEqual(Host(v), before_v)) << step << ": exp_avg_sq moved";
            continue;
          }
          EXPECT_NEAR(Host(norm).At(0), norm_ref.At(0), 1e-12 * norm_ref.At(0)) << step;
          const double clip = Host(c.dev.clip_factor).At(0);
          EXPECT_NEAR(clip, c.host.clip_factor.At(0), 1e-12) << step;
          EXPECT_EQ(clip<1.0, kNorms[k]> 1.0) << step << ": clip factor " << clip;
          const Tensor got_p = Host(p), got_m = Host(m), got_v = Host(v);
          ExpectParity(got_p, rp, tol, "params " + step);
          ExpectParity(got_m, rm, tol, "exp_avg " + step);
          ExpectParity(got_v, rv, tol, "exp_avg_sq " + step);
          ExpectUntouched(got_p, p0, mask, "params " + step);
          ExpectUntouched(got_m, m0, mask, "exp_avg " + step);
          ExpectUntouched(got_v, v0, mask, "exp_avg_sq " + step);
        }
        EXPECT_EQ(Host(c.dev.num_updates).At(0), 8) << what << ": 4 + four applied updates";
      }
    }
  }
  ExpectOk();
}

// ---------------------------------------------------------------- Muon

TEST_F(CudaOptimizerOpsTest, MuonMomentumMatchesCpu) {
  struct Case {
    bool nesterov;
    double clip;
    bool nonfinite;
  };
  const Case cases[] = {
      {true, 1.0, false}, {false, 1.0, false}, {true, 0.37, false}, {false, 0.37, true}};
  uint64_t seed = 300;
  for (const Layout& l : Layouts()) {
    int64_t packed_n = 0;
    const Tensor table = PackedTable(l, &packed_n);
    const Tensor table_dev = Dev(table);
    const std::vector<bool> mask = l.Mask();
    for (DType dtype : {DType::kF32, DType::kF64}) {
      for (DType gdtype : {dtype, DType::kBF16}) {
        for (const Case& k : cases) {
          const std::string what =
              absl::StrCat(l.name, " ", DTypeName(dtype), " grads ", DTypeName(gdtype),
                           k.nesterov ? " nesterov" : " plain", " clip ", k.clip,
                           k.nonfinite ? " non-finite" : "");
          ++seed;
          const Tensor b0 = RandomHost({l.n}, dtype, seed, 1, 0.5);
          Tensor b = Dev(b0);
          Tensor rb = ReferenceInput(b0).Clone();
          Tensor u = Poisoned({packed_n}, dtype);
          Tensor ru = PoisonedHost({packed_n}, ReferenceInput(b0).dtype());
          const Controls c = MakeControl(1, k.clip, k.nonfinite);
          const ops::MuonMomentumOptions options{.momentum = 0.95, .nesterov = k.nesterov};
          // Two steps: the momentum carries over.
          for (int step = 0; step < 2; ++step) {
            const Tensor g = RandomHost({l.n}, gdtype, seed, 2 + step);
            ops::MuonMomentum(ctx_, Dev(g), b, u, table_dev, options, c.dev);
            ops::MuonMomentum(cpu_, ReferenceInput(g), rb, ru, table, options, c.host);
          }
          const Tensor got_b = Host(b), got_u = Host(u);
          if (k.nonfinite) {
            EXPECT_TRUE(testing::BitwiseEqual(got_b, b0)) << what << ": momentum moved";
            EXPECT_TRUE(AllPoison(got_u)) << what << ": update written";
            continue;
          }
          ExpectParity(got_b, rb, ParityTolerance(dtype), "momentum " + what);
          ExpectParity(got_u, ru, ParityTolerance(dtype), "update " + what);
          ExpectUntouched(got_b, b0, mask, "momentum " + what);
        }
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaOptimizerOpsTest, MuonApplyMatchesCpu) {
  uint64_t seed = 400;
  for (const Layout& l : Layouts()) {
    int64_t packed_n = 0;
    const Tensor table = PackedTable(l, &packed_n);
    const Tensor table_dev = Dev(table);
    const int64_t rows = static_cast<int64_t>(l.rows.size());
    const Tensor coeff = Coefficients(rows, 3, [](int64_t s, int k) {
      switch (k) {
        case 0:
          return 0.5 + 0.25 * static_cast<double>(s % 3);  // lr multiplier
        case 1:
          return s % 2 == 0 ? 0.1 : 0.0;  // decay per unit lr
        default:
          return 0.2 + 0.01 * static_cast<double>(s % 11);  // shape scale
      }
    });
    const Tensor coeff_dev = Dev(coeff);
    const std::vector<bool> mask = l.Mask();
    for (DType dtype : {DType::kF32, DType::kF64}) {
      for (DType odtype : {dtype, DType::kBF16}) {
        for (bool nonfinite : {false, true}) {
          const std::string what = absl::StrCat(l.name, " ", DTypeName(dtype), " ortho ",
                                                DTypeName(odtype), nonfinite ? " non-finite" : "");
          ++seed;
          const Tensor p0 = RandomHost({l.n}, dtype, seed, 1);
          const Tensor o = RandomHost({packed_n}, odtype, seed, 2);
          Tensor p = Dev(p0);
          Tensor rp = ReferenceInput(p0).Clone();
          const Controls c = MakeControl(1, 1.0, nonfinite);
          ops::MuonApply(ctx_, p, Dev(o), table_dev, coeff_dev, 0.02, c.dev);
          ops::MuonApply(cpu_, rp, ReferenceInput(o), table, coeff, 0.02, c.host);
          const Tensor got = Host(p);
          if (nonfinite) {
            EXPECT_TRUE(testing::BitwiseEqual(got, p0)) << what << ": params moved";
            continue;
          }
          ExpectParity(got, rp, ParityTolerance(dtype), "params " + what);
          ExpectUntouched(got, p0, mask, "params " + what);
        }
      }
    }
  }
  ExpectOk();
}

TEST_F(CudaOptimizerOpsTest, FrobeniusNormalizeMatchesCpuAndIsDeterministic) {
  const Shape shapes[] = {{1, 1}, {3, 5}, {2, 7, 9}, {4, 128, 96}, {3, 33, 129}, {1, 3001, 1003}};
  uint64_t seed = 500;
  for (const Shape& shape : shapes) {
    for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
      const std::string what = absl::StrCat(ShapeString(shape), " ", DTypeName(dtype));
      const Tensor x = RandomHost(shape, dtype, ++seed, 1, 2.0, 0.1);
      Tensor first = Dev(x);
      Tensor second = Dev(x);
      ops::FrobeniusNormalize(ctx_, first, 1e-7);
      ops::FrobeniusNormalize(ctx_, second, 1e-7);
      Tensor ref = ReferenceInput(x).Clone();
      ops::FrobeniusNormalize(cpu_, ref, 1e-7);
      const Tensor got = Host(first);
      ExpectParity(got, ref, ParityTolerance(dtype), what);
      EXPECT_TRUE(testing::BitwiseEqual(got, Host(second))) << what << ": two runs differ";
    }
  }
  ExpectOk();
}

// ---------------------------------------------------------------- TrackNonFinite

TEST_F(CudaOptimizerOpsTest, TrackNonFiniteMatchesCpuStepByStep) {
  struct Step {
    int flag;
    double loss;
  };
  const Step steps[] = {{0, 1.0}, {1, 2.0}, {0, kNaN},  {0, kInf}, {0, 3.0},
                        {1, 1.0}, {0, 1.0}, {0, -kInf}, {1, kNaN}, {0, 0.5}};
  Tensor tracker = ctx_.Zeros({4}, DType::kF64);
  Tensor ref = Tensor::Zeros({4}, DType::kF64);
  int64_t number = 0;
  for (const Step& s : steps) {
    ++number;
    const Tensor flag = Tensor::FromVector({1}, {static_cast<double>(s.flag)}, DType::kI32);
    const Tensor loss = Tensor::FromVector({1}, {s.loss}, DType::kF64);
    ops::TrackNonFinite(ctx_, Dev(flag), Dev(loss), number, tracker);
    ops::TrackNonFinite(cpu_, flag, loss, number, ref);
    EXPECT_TRUE(testing::BitwiseEqual(Host(tracker), ref))
        << "step " << number << ": got " << Host(tracker).At(0) << " " << Host(tracker).At(1) << " "
        << Host(tracker).At(2) << " " << Host(tracker).At(3);
  }
  EXPECT_EQ(ref.ToVector(), (std::vector<double>{6, 0, 2, 3}));
  ExpectOk();
}

}  // namespace
}  // namespace scalemoe
