// GPU test: the grouped GEMMs (ops::GroupedGemm, ops::GroupedGemmWeightGrad)
// against the CPU reference on fresh Philox data: the forward x·W_gᵀ, the
// backward d_y·W_g and the weight gradient d_y_gᵀ·x_g; f32 (exact SIMT),
// f64, bf16 -> bf16 and bf16 -> f32 (tensor cores when the feature dims are
// multiples of 8, the SIMT kernel when not); edge shapes: one row in all,
// groups without rows (first, middle, last), row counts not a multiple of
// either kernel's tile, 64 groups, rows outside every group (left
// untouched), several tiles each way, beta = 0 on NaN-poisoned outputs and beta = 1 accumulation
// (weight gradients: into outputs off 16-byte alignment).
// References: f64 math on the same inputs (bf16 -> bf16: the CPU bf16 path).
// Every case also runs twice: the same bits. The gathered ops (the rows of
// the row-stacked operand read through an index) give the bits of the
// gathered copy's products. The binary is registered five
// times (tests/core/CMakeLists.txt): the default kernels (on sm_90 all three
// products on the persistent warp-specialized wgmma kernel, with K-major and
// MN-major shared tiles, 128 x 256 or 128 x 128 output tiles by the output's
// width, its epilogue through shared memory), the same storing straight from
// the registers (SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct), the block-per-tile wgmma kernel
// (SCALEMOE_GROUPED_GEMM=tile; stores through shared memory where c's rows are 16-byte aligned),
// the same storing straight from the registers (SCALEMOE_GROUPED_GEMM_EPILOGUE=direct), and
// everything on mma.sync (SCALEMOE_GROUPED_GEMM=mma).
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/cuda/grouped_gemm.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::BitwiseEqual;
using testing::CudaOpTest;
using testing::ExpectParity;
using testing::F64;
using testing::RandomHost;

using DTypes = testing::GemmDTypes;
using testing::kGemmDTypes;

struct Case {
  std::string name;
  std::vector<int64_t> counts;  // rows per group
  int64_t n, k;                 // feature dims
  int64_t lead = 0, tail = 0;   // rows before the first group / after the last
};

std::vector<Case> Cases() {
  std::vector<int64_t> many(64);
  for (int g = 0; g < 64; ++g) many[g] = (g * 37) % 23;  // zeros among them
  // Weight gradients of more output tiles than twice an H200's 132 SMs, so
  // that every persistent block walks several, some an odd number, its ring
  // wrapping across tiles: 100 groups of 0 to 70 rows (reductions
  // of 0, 1 and 2 k steps; 500 tiles of 64 x 256), and 80 of 0 to 149 (up
  // to 3 k steps; 320 tiles of 64 x 128). The forward x·Wᵀ has 212 and
  // 132 tiles of 64 rows.
  std::vector<int64_t> tiles_wide(100), tiles_narrow(80);
  for (int g = 0; g < 100; ++g) tiles_wide[g] = (g * 37) % 71;
  for (int g = 0; g < 80; ++g) tiles_narrow[g] = (g * 53) % 150;
  return {
      {"one_row", {0, 1, 0}, 24, 16},
      {"empty_groups", {0, 200, 0, 77, 0}, 64, 48},
      {"not_tile_multiples", {129, 300, 65}, 136, 200},
      {"odd_dims", {31, 0, 45}, 20, 13},
      {"many_groups", many, 32, 40},
      {"rows_outside", {50, 70}, 40, 24, 7, 9},
      // Several tiles each way and a reduction longer than the tensor-core
      // kernel's ring of stages (4 x 32).
      {"large", {700, 0, 1030}, 264, 520},
      // Groups of 37 and 130 rows (and 1, 64) between empty ones, both
      // feature dims 8 past a multiple of the 128 tiles.
      {"ragged_groups", {0, 37, 130, 0, 1, 64, 0}, 264, 136, 3, 5},
      // Reductions longer than the wgmma kernel's rings (4 and 6 stages of
      // 64), into outputs at most 128 wide (its 128 x 128 tiles) and wider.
      {"long_reduction", {0, 900, 3}, 120, 1000},
      {"long_group_rows", {1100, 5}, 48, 112, 0, 2},
      // On sm_90 the warp-specialized kernel takes the reductions of 512
      // and more (x·Wᵀ over k above, d_y·W over n here; the weight
      // gradients always), the block-per-tile one the shorter ones: both in
      // one launch sequence, 8 past a multiple of the k step.
      {"both_wgmma_kernels", {300, 0, 517}, 520, 136, 4, 0},
      {"many_tiles_wide", tiles_wide, 264, 136},
      {"many_tiles_narrow", tiles_narrow, 200, 120, 5, 3},
      // ... and with reductions of 5 to 8 k steps, more than a ring of 4
      // stages, over several tiles a block: the weight gradient's 270
      // tiles of 64 x 256 (27 a group) give every block two or three.
      {"long_reductions_many_tiles", {260, 0, 333, 512, 300, 277, 450, 0, 389, 301}, 576, 768},
  };
}

std::vector<int64_t> Offsets(const Case& c) {
  std::vector<int64_t> off{c.lead};
  for (int64_t n : c.counts) off.push_back(off.back() + n);
  return off;
}

Tensor OffsetsTensor(const std::vector<int64_t>& off) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(off.size())}, DType::kI64);
  for (size_t i = 0; i < off.size(); ++i) t.data<int64_t>()[i] = off[i];
  return t;
}

class CudaGroupedGemmTest : public CudaOpTest {
 protected:
  // G random host matrices [rows, cols].
  std::vector<Tensor> RandomMatrices(int64_t g, int64_t rows, int64_t cols, DType dtype,
                                     uint64_t seed) {
    std::vector<Tensor> out;
    for (int64_t i = 0; i < g; ++i) out.push_back(RandomHost({rows, cols}, dtype, seed, 100 + i));
    return out;
  }
  std::vector<Tensor> Devs(const std::vector<Tensor>& hosts) {
    std::vector<Tensor> out;
    for (const Tensor& h : hosts) out.push_back(Dev(h));
    return out;
  }
  // The CPU reference's inputs: f64 copies (bf16 -> bf16: the CPU bf16 path);
  // always a new tensor, so that an output the reference accumulates into
  // leaves the GPU's starting values alone.
  Tensor Ref(const Tensor& host, DTypes d) {
    return d.out == DType::kBF16 || host.dtype() == DType::kF64 ? host.Clone() : F64(host);
  }

  // c = a x op(b_g) on rows of each group; c starts random (beta = 1) or
  // NaN-poisoned (beta = 0, rows outside the groups then stay NaN).
  void CheckForward(const Case& c, DTypes d, ops::Trans trans, double beta, uint64_t seed) {
    const std::vector<int64_t> off = Offsets(c);
    const int64_t g = static_cast<int64_t>(c.counts.size()), m = off.back() + c.tail;
    // Forward: a [M, K], b_g [N, K]; backward's d_x: a [M, N], b_g [N, K] -> c [M, K].
    const bool t = trans == ops::Trans::kYes;
    const int64_t in = t ? c.k : c.n, out = t ? c.n : c.k;
    const Tensor a = RandomHost({m, in}, d.in, seed, 1);
    const std::vector<Tensor> b = RandomMatrices(g, c.n, c.k, d.in, seed);
    const Tensor c0 = RandomHost({m, out}, d.out, seed, 2);
    const Tensor offsets = OffsetsTensor(off);

    std::vector<Tensor> b_ref;
    for (const Tensor& x : b) b_ref.push_back(Ref(x, d));
    Tensor c_ref = Ref(c0, d);
    ops::GroupedGemm(cpu_, Ref(a, d), ops::MakeMatrixGroup(cpu_, b_ref), offsets, c_ref,
                     {.trans_b = trans, .beta = beta});

    Tensor got[2];
    for (Tensor& out_t : got) {
      const Tensor c_dev = beta == 0 ? Poisoned({m, out}, d.out) : Dev(c0);
      ops::GroupedGemm(ctx_, Dev(a), ops::MakeMatrixGroup(ctx_, Devs(b)), Dev(offsets), c_dev,
                       {.trans_b = trans, .beta = beta});
      out_t = Host(c_dev);
    }
    const std::string what = absl::StrCat(c.name, t ? " x·Wᵀ" : " d_y·W", " ", DTypeName(d.in),
                                          "->", DTypeName(d.out), " beta ", beta);
    EXPECT_TRUE(BitwiseEqual(got[0], got[1])) << what << ": two runs differ";
    // Rows outside every group: untouched (NaN when poisoned).
    const int64_t inside = off.back() - off.front();
    const Tensor got_in = got[0].Narrow(0, off.front(), inside).Clone();
    const Tensor ref_in = c_ref.Narrow(0, off.front(), inside).Clone();
    ExpectParity(got_in, ref_in, testing::GemmTolerance(d), what);
    for (int64_t r : {int64_t{0}, m - 1}) {
      if (r >= off.front() && r < off.back()) continue;
      for (int64_t j = 0; j < out; ++j) {
        const double v = got[0].Narrow(0, r, 1).Clone().At(j);
        if (beta == 0) {
          EXPECT_TRUE(std::isnan(v)) << what << ": row " << r << " outside the groups written";
        } else {
          EXPECT_EQ(v, c0.Narrow(0, r, 1).Clone().At(j)) << what << ": row " << r;
        }
      }
    }
  }

  // The gathered ops against GatherRows then the plain op on the GPU, bit
  // for bit: x [T, K] (T source rows), rows [M] a shuffle of the slots
  // t·divisor + j inside the groups (the MoE's permutation) and -1 outside.
  // Forward c = gather(x)·W_gᵀ [M, N]; weight gradient c_g = d_gᵀ·gather(x)_g.
  void CheckGathered(const Case& c, DTypes d, int divisor, double beta, uint64_t seed) {
    const std::vector<int64_t> off = Offsets(c);
    const int64_t g = static_cast<int64_t>(c.counts.size()), m = off.back() + c.tail;
    const int64_t tokens = std::max<int64_t>(1, (m + divisor - 1) / divisor);
    std::vector<int32_t> slots(tokens * divisor);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937_64(seed));
    Tensor rows = Tensor::Empty({m}, DType::kI32);
    for (int64_t i = 0; i < m; ++i) {
      const bool inside = i >= off.front() && i < off.back();
      rows.data<int32_t>()[i] = inside ? slots[i - off.front()] : -1;
    }
    const Tensor x = Dev(RandomHost({tokens, c.k}, d.in, seed, 1));
    const Tensor rows_dev = Dev(rows), offsets = Dev(OffsetsTensor(off));
    const Tensor gathered = ctx_.Empty({m, c.k}, d.in);
    ops::GatherRows(ctx_, x, rows_dev, divisor, gathered);
    const std::string what = absl::StrCat(c.name, " gathered by ", divisor, " ", DTypeName(d.in),
                                          "->", DTypeName(d.out), " beta ", beta);

    const ops::MatrixGroup w =
        ops::MakeMatrixGroup(ctx_, Devs(RandomMatrices(g, c.n, c.k, d.in, seed)));
    const Tensor c0 = RandomHost({m, c.n}, d.out, seed, 2);
    const Tensor fused = beta == 0 ? Poisoned({m, c.n}, d.out) : Dev(c0);
    const Tensor plain = beta == 0 ? Poisoned({m, c.n}, d.out) : Dev(c0);
    const ops::GroupedGemmOptions xwt{.trans_b = ops::Trans::kYes, .beta = beta};
    ops::GroupedGemmGathered(ctx_, x, rows_dev, divisor, w, offsets, fused, xwt);
    ops::GroupedGemm(ctx_, gathered, w, offsets, plain, xwt);
    EXPECT_TRUE(BitwiseEqual(Host(fused), Host(plain))) << what << ": x·Wᵀ";

    const Tensor d_y = Dev(RandomHost({m, c.n}, d.in, seed, 3));
    const std::vector<Tensor> g0 = RandomMatrices(g, c.n, c.k, d.out, seed + 1);
    std::vector<Tensor> grads[2];  // fused, plain
    for (std::vector<Tensor>& out : grads) {
      for (const Tensor& t : g0) out.push_back(beta == 0 ? Poisoned(t.shape(), d.out) : Dev(t));
    }
    ops::GroupedGemmWeightGradGathered(ctx_, d_y, x, rows_dev, divisor, offsets,
                                       ops::MakeMatrixGroup(ctx_, grads[0]), beta);
    ops::GroupedGemmWeightGrad(ctx_, d_y, gathered, offsets, ops::MakeMatrixGroup(ctx_, grads[1]),
                               beta);
    for (int64_t i = 0; i < g; ++i) {
      EXPECT_TRUE(BitwiseEqual(Host(grads[0][i]), Host(grads[1][i])))
          << what << ": weight grad group " << i << " (" << c.counts[i] << " rows)";
    }
  }

  // GroupedGemmSwiGlu against GroupedGemm (or GroupedGemmGathered) then
  // SwiGluPacked, bit for bit: the experts' stacked [2F, C] weights, every
  // row in a group; gathered through a shuffled top-2 permutation or not.
  void CheckSwiGlu(const std::vector<int64_t>& counts, int64_t f, int64_t c_in, bool gathered,
                   uint64_t seed) {
    std::vector<int64_t> off{0};
    for (int64_t n : counts) off.push_back(off.back() + n);
    const int64_t g = static_cast<int64_t>(counts.size()), m = off.back();
    const std::string what =
        absl::StrCat("F ", f, " C ", c_in, " rows ", m, gathered ? " gathered" : "");
    const int divisor = 2;
    const int64_t tokens = std::max<int64_t>(1, (m + divisor - 1) / divisor);
    std::vector<int32_t> slots(tokens * divisor);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), std::mt19937_64(seed));
    Tensor rows = Tensor::Empty({m}, DType::kI32);
    std::copy(slots.begin(), slots.begin() + m, rows.data<int32_t>());
    const Tensor x = Dev(RandomHost({gathered ? tokens : m, c_in}, DType::kBF16, seed, 1));
    const Tensor rows_dev = gathered ? Dev(rows) : Tensor(), offsets = Dev(OffsetsTensor(off));
    const ops::MatrixGroup w =
        ops::MakeMatrixGroup(ctx_, Devs(RandomMatrices(g, 2 * f, c_in, DType::kBF16, seed)));
    const Tensor gate_up = Poisoned({m, 2 * f}, DType::kBF16), h = Poisoned({m, f}, DType::kBF16);
    ops::GroupedGemmSwiGlu(ctx_, x, rows_dev, divisor, w, offsets, gate_up, h);
    const Tensor gate_up_ref = Poisoned({m, 2 * f}, DType::kBF16);
    const Tensor h_ref = Poisoned({m, f}, DType::kBF16);
    const ops::GroupedGemmOptions xwt{.trans_b = ops::Trans::kYes};
    if (gathered) {
      ops::GroupedGemmGathered(ctx_, x, rows_dev, divisor, w, offsets, gate_up_ref, xwt);
    } else {
      ops::GroupedGemm(ctx_, x, w, offsets, gate_up_ref, xwt);
    }
    ops::SwiGluPacked(ctx_, gate_up_ref, h_ref);
    EXPECT_TRUE(BitwiseEqual(Host(gate_up), Host(gate_up_ref))) << what << ": gate_up";
    EXPECT_TRUE(BitwiseEqual(Host(h), Host(h_ref))) << what << ": h";
    // The backward through the down projection (W_g [C, F]) from this
    // gate_up, against the product into d_h then SwiGluPackedBackward.
    if (gathered) return;
    const Tensor d_y = Dev(RandomHost({m, c_in}, DType::kBF16, seed, 4));
    const ops::MatrixGroup w_down =
        ops::MakeMatrixGroup(ctx_, Devs(RandomMatrices(g, c_in, f, DType::kBF16, seed + 1)));
    const Tensor d_gate_up = Poisoned({m, 2 * f}, DType::kBF16);
    ops::GroupedGemmSwiGluBackward(ctx_, d_y, w_down, offsets, gate_up_ref, d_gate_up);
    const Tensor d_h = Poisoned({m, f}, DType::kBF16);
    const Tensor d_gate_up_ref = Poisoned({m, 2 * f}, DType::kBF16);
    ops::GroupedGemm(ctx_, d_y, w_down, offsets, d_h, {.trans_b = ops::Trans::kNo});
    ops::SwiGluPackedBackward(ctx_, gate_up_ref, d_h, d_gate_up_ref);
    EXPECT_TRUE(BitwiseEqual(Host(d_gate_up), Host(d_gate_up_ref))) << what << ": d_gate_up";
  }

  // c_g = a_gᵀ b_g (+ beta c_g): a [M, N], b [M, K], c_g [N, K].
  void CheckWeightGrad(const Case& c, DTypes d, double beta, uint64_t seed) {
    const std::vector<int64_t> off = Offsets(c);
    const int64_t g = static_cast<int64_t>(c.counts.size()), m = off.back() + c.tail;
    const Tensor a = RandomHost({m, c.n}, d.in, seed, 1);
    const Tensor b = RandomHost({m, c.k}, d.in, seed, 2);
    const std::vector<Tensor> c0 = RandomMatrices(g, c.n, c.k, d.out, seed + 1);
    const Tensor offsets = OffsetsTensor(off);

    std::vector<Tensor> c_ref;
    for (const Tensor& x : c0) c_ref.push_back(Ref(x, d));
    ops::GroupedGemmWeightGrad(cpu_, Ref(a, d), Ref(b, d), offsets,
                               ops::MakeMatrixGroup(cpu_, c_ref), beta);
    std::vector<Tensor> got[2];
    for (auto& out : got) {
      // Accumulating outputs packed one element off 16-byte alignment (as
      // gradients are behind a scalar β); overwritten ones NaN-poisoned.
      std::vector<Tensor> c_dev;
      const int64_t nk = c.n * c.k;
      const Tensor packed = ctx_.Empty({g * nk + 1}, d.out);
      for (int64_t i = 0; i < g; ++i) {
        if (beta == 0) {
          c_dev.push_back(Poisoned(c0[i].shape(), d.out));
        } else {
          c_dev.push_back(packed.Narrow(0, 1 + i * nk, nk).View({c.n, c.k}));
          c_dev.back().CopyFrom(c0[i]);
        }
      }
      ops::GroupedGemmWeightGrad(ctx_, Dev(a), Dev(b), Dev(offsets),
                                 ops::MakeMatrixGroup(ctx_, c_dev), beta);
      for (const Tensor& x : c_dev) out.push_back(Host(x));
    }
    for (int64_t i = 0; i < g; ++i) {
      const std::string what =
          absl::StrCat(c.name, " weight grad group ", i, " (", c.counts[i], " rows) ",
                       DTypeName(d.in), "->", DTypeName(d.out), " beta ", beta);
      EXPECT_TRUE(BitwiseEqual(got[0][i], got[1][i])) << what << ": two runs differ";
      ExpectParity(got[0][i], c_ref[i], testing::GemmTolerance(d), what);
    }
  }
};

TEST_F(CudaGroupedGemmTest, ForwardMatchesCpu) {
  uint64_t seed = 1000;
  for (const Case& c : Cases()) {
    for (DTypes d : kGemmDTypes) {
      for (double beta : {0.0, 1.0}) CheckForward(c, d, ops::Trans::kYes, beta, ++seed);
    }
  }
}

TEST_F(CudaGroupedGemmTest, BackwardDataMatchesCpu) {
  uint64_t seed = 2000;
  for (const Case& c : Cases()) {
    for (DTypes d : kGemmDTypes) {
      for (double beta : {0.0, 1.0}) CheckForward(c, d, ops::Trans::kNo, beta, ++seed);
    }
  }
}

TEST_F(CudaGroupedGemmTest, WeightGradMatchesCpu) {
  uint64_t seed = 3000;
  for (const Case& c : Cases()) {
    for (DTypes d : kGemmDTypes) {
      for (double beta : {0.0, 1.0}) CheckWeightGrad(c, d, beta, ++seed);
    }
  }
}

// The permutation read by the grouped GEMMs (ops::GroupedGemmGathered,
// ops::GroupedGemmWeightGradGathered: moe.fuse_permute) gives the bits of
// the gathered copy's products, for the MoE's top-k of 2 and 8. Under the
// default kernels on a wgmma device the kernel's loads must gather (not a
// copy first); the other registrations check the copy path.
TEST_F(CudaGroupedGemmTest, GatheredEqualsGatherThenPlain) {
  const bool defaults = std::getenv("SCALEMOE_GROUPED_GEMM") == nullptr &&
                        std::getenv("SCALEMOE_GROUPED_GEMM_WS_EPILOGUE") == nullptr;
  if (defaults && cuda::GroupedGemmOnWgmma()) {
    EXPECT_TRUE(cuda::GroupedGemmGathersInLoads())
        << "the wgmma kernels run but the gathered ops copy first";
  }
  std::cout << "gathered ops: "
            << (cuda::GroupedGemmGathersInLoads() ? "in the kernel's loads" : "a copy first")
            << "\n";
  uint64_t seed = 4000;
  for (const Case& c : Cases()) {
    for (DTypes d : kGemmDTypes) {
      for (int divisor : {2, 8}) {
        for (double beta : {0.0, 1.0}) CheckGathered(c, d, divisor, beta, ++seed);
      }
    }
  }
}

// The experts' gate|up forward with SwiGLU in the grouped kernel's epilogue
// (ops::GroupedGemmSwiGlu, moe.fuse_swiglu): the bits of GroupedGemm then
// SwiGluPacked, and its backward through the down projection
// (ops::GroupedGemmSwiGluBackward) the bits of the product into d_h then
// SwiGluPackedBackward, for the presets' F (1280, 256), F = 128 (one tile
// pair; the backward on 128-wide tiles), and F = 40 and 200 (not multiples
// of 128: the forward's two ops; the backward's tile edges), gathered or not, over
// groups of uneven rows (empty ones among them) and enough tiles that every
// persistent block walks several. Under the default kernels on a wgmma
// device the epilogue must compute h.
TEST_F(CudaGroupedGemmTest, SwiGluEqualsGemmThenSwiGluPacked) {
  const bool defaults = std::getenv("SCALEMOE_GROUPED_GEMM") == nullptr &&
                        std::getenv("SCALEMOE_GROUPED_GEMM_WS_EPILOGUE") == nullptr;
  if (defaults && cuda::GroupedGemmOnWgmma()) {
    EXPECT_TRUE(cuda::GroupedGemmSwiGluInEpilogue())
        << "the wgmma kernels run but SwiGLU runs as a second op";
    EXPECT_TRUE(cuda::GroupedGemmSwiGluGradInEpilogue())
        << "the wgmma kernels run but SwiGLU's backward runs as a second op";
  }
  std::cout << "gate|up SwiGLU: "
            << (cuda::GroupedGemmSwiGluInEpilogue() ? "in the epilogue" : "a second op") << "\n";
  std::vector<int64_t> uneven(40);
  for (int g = 0; g < 40; ++g) uneven[g] = (g * 37) % 300;  // zeros among them
  uint64_t seed = 5000;
  for (const bool gathered : {false, true}) {
    CheckSwiGlu({1, 0, 129, 300}, 1280, 768, gathered, ++seed);
    CheckSwiGlu(uneven, 256, 768, gathered, ++seed);
    CheckSwiGlu({64, 0, 200}, 128, 136, gathered, ++seed);
    CheckSwiGlu({70, 3}, 40, 64, gathered, ++seed);
    CheckSwiGlu({130, 0, 5}, 200, 96, gathered, ++seed);
  }
}

}  // namespace
}  // namespace scalemoe
