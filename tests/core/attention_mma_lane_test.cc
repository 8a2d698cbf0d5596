// CPU test of core/cuda/attention_mma_lane.h, the lane math of the mma.sync
// attention kernels (core/cuda/causal_attention_mma.cu): a warp of 32 lanes
// is simulated with ldmatrix and mma.m16n8k16 written here from the PTX ISA
// text (not from the header), then the header's maps must give
// - the fragment layouts of the PTX tables, each a bijection;
// - ldmatrix addresses that load the A and B fragments the kernels mean;
// - a 16 x 64 · 64 x 16 (and x 64) tile product equal to a plain matmul;
// - C -> A repacking equal to the 16 x 16 block it stands for, and P V
//   through it equal to a plain matmul;
// - the online softmax over several key tiles (quad reductions by xor 1, 2)
//   equal to a direct softmax, lse included, causal and T masks applied;
// - one warp of the d_k/d_v pass (Sᵀ, per-column statistics) and of the d_q
//   pass equal to direct sums, on and off the diagonal, past T;
// - masks: only diagonal tiles need one, for T = 1 ... 1024.
// Values are small integers where products must be exact.
#include "core/cuda/attention_mma_lane.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace scalemoe::cuda::mma_lane {
namespace {

constexpr int kLanes = 32;

// ---------------------------------------------------------------- PTX, transcribed
// Lane t, g = t / 4, q = t % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16").
int PtxARow(int t, int r) { return t / 4 + ((r == 1 || r == 3) ? 8 : 0); }
int PtxACol(int t, int r, int h) { return (t % 4) * 2 + h + ((r >= 2) ? 8 : 0); }
int PtxBRow(int t, int r, int h) { return (t % 4) * 2 + h + ((r >= 1) ? 8 : 0); }
int PtxBCol(int t) { return t / 4; }
int PtxCRow(int t, int i) { return t / 4 + ((i >= 2) ? 8 : 0); }
int PtxCCol(int t, int i) { return (t % 4) * 2 + (i & 1); }

// A warp's registers: bf16 halves kept as float (positions, not rounding).
using RegsA = std::vector<std::array<std::array<float, 2>, 4>>;  // [lane][reg][half]
using RegsC = std::vector<std::array<float, 4>>;                 // [lane][element]

// ldmatrix.x4 (PTX "ldmatrix"): lane t gives the row address (an element
// offset into mem) of row t % 8 of matrix t / 8. Register j of lane t:
// matrix j's row t / 4, columns 2 (t % 4) + h; .trans: rows 2 (t % 4) + h,
// column t / 4.
RegsA LdMatrixX4(const std::vector<float>& mem, const std::vector<int>& offset, bool trans) {
  RegsA out(kLanes);
  for (int t = 0; t < kLanes; ++t) {
    for (int j = 0; j < 4; ++j) {
      for (int h = 0; h < 2; ++h) {
        out[t][j][h] = trans ? mem[offset[8 * j + 2 * (t % 4) + h] + t / 4]
                             : mem[offset[8 * j + t / 4] + 2 * (t % 4) + h];
      }
    }
  }
  return out;
}

template <typename F>
std::vector<int> Offsets(F&& offset_of_lane) {
  std::vector<int> o(kLanes);
  for (int t = 0; t < kLanes; ++t) o[t] = offset_of_lane(t);
  return o;
}

// mma.m16n8k16: c += A B with A from a (registers 0-3) and B from b
// registers b_first, b_first + 1 (one n8 block of an x4 B load).
void Mma(RegsC& c, const RegsA& a, const RegsA& b, int b_first) {
  float A[16][16], B[16][8];
  for (int t = 0; t < kLanes; ++t) {
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) A[PtxARow(t, r)][PtxACol(t, r, h)] = a[t][r][h];
    }
    for (int r = 0; r < 2; ++r) {
      for (int h = 0; h < 2; ++h) B[PtxBRow(t, r, h)][PtxBCol(t)] = b[t][b_first + r][h];
    }
  }
  for (int t = 0; t < kLanes; ++t) {
    for (int i = 0; i < 4; ++i) {
      float sum = 0;
      for (int kk = 0; kk < 16; ++kk) sum += A[PtxCRow(t, i)][kk] * B[kk][PtxCCol(t, i)];
      c[t][i] += sum;
    }
  }
}

// The A fragment of k16 block kb from a lane's n8 C blocks, by the header.
RegsA CToARegs(const std::vector<RegsC>& c, int kb) {
  RegsA a(kLanes);
  for (int t = 0; t < kLanes; ++t) {
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) a[t][r][h] = c[2 * kb + CToABlock(r)][t][CToAElem(r, h)];
    }
  }
  return a;
}

// Quad all-reduce as the kernels do it: xor 1, then xor 2.
void QuadReduce(std::vector<float>& v, bool max) {
  for (int step = 0; step < kQuadSteps; ++step) {
    std::vector<float> next(kLanes);
    for (int t = 0; t < kLanes; ++t) {
      const float other = v[QuadPartner(t, step)];
      next[t] = max ? std::fmax(v[t], other) : v[t] + other;
    }
    v = next;
  }
}

// A row-major matrix of small integers in [-3, 3].
std::vector<float> SmallInts(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> m(n);
  for (float& x : m) x = static_cast<float>(dist(rng));
  return m;
}

// ---------------------------------------------------------------- tests

TEST(AttentionMmaLaneTest, FragmentMapsMatchThePtxTables) {
  std::set<std::pair<int, int>> a, b, c;
  for (int t = 0; t < kLanes; ++t) {
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(ARow(t, r), PtxARow(t, r)) << t << " " << r;
      for (int h = 0; h < 2; ++h) {
        EXPECT_EQ(ACol(t, r, h), PtxACol(t, r, h)) << t << " " << r << " " << h;
        a.insert({ARow(t, r), ACol(t, r, h)});
      }
    }
    for (int r = 0; r < 2; ++r) {
      for (int h = 0; h < 2; ++h) {
        EXPECT_EQ(BRow(t, r, h), PtxBRow(t, r, h));
        b.insert({BRow(t, r, h), BCol(t)});
      }
    }
    EXPECT_EQ(BCol(t), PtxBCol(t));
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(CRow(t, i), PtxCRow(t, i)) << t << " " << i;
      EXPECT_EQ(CCol(t, i), PtxCCol(t, i)) << t << " " << i;
      EXPECT_EQ(CRow(t, i), t / 4 + 8 * CHalf(i));
      c.insert({CRow(t, i), CCol(t, i)});
    }
  }
  // 32 lanes x 8 halves cover 16 x 16 of A, 4 x 32 cover 16 x 8 of B and C.
  EXPECT_EQ(a.size(), 256u);
  EXPECT_EQ(b.size(), 128u);
  EXPECT_EQ(c.size(), 128u);
  // Two spot values from the PTX figures: lane 5 (g 1, q 1).
  EXPECT_EQ(CRow(5, 3), 9);
  EXPECT_EQ(CCol(5, 3), 3);
  EXPECT_EQ(ACol(5, 2, 1), 11);
  EXPECT_EQ(BRow(5, 1, 0), 10);
}

TEST(AttentionMmaLaneTest, QuadPartnersShareTheRows) {
  for (int t = 0; t < kLanes; ++t) {
    for (int step = 0; step < kQuadSteps; ++step) {
      const int p = QuadPartner(t, step);
      EXPECT_NE(p, t);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(CRow(p, i), CRow(t, i));
    }
  }
  // After the reduction every lane holds its quad's total.
  std::vector<float> v(kLanes);
  for (int t = 0; t < kLanes; ++t) v[t] = static_cast<float>(t * t);
  QuadReduce(v, /*max=*/false);
  for (int t = 0; t < kLanes; ++t) {
    float want = 0;
    for (int u = 4 * (t / 4); u < 4 * (t / 4) + 4; ++u) want += static_cast<float>(u * u);
    EXPECT_EQ(v[t], want) << t;
  }
}

// Each loader, pointed at a block away from the tile's origin, gives the
// fragment of that block.
TEST(AttentionMmaLaneTest, LdMatrixAddressesLoadTheFragments) {
  constexpr int kLd = 72, kRows = 64;
  std::vector<float> mem(kRows * kLd);
  for (int i = 0; i < kRows * kLd; ++i) mem[i] = static_cast<float>(i);
  const int m0 = 16, k0 = 32, n0 = 40;
  // A(m, k) = tile[m][k].
  const RegsA a = LdMatrixX4(mem, Offsets([&](int t) { return LdOffsetA(t, kLd, m0, k0); }), false);
  // B(k, n) = tile[n][k] (K rows as the n side), no .trans.
  const RegsA bk =
      LdMatrixX4(mem, Offsets([&](int t) { return LdOffsetBKMajor(t, kLd, n0, k0); }), false);
  // B(k, n) = tile[k][n] (V rows as the k side), .trans.
  const RegsA bn =
      LdMatrixX4(mem, Offsets([&](int t) { return LdOffsetBNMajor(t, kLd, n0, k0); }), true);
  for (int t = 0; t < kLanes; ++t) {
    for (int h = 0; h < 2; ++h) {
      for (int r = 0; r < 4; ++r) {
        EXPECT_EQ(a[t][r][h], mem[(m0 + PtxARow(t, r)) * kLd + k0 + PtxACol(t, r, h)]);
        // Registers 0-1: n8 block n0, 2-3: block n0 + 8.
        const int n = n0 + PtxBCol(t) + 8 * (r / 2), kk = k0 + PtxBRow(t, r % 2, h);
        EXPECT_EQ(bk[t][r][h], mem[n * kLd + kk]) << t << " " << r << " " << h;
        EXPECT_EQ(bn[t][r][h], mem[kk * kLd + n]) << t << " " << r << " " << h;
      }
    }
  }
}

// S = Q Kᵀ for a warp's 16 queries (rows 16-31 of a 64-row Q tile) and 64
// keys over head dim 64, the forward's loop: k16 blocks outer, key n16
// blocks inner.
TEST(AttentionMmaLaneTest, WarpTileProductMatchesMatmul) {
  constexpr int kD = 64, kLd = kD + 8, kKeys = 64, kWarpRow = 16;
  const std::vector<float> q = SmallInts(64 * kLd, 1), k = SmallInts(kKeys * kLd, 2);
  std::vector<RegsC> s(kKeys / 8, RegsC(kLanes, {0, 0, 0, 0}));
  for (int kk = 0; kk < kD / 16; ++kk) {
    const RegsA qa =
        LdMatrixX4(q, Offsets([&](int t) { return LdOffsetA(t, kLd, kWarpRow, kk * 16); }), false);
    for (int nb = 0; nb < kKeys / 16; ++nb) {
      const RegsA kb = LdMatrixX4(
          k, Offsets([&](int t) { return LdOffsetBKMajor(t, kLd, nb * 16, kk * 16); }), false);
      Mma(s[2 * nb], qa, kb, 0);
      Mma(s[2 * nb + 1], qa, kb, 2);
    }
  }
  for (int j = 0; j < kKeys / 8; ++j) {
    for (int t = 0; t < kLanes; ++t) {
      for (int i = 0; i < 4; ++i) {
        const int row = kWarpRow + CRow(t, i), key = 8 * j + CCol(t, i);
        float want = 0;
        for (int c = 0; c < kD; ++c) want += q[row * kLd + c] * k[key * kLd + c];
        EXPECT_EQ(s[j][t][i], want) << "row " << row << " key " << key;
      }
    }
  }
}

// C fragments of a 16 x 64 P repack into the A fragments of its four
// 16 x 16 blocks, and P V through them (V read with .trans) is a matmul.
TEST(AttentionMmaLaneTest, CToARepackingFeedsPV) {
  constexpr int kKeys = 64, kD = 64, kLd = kD + 8;
  const std::vector<float> p = SmallInts(16 * kKeys, 3), v = SmallInts(kKeys * kLd, 4);
  std::vector<RegsC> pc(kKeys / 8, RegsC(kLanes));
  for (int j = 0; j < kKeys / 8; ++j) {
    for (int t = 0; t < kLanes; ++t) {
      for (int i = 0; i < 4; ++i) pc[j][t][i] = p[PtxCRow(t, i) * kKeys + 8 * j + PtxCCol(t, i)];
    }
  }
  std::vector<RegsC> o(kD / 8, RegsC(kLanes, {0, 0, 0, 0}));
  for (int kb = 0; kb < kKeys / 16; ++kb) {
    const RegsA pa = CToARegs(pc, kb);
    for (int t = 0; t < kLanes; ++t) {
      for (int r = 0; r < 4; ++r) {
        for (int h = 0; h < 2; ++h) {
          ASSERT_EQ(pa[t][r][h], p[PtxARow(t, r) * kKeys + 16 * kb + PtxACol(t, r, h)])
              << "kb " << kb << " lane " << t << " reg " << r << " half " << h;
        }
      }
    }
    for (int nb = 0; nb < kD / 16; ++nb) {
      const RegsA vb = LdMatrixX4(
          v, Offsets([&](int t) { return LdOffsetBNMajor(t, kLd, nb * 16, kb * 16); }), true);
      Mma(o[2 * nb], pa, vb, 0);
      Mma(o[2 * nb + 1], pa, vb, 2);
    }
  }
  for (int n = 0; n < kD / 8; ++n) {
    for (int t = 0; t < kLanes; ++t) {
      for (int i = 0; i < 4; ++i) {
        const int row = CRow(t, i), col = 8 * n + CCol(t, i);
        float want = 0;
        for (int key = 0; key < kKeys; ++key) want += p[row * kKeys + key] * v[key * kLd + col];
        EXPECT_EQ(o[n][t][i], want) << "row " << row << " col " << col;
      }
    }
  }
}

// The forward's softmax for one warp's 16 queries (first query row0) over
// key tiles 0..query tile: raw scores straight into C fragments, the scale
// (log2 units) folded into the exponent,
// the kernel's step order, P V through C -> A; against a direct softmax in
// double over the visible keys.
void ExpectOnlineSoftmaxMatches(int64_t t_len, int64_t row0, uint32_t seed) {
  constexpr int kTile = 64, kN8 = kTile / 8, kD = 16, kLd = kD + 8;
  constexpr float kScale = 0.3f;  // log2 units, as the kernels' scale_log2
  const int query_tile = static_cast<int>(row0 / kTile);
  const int keys = (query_tile + 1) * kTile;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> s_all(16 * keys), v(keys * kLd);
  for (float& x : s_all) x = normal(rng);
  for (float& x : v) x = normal(rng);

  std::vector<RegsC> o(kD / 8, RegsC(kLanes, {0, 0, 0, 0}));
  std::vector<std::array<float, 2>> m(kLanes, {-INFINITY, -INFINITY}), l(kLanes, {0, 0});
  for (int j = 0; j <= query_tile; ++j) {
    struct LaneScores {
      float v[kN8][4];
    };
    std::vector<LaneScores> s(kLanes);
    for (int t = 0; t < kLanes; ++t) {
      float(&st)[kN8][4] = s[t].v;
      for (int b = 0; b < kN8; ++b) {
        for (int i = 0; i < 4; ++i)
          st[b][i] = s_all[CRow(t, i) * keys + j * kTile + 8 * b + CCol(t, i)];
      }
      if (TileNeedsMask(query_tile, j)) MaskTile<false>(st, t, row0, int64_t{j} * kTile, t_len);
    }
    for (int half = 0; half < 2; ++half) {
      std::vector<float> mx(kLanes);
      for (int t = 0; t < kLanes; ++t) {
        mx[t] = LaneRowMax(s[t].v, half);
      }
      QuadReduce(mx, /*max=*/true);
      for (float& x : mx) x *= kScale;
      for (int t = 0; t < kLanes; ++t) {
        float(&st)[kN8][4] = s[t].v;
        const float factor = OnlineStep(m[t][half], l[t][half], mx[t]);
        l[t][half] += ExpRow(st, half, kScale, m[t][half]);
        for (auto& blk : o) {
          blk[t][2 * half] *= factor;
          blk[t][2 * half + 1] *= factor;
        }
      }
    }
    std::vector<RegsC> pc(kN8, RegsC(kLanes));
    for (int b = 0; b < kN8; ++b) {
      for (int t = 0; t < kLanes; ++t) {
        for (int i = 0; i < 4; ++i) pc[b][t][i] = s[t].v[b][i];
      }
    }
    for (int kb = 0; kb < kTile / 16; ++kb) {
      const RegsA pa = CToARegs(pc, kb);
      for (int nb = 0; nb < kD / 16; ++nb) {
        const RegsA vb = LdMatrixX4(v, Offsets([&](int t) {
                                      return LdOffsetBNMajor(t, kLd, nb * 16, j * kTile + kb * 16);
                                    }),
                                    true);
        Mma(o[2 * nb], pa, vb, 0);
        Mma(o[2 * nb + 1], pa, vb, 2);
      }
    }
  }
  std::vector<float> lsum[2];
  for (int half = 0; half < 2; ++half) {
    lsum[half].resize(kLanes);
    for (int t = 0; t < kLanes; ++t) lsum[half][t] = l[t][half];
    QuadReduce(lsum[half], /*max=*/false);
  }
  for (int t = 0; t < kLanes; ++t) {
    for (int i = 0; i < 4; ++i) {
      const int r = CRow(t, i), half = CHalf(i);
      const int64_t query = row0 + r;
      ASSERT_TRUE(std::isfinite(lsum[half][t]) && lsum[half][t] > 0) << "row " << query;
      if (query >= t_len) continue;  // not written by the kernel
      double mx = -INFINITY;
      for (int key = 0; key <= query; ++key) {
        mx = std::fmax(mx, double{kScale} * s_all[r * keys + key]);
      }
      double sum = 0;
      std::vector<double> want(kD, 0.0);
      for (int key = 0; key <= query; ++key) {
        const double p = std::exp2(double{kScale} * s_all[r * keys + key] - mx);
        sum += p;
        for (int c = 0; c < kD; ++c) want[c] += p * v[key * kLd + c];
      }
      const double lse2 = mx + std::log2(sum);
      EXPECT_NEAR(m[t][half] + std::log2(lsum[half][t]), lse2, 1e-4) << "row " << query;
      for (int n = 0; n < kD / 8; ++n) {
        const int c = 8 * n + CCol(t, i);
        EXPECT_NEAR(o[n][t][i] / lsum[half][t], want[c] / sum, 1e-4)
            << "row " << query << " col " << c;
      }
    }
  }
}

TEST(AttentionMmaLaneTest, OnlineSoftmaxMatchesDirectSoftmax) {
  ExpectOnlineSoftmaxMatches(1024, 176, 10);  // a warp inside the third tile: 3 key tiles
  ExpectOnlineSoftmaxMatches(200, 192, 11);   // the last tile, rows past T
  ExpectOnlineSoftmaxMatches(65, 64, 12);     // T = 65: one valid row in the second tile
  ExpectOnlineSoftmaxMatches(1, 0, 13);       // T = 1
  ExpectOnlineSoftmaxMatches(63, 48, 14);     // T = 63, the tile's last warp
}

// Tiles of the backward: 64 rows of head dim kBwdD at row stride kBwdLd,
// rows at or past T zero (as the kernels' LoadTile), and per-query
// statistics as the kernels' RowStats (lse·log2 e = +inf, D = 0 past T).
constexpr int kBwdTile = 64, kBwdD = 32, kBwdLd = kBwdD + 8;
struct BwdTile {
  std::vector<float> rows;  // [kBwdTile][kBwdLd]
  std::vector<float> lse2, di;
};
BwdTile MakeTile(std::mt19937& rng, int64_t first, int64_t t_len) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(1.0f, 3.0f);
  BwdTile tile{std::vector<float>(kBwdTile * kBwdLd, 0.0f), std::vector<float>(kBwdTile),
               std::vector<float>(kBwdTile)};
  for (int r = 0; r < kBwdTile; ++r) {
    const bool valid = first + r < t_len;
    for (int c = 0; c < kBwdD; ++c) tile.rows[r * kBwdLd + c] = valid ? normal(rng) : 0.0f;
    tile.lse2[r] = valid ? uniform(rng) : INFINITY;
    tile.di[r] = valid ? normal(rng) : 0.0f;
  }
  return tile;
}
double Dot(const std::vector<float>& a, int ra, const std::vector<float>& b, int rb) {
  double sum = 0;
  for (int c = 0; c < kBwdD; ++c) sum += double{a[ra * kBwdLd + c]} * b[rb * kBwdLd + c];
  return sum;
}
RegsA Load(const std::vector<float>& tile, bool trans, const std::function<int(int)>& offset) {
  return LdMatrixX4(tile, Offsets(offset), trans);
}
// A lane's kN8 C blocks as the kernels hold them (float[kN8][4]) and back.
struct Lane2 {
  float v[2][4];
};
std::vector<Lane2> ToLanes(const std::vector<RegsC>& c) {
  std::vector<Lane2> out(kLanes);
  for (int t = 0; t < kLanes; ++t) {
    for (int j = 0; j < 2; ++j) {
      for (int i = 0; i < 4; ++i) out[t].v[j][i] = c[j][t][i];
    }
  }
  return out;
}
std::vector<RegsC> FromLanes(const std::vector<Lane2>& lanes) {
  std::vector<RegsC> c(2, RegsC(kLanes));
  for (int t = 0; t < kLanes; ++t) {
    for (int j = 0; j < 2; ++j) {
      for (int i = 0; i < 4; ++i) c[j][t][i] = lanes[t].v[j][i];
    }
  }
  return c;
}
void ExpectNear(float got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 1e-4 * (1 + std::fabs(want))) << what;
}

// One warp of the d_k/d_v pass (keys warp·16.. of key tile kt, query tile
// qt, 16 queries at a time: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, per-column statistics,
// Pᵀ and dSᵀ repacked as A) against direct sums over the visible pairs.
void ExpectBackwardKvMatches(int64_t t_len, int kt, int qt, int warp, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "T " << t_len << " key tile " << kt << " query tile " << qt << " warp " << warp);
  std::mt19937 rng(seed);
  const int64_t k0 = int64_t{kt} * kBwdTile, t0 = int64_t{qt} * kBwdTile;
  const BwdTile k = MakeTile(rng, k0, t_len), v = MakeTile(rng, k0, t_len);
  const BwdTile q = MakeTile(rng, t0, t_len), d_out = MakeTile(rng, t0, t_len);
  const float scale_log2 = 0.3f;
  const int64_t key0 = k0 + warp * 16;
  std::vector<RegsC> dk(kBwdD / 8, RegsC(kLanes, {0, 0, 0, 0})), dv = dk;
  for (int c = 0; c < kBwdTile / 16; ++c) {
    std::vector<RegsC> st(2, RegsC(kLanes, {0, 0, 0, 0})), dpt = st;
    for (int kk = 0; kk < kBwdD / 16; ++kk) {
      auto a_at = [&](int t) { return LdOffsetA(t, kBwdLd, warp * 16, kk * 16); };
      auto b_at = [&](int t) { return LdOffsetBKMajor(t, kBwdLd, c * 16, kk * 16); };
      const RegsA ka = Load(k.rows, false, a_at), va = Load(v.rows, false, a_at);
      const RegsA qb = Load(q.rows, false, b_at), dob = Load(d_out.rows, false, b_at);
      Mma(st[0], ka, qb, 0);
      Mma(st[1], ka, qb, 2);
      Mma(dpt[0], va, dob, 0);
      Mma(dpt[1], va, dob, 2);
    }
    std::vector<Lane2> s = ToLanes(st), dp = ToLanes(dpt);
    for (int t = 0; t < kLanes; ++t) {
      if (TileNeedsMask(qt, kt)) MaskTile<true>(s[t].v, t, key0, t0 + c * 16, t_len);
      GradColumns(s[t].v, dp[t].v, scale_log2, t, c * 16, q.lse2.data(), q.di.data());
    }
    const RegsA pa = CToARegs(FromLanes(s), 0), dsa = CToARegs(FromLanes(dp), 0);
    for (int nb = 0; nb < kBwdD / 16; ++nb) {
      auto b_at = [&](int t) { return LdOffsetBNMajor(t, kBwdLd, nb * 16, c * 16); };
      const RegsA dob = Load(d_out.rows, true, b_at), qb = Load(q.rows, true, b_at);
      Mma(dv[2 * nb], pa, dob, 0);
      Mma(dv[2 * nb + 1], pa, dob, 2);
      Mma(dk[2 * nb], dsa, qb, 0);
      Mma(dk[2 * nb + 1], dsa, qb, 2);
    }
  }
  for (int t = 0; t < kLanes; ++t) {
    for (int i = 0; i < 4; ++i) {
      const int r = warp * 16 + CRow(t, i);  // the key's row in its tile
      if (k0 + r >= t_len) continue;         // not written by the kernel
      for (int n = 0; n < kBwdD / 8; ++n) {
        const int col = 8 * n + CCol(t, i);
        double want_dk = 0, want_dv = 0;
        for (int qi = 0; qi < kBwdTile; ++qi) {
          if (t0 + qi >= t_len || !Visible(k0 + r, t0 + qi, t_len)) continue;
          const double p = std::exp2(Dot(k.rows, r, q.rows, qi) * scale_log2 - q.lse2[qi]);
          const double ds = p * (Dot(v.rows, r, d_out.rows, qi) - q.di[qi]);
          want_dv += p * d_out.rows[qi * kBwdLd + col];
          want_dk += ds * q.rows[qi * kBwdLd + col];
        }
        const std::string at = "key " + std::to_string(k0 + r) + " col " + std::to_string(col);
        ExpectNear(dv[n][t][i], want_dv, "d_v " + at);
        ExpectNear(dk[n][t][i], want_dk, "d_k " + at);
      }
    }
  }
}

TEST(AttentionMmaLaneTest, BackwardKvWarpMatchesDirectSums) {
  ExpectBackwardKvMatches(1024, 2, 2, 1, 20);  // diagonal
  ExpectBackwardKvMatches(1024, 1, 3, 3, 21);  // below the diagonal, unmasked
  ExpectBackwardKvMatches(200, 3, 3, 0, 22);   // the last tile: queries and keys past T
  ExpectBackwardKvMatches(220, 3, 3, 1, 23);   // the second warp, keys past T
  ExpectBackwardKvMatches(65, 0, 1, 0, 24);    // one query in the last tile
  ExpectBackwardKvMatches(65, 1, 1, 0, 25);    // one key in the last tile
}

// One warp of the d_q pass (queries warp·16.. of query tile qt, key tile kt,
// 16 keys at a time: S = Q Kᵀ, dP = dO Vᵀ, per-row statistics, dS
// repacked as A, K read with .trans) against direct sums.
void ExpectBackwardQMatches(int64_t t_len, int qt, int kt, int warp, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "T " << t_len << " query tile " << qt << " key tile " << kt << " warp " << warp);
  std::mt19937 rng(seed);
  const int64_t k0 = int64_t{kt} * kBwdTile, t0 = int64_t{qt} * kBwdTile;
  const BwdTile q = MakeTile(rng, t0, t_len), d_out = MakeTile(rng, t0, t_len);
  const BwdTile k = MakeTile(rng, k0, t_len), v = MakeTile(rng, k0, t_len);
  const float scale_log2 = 0.3f;
  const int64_t row0 = t0 + warp * 16;
  std::vector<RegsC> dq(kBwdD / 8, RegsC(kLanes, {0, 0, 0, 0}));
  for (int c = 0; c < kBwdTile / 16; ++c) {
    std::vector<RegsC> sc(2, RegsC(kLanes, {0, 0, 0, 0})), dpc = sc;
    for (int kk = 0; kk < kBwdD / 16; ++kk) {
      auto a_at = [&](int t) { return LdOffsetA(t, kBwdLd, warp * 16, kk * 16); };
      auto b_at = [&](int t) { return LdOffsetBKMajor(t, kBwdLd, c * 16, kk * 16); };
      const RegsA qa = Load(q.rows, false, a_at), doa = Load(d_out.rows, false, a_at);
      const RegsA kb = Load(k.rows, false, b_at), vb = Load(v.rows, false, b_at);
      Mma(sc[0], qa, kb, 0);
      Mma(sc[1], qa, kb, 2);
      Mma(dpc[0], doa, vb, 0);
      Mma(dpc[1], doa, vb, 2);
    }
    std::vector<Lane2> s = ToLanes(sc), dp = ToLanes(dpc);
    for (int t = 0; t < kLanes; ++t) {
      float lse2[2], di[2];
      for (int half = 0; half < 2; ++half) {
        const int r = warp * 16 + CRow(t, 2 * half);
        lse2[half] = q.lse2[r];
        di[half] = q.di[r];
      }
      if (TileNeedsMask(qt, kt)) MaskTile<false>(s[t].v, t, row0, k0 + c * 16, t_len);
      GradRows(s[t].v, dp[t].v, scale_log2, lse2, di);
    }
    const RegsA dsa = CToARegs(FromLanes(dp), 0);
    for (int nb = 0; nb < kBwdD / 16; ++nb) {
      const RegsA kb =
          Load(k.rows, true, [&](int t) { return LdOffsetBNMajor(t, kBwdLd, nb * 16, c * 16); });
      Mma(dq[2 * nb], dsa, kb, 0);
      Mma(dq[2 * nb + 1], dsa, kb, 2);
    }
  }
  for (int t = 0; t < kLanes; ++t) {
    for (int i = 0; i < 4; ++i) {
      const int r = warp * 16 + CRow(t, i);
      if (t0 + r >= t_len) continue;  // not written by the kernel
      for (int n = 0; n < kBwdD / 8; ++n) {
        const int col = 8 * n + CCol(t, i);
        double want = 0;
        for (int ki = 0; ki < kBwdTile; ++ki) {
          if (!Visible(k0 + ki, t0 + r, t_len)) continue;
          const double p = std::exp2(Dot(q.rows, r, k.rows, ki) * scale_log2 - q.lse2[r]);
          want += p * (Dot(d_out.rows, r, v.rows, ki) - q.di[r]) * k.rows[ki * kBwdLd + col];
        }
        ExpectNear(dq[n][t][i], want,
                   "d_q query " + std::to_string(t0 + r) + " col " + std::to_string(col));
      }
    }
  }
}

TEST(AttentionMmaLaneTest, BackwardQWarpMatchesDirectSums) {
  ExpectBackwardQMatches(1024, 5, 5, 3, 30);  // diagonal
  ExpectBackwardQMatches(1024, 5, 2, 1, 31);  // left of the diagonal, unmasked
  ExpectBackwardQMatches(200, 3, 3, 0, 32);   // the last tile: queries and keys past T
  ExpectBackwardQMatches(200, 3, 1, 0, 33);
  ExpectBackwardQMatches(65, 1, 0, 0, 34);  // one query in the last tile
  ExpectBackwardQMatches(65, 1, 1, 0, 35);  // ... and one key
}

TEST(AttentionMmaLaneTest, VisibleIsCausalAndStopsAtT) {
  EXPECT_TRUE(Visible(0, 0, 1));
  EXPECT_TRUE(Visible(3, 5, 10));
  EXPECT_FALSE(Visible(6, 5, 10));
  EXPECT_FALSE(Visible(10, 12, 10));  // key past T
  EXPECT_TRUE(Visible(9, 12, 10));    // a row past T still sees keys before T
}

// Tiles other than the diagonal never mask anything that counts: every
// (key, query < T) pair there is visible, for T around the tile size.
TEST(AttentionMmaLaneTest, OnlyDiagonalTilesNeedTheMask) {
  constexpr int kTile = 64;
  for (int64_t t : {1, 63, 64, 65, 128, 129, 1024}) {
    const int tiles = static_cast<int>((t + kTile - 1) / kTile);
    for (int qt = 0; qt < tiles; ++qt) {
      for (int kt = 0; kt <= qt; ++kt) {
        if (TileNeedsMask(qt, kt)) {
          EXPECT_EQ(qt, kt);
          continue;
        }
        for (int64_t query = int64_t{qt} * kTile; query < std::min(t, int64_t{qt + 1} * kTile);
             ++query) {
          for (int64_t key = int64_t{kt} * kTile; key < int64_t{kt + 1} * kTile; ++key) {
            ASSERT_TRUE(Visible(key, query, t)) << "T " << t << " key " << key << " q " << query;
          }
        }
      }
    }
  }
}

// MaskTile<true> (Sᵀ: rows keys) masks exactly the transpose of
// MaskTile<false> (S: rows queries).
TEST(AttentionMmaLaneTest, MaskTileMasksInvisiblePairs) {
  constexpr int kN8 = 2;
  for (int64_t t : {65, 70, 128}) {
    const int64_t row0 = 64, col0 = 64;
    for (int lane = 0; lane < kLanes; ++lane) {
      float s[kN8][4], st[kN8][4];
      for (int j = 0; j < kN8; ++j) {
        for (int i = 0; i < 4; ++i) s[j][i] = st[j][i] = 1.0f;
      }
      MaskTile<false>(s, lane, row0, col0, t);
      MaskTile<true>(st, lane, row0, col0, t);
      for (int j = 0; j < kN8; ++j) {
        for (int i = 0; i < 4; ++i) {
          const int64_t row = row0 + CRow(lane, i), col = col0 + 8 * j + CCol(lane, i);
          EXPECT_EQ(std::isinf(s[j][i]), !Visible(col, row, t)) << row << " " << col;
          EXPECT_EQ(std::isinf(st[j][i]), !Visible(row, col, t)) << row << " " << col;
        }
      }
    }
  }
}

}  // namespace
}  // namespace scalemoe::cuda::mma_lane
