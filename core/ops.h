// The op set: free functions in scalemoe::ops, declared here once, implemented
// in core/cpu/<op>.cc (templated reference over f32/f64) and core/cuda/<op>.cu.
//
// Conventions (llm.c's gradient contract):
// - Outputs are passed as tensors (handles) and written in place; they must be
//   allocated by the caller with the right shape, dtype and device.
// - Backward ops OVERWRITE activation gradients (d_x) and ACCUMULATE (+=)
//   parameter gradients (d_w), unless the comment says otherwise.
// - Every op checks shapes/dtypes/devices with SM_CHECK (programming errors).
// - All float tensors of one call share a dtype (f32 or f64 on the CPU),
//   except where an op says otherwise. bf16 (where an op says so) is
//   computed in f32 and rounded to nearest even on store, on both backends.
// - CUDA: ops are queued on ctx.stream() and never synchronise; a launch or
//   library failure is recorded with ctx.Fail (see ctx.status()).
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::ops {

// ---------------------------------------------------------------- linear algebra

enum class Trans : uint8_t { kNo = 0, kYes = 1 };

struct GemmOptions {
  Trans trans_a = Trans::kNo;
  Trans trans_b = Trans::kNo;
  double alpha = 1.0;
  double beta = 0.0;  // 0: overwrite c; 1: accumulate into c
};

// c = alpha * op(a) @ op(b) + beta * c. 2-D [M,K]x[K,N]->[M,N], or batched
// 3-D with a leading batch dim on all three (a or b may also be 2-D and is
// then shared by every batch). Contiguous inputs. Any of M, N, K and the
// batch may be 0 (K = 0: c = beta * c). beta = 0 ignores c's contents (NaN
// included). Dtypes (a and b alike; accumulation in f32, f64 for f64):
// f32 -> f32, f64 -> f64, bf16 -> bf16, bf16 -> f32 (so bf16 activations
// accumulate weight gradients straight into f32 with beta = 1).
// CPU: OpenBLAS (bf16 converted to f32 first). CUDA: cuBLASLt with exact
// f32 math (CUBLAS_COMPUTE_32F, never TF32), its algorithm cached per shape.
void Gemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
          const GemmOptions& options = {});

// Grouped GEMMs: the expert FFNs of one MoE layer, every local expert in one
// launch per matrix. Group g owns the rows [offsets[g], offsets[g+1]) of the
// row-stacked activations (the permuter groups rows by expert); offsets is
// int64 [G+1] on the context's device, non-decreasing, read by the kernels
// (no host loop over groups, no host read). Each group has its own matrix:
// a MatrixGroup holds G tensors of one shape and dtype (the experts'
// weights or their gradients) and a device table of their addresses, built
// once by MakeMatrixGroup and kept while the tensors stay put.
// Dtypes as Gemm: f32, f64, bf16 inputs; c of the inputs' dtype or f32 for
// bf16 inputs. Accumulation in f32 (f64 for f64), fixed order: the same bits
// on every run. Contiguous tensors. CUDA: tensor cores (bf16, WMMA) where
// the feature dims are multiples of 8, else an exact f32 SIMT kernel.
struct MatrixGroup {
  std::vector<Tensor> matrices;  // G tensors [rows, cols] (kept alive here)
  Tensor addresses;              // int64 [G]: their data pointers, on the device
  int64_t rows = 0, cols = 0;
  DType dtype = DType::kF32;
  int64_t size() const { return static_cast<int64_t>(matrices.size()); }
};
// The group of `matrices` (same shape, dtype and device as the context).
MatrixGroup MakeMatrixGroup(const ExecContext& ctx, std::vector<Tensor> matrices);
// `group` made of `matrices`: rebuilt (its addresses uploaded again) only
// when one of them is a different tensor than the group holds.
void UpdateMatrixGroup(const ExecContext& ctx, std::vector<Tensor> matrices, MatrixGroup& group);

struct GroupedGemmOptions {
  Trans trans_b = Trans::kYes;
  double beta = 0.0;  // 0: overwrite c's rows; 1: accumulate into them
};
// c[rows_g] = a[rows_g] @ op(b_g) + beta * c[rows_g] for every group g:
// a [M, K], b_g [N, K] with trans_b (the forward x·Wᵀ) or [K, N] without (the
// backward's d_x = d_y·W), c [M, N]. Rows outside every group are untouched.
void GroupedGemm(const ExecContext& ctx, const Tensor& a, const MatrixGroup& b,
                 const Tensor& offsets, const Tensor& c, const GroupedGemmOptions& options);
// c_g = a[rows_g]ᵀ @ b[rows_g] + beta * c_g for every group g: a [M, N],
// b [M, K], c_g [N, K] (the weight gradients dW_g += d_y_gᵀ·x_g; a group
// without rows gets beta * c_g).
void GroupedGemmWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                           const Tensor& offsets, const MatrixGroup& c, double beta);
// The two with the row-stacked operand's rows gathered as GatherRows
// gathers them (row i = x[rows[i] / divisor], a zero row where rows[i] <
// 0), without the gathered copy in memory: the MoE permutation read by the
// first expert GEMM (GroupedGemmGathered: a; ...WeightGradGathered: b).
// rows int32 [M]. The bits of GatherRows then the plain op. CUDA: the
// persistent wgmma kernel gathers in its loads (sm_90); elsewhere a copy
// is gathered first.
void GroupedGemmGathered(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                         const MatrixGroup& b, const Tensor& offsets, const Tensor& c,
                         const GroupedGemmOptions& options);
void GroupedGemmWeightGradGathered(const ExecContext& ctx, const Tensor& a, const Tensor& x,
                                   const Tensor& rows, int divisor, const Tensor& offsets,
                                   const MatrixGroup& c, double beta);
// The experts' gate|up forward and its SwiGLU in one: gate_up = x·W_gᵀ
// over the stacked [2F, C] weights (GroupedGemm with trans_b, beta 0; x's
// rows gathered as GroupedGemmGathered's when rows is defined, else x [M,
// C] itself) and h = SwiGluPacked(gate_up) [M, F]. Every one of the M rows
// must lie in a group. The bits of the two ops. CUDA: on sm_90, bf16, F a
// multiple of 128, the persistent wgmma kernel's epilogue computes h from
// its tile (no second pass over gate_up); elsewhere the two ops.
void GroupedGemmSwiGlu(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                       const MatrixGroup& b, const Tensor& offsets, const Tensor& gate_up,
                       const Tensor& h);
// Its backward through the down projection: d_h = d_y·W_g (GroupedGemm
// without trans_b: d_y [M, C], W_g [C, F]) and d_gate_up [M, 2F] =
// SwiGluPackedBackward(gate_up, d_h), d_h never kept. Every one of the M
// rows in a group. The bits of the two ops with d_h in gate_up's dtype.
// CUDA: on sm_90, bf16, the persistent wgmma kernel's epilogue turns its d_h
// tile into d_gate_up; elsewhere the two ops.
void GroupedGemmSwiGluBackward(const ExecContext& ctx, const Tensor& d_y, const MatrixGroup& b,
                               const Tensor& offsets, const Tensor& gate_up,
                               const Tensor& d_gate_up);

// ---------------------------------------------------------------- elementwise

// Elementwise ops take contiguous f32, f64 or bf16 tensors of one dtype.

// y = x (same numel; any dtype to itself, and conversion among f32, f64
// and bf16; f64 -> bf16 rounds through f32). CUDA: both on the device.
void Copy(const ExecContext& ctx, const Tensor& x, const Tensor& y);
// y = x for head vectors of the same shape [..., H, D] (or [R, D]) and
// dtype (any: the bits are copied), either of which may be token-strided
// (core/head_rows.h): a slice of the q|k|v projection's output in or out
// (model/attention.cc).
void CopyHeads(const ExecContext& ctx, const Tensor& x, const Tensor& y);
// y += alpha * x.
void Axpy(const ExecContext& ctx, double alpha, const Tensor& x, const Tensor& y);
// x *= alpha (alpha = 0 writes zeros, clearing NaN/Inf).
void Scale(const ExecContext& ctx, double alpha, const Tensor& x);
// x = 0 (any dtype).
void Zero(const ExecContext& ctx, const Tensor& x);
// out[0] = sum of all elements of x, accumulated in f64; out is an f32 or
// f64 tensor of one element on x's device (stays there: read it with
// ctx.ToHost only where a host value is needed). Deterministic on both
// backends (CUDA: a fixed-order tree, the same bits on every run).
void Sum(const ExecContext& ctx, const Tensor& x, const Tensor& out);

// An f32 tensor as three bf16 parts, for exact f32 products on bf16 tensor
// cores (the router's GEMMs under train.precision BF16:
// norm/scaled_linear.h): hi = bf16(v), mid = bf16(v − hi), lo = bf16(v −
// hi − mid), each rounded to nearest even; hi + mid + lo = v exactly (the
// differences are exact in f32, and 3 × 8 bits cover f32's 24) unless a
// part falls below bf16's normal range. x f32 [R, C], out bf16 [R, 3·reps·C]
// with out[r, (p·reps + q)·C + c] = part p of x[r, c] for every q < reps
// (reps >= 1): each part's block repeated, so that one GEMM over the
// repeated blocks pairs every part of one operand with every part of the
// other. Contiguous tensors.
void SplitBf16(const ExecContext& ctx, const Tensor& x, int64_t reps, const Tensor& out);
// out = beta·out + (x_0 + x_1 + ... + x_{P−1}) where x_p = x[:, p·C : (p+1)·C]
// (the parts summed in order, then added to beta·out), in f32: x f32
// [R, P·C], out f32 [R, C], beta 0 (out's contents ignored) or 1.
// Contiguous tensors.
void AddParts(const ExecContext& ctx, const Tensor& x, double beta, const Tensor& out);

// ---------------------------------------------------------------- scale vectors
// The fold of SCALE_VECTORS.md ("Cost"): W_eff = diag(row) · W · diag(col).
// Shapes: x, out [R, C] or batched [B, R, C]; row [R] / [B, R]; col [C] /
// [B, C]; row or col may be undefined (treated as all ones). Also serves as
// the per-token path (x = activations, col = γ). f32, f64 or bf16, one
// dtype for all; the backward's sums over j and over i are deterministic
// (fixed order) on both backends.

// out[b,i,j] = row[b,i] * x[b,i,j] * col[b,j]; out may be x (in place). For
// bf16 x and out, row and/or col may also be f32 (routing weights): the
// product in f32, rounded to bf16 once on store.
void ScaleRowsCols(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                   const Tensor& col, const Tensor& out);

// Backward of ScaleRowsCols given d_out (d_x may alias d_out: the sums read
// d_out before d_x overwrites it):
//   d_x = d_out ⊙ row colᵀ                (overwritten; skipped if undefined)
//   d_row[b,i] += Σ_j d_out[b,i,j] x[b,i,j] col[b,j]   (if defined)
//   d_col[b,j] += Σ_i d_out[b,i,j] x[b,i,j] row[b,i]   (if defined)
void ScaleRowsColsBackward(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col);

// The same over G matrices of one shape at once (every local expert's weight
// of one projection: one launch for all of them, no host loop on the
// device). x, out, d_out, d_x: MatrixGroups of G [R, C] matrices; row, d_row:
// of G [1, R] vectors and col, d_col: of G [1, C] vectors (a vector v enters
// as v.View({1, n})); an empty group (size 0) stands for an undefined
// tensor. Group g computes exactly what ScaleRowsCols(x_g, row_g, col_g,
// out_g) and ScaleRowsColsBackward(x_g, row_g, col_g, d_out_g, d_x_g,
// d_row_g, d_col_g) would: the same sums in the same order, the same bits
// (d_x_g may alias d_out_g; each group's d_row_g must be a vector of its
// own, SM_CHECKed: a vector shared by two groups would take both sums at
// once). d_col_g likewise, or one vector for every group (a γ shared by
// the maps, scale_vectors.mode SHARED): the groups' sums then add into it
// in group order, each rounded as its own call's, the same bits as the
// single calls in group order. All groups share x's dtype, except that out may
// be bf16 for f32 x: computed in f32 and rounded once on store (the folded
// weight of bf16 GEMM operands, formed from the fp32 master).
void ScaleRowsColsGroup(const ExecContext& ctx, const MatrixGroup& x, const MatrixGroup& row,
                        const MatrixGroup& col, const MatrixGroup& out);
void ScaleRowsColsBackwardGroup(const ExecContext& ctx, const MatrixGroup& x,
                                const MatrixGroup& row, const MatrixGroup& col,
                                const MatrixGroup& d_out, const MatrixGroup& d_x,
                                const MatrixGroup& d_row, const MatrixGroup& d_col);

// ---------------------------------------------------------------- activations

// SwiGLU: h[n, f] = silu(gate[n, f]) * up[n, f], silu(g) = g * sigmoid(g).
// f32, f64 or bf16, one dtype for all.
void SwiGlu(const ExecContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& h);
// d_gate, d_up overwritten from d_h.
void SwiGluBackward(const ExecContext& ctx, const Tensor& gate, const Tensor& up,
                    const Tensor& d_h, const Tensor& d_gate, const Tensor& d_up);

// The same on gate and up packed side by side in one row: gate_up [N, 2F]
// (gate in columns [0, F), up in [F, 2F): one GEMM against the stacked
// weights writes both), h [N, F]; d_gate_up [N, 2F] overwritten. The same
// bits as SwiGlu / SwiGluBackward on the two halves.
void SwiGluPacked(const ExecContext& ctx, const Tensor& gate_up, const Tensor& h);
void SwiGluPackedBackward(const ExecContext& ctx, const Tensor& gate_up, const Tensor& d_h,
                          const Tensor& d_gate_up);

// ---------------------------------------------------------------- model ops (model/, norm/)
// Owner: the dense-model work. Add declarations below this line.

// n[r, :] = x[r, :] / rms(x[r, :]), rms = sqrt(mean(x²) + eps); rstd[r] =
// 1/rms is cached for the backward. x, n [R, D] (any shape viewed as rows of
// the last dim); rstd [R]. No scale: γ lives in norm/ (BranchScales,
// ScaledRmsNorm). Per-head norms view [N, H*D] as [N*H, D]. f32 or f64 (rstd
// the same dtype), or bf16 with an f32 rstd on both backends: computed in
// f32 (the statistic never rounded to bf16), n rounded once on store.
void RmsNormalize(const ExecContext& ctx, const Tensor& x, double eps, const Tensor& n,
                  const Tensor& rstd);
// d_x = rstd ⊙ (d_n − n · mean(d_n ⊙ n)) per row (overwritten).
void RmsNormalizeBackward(const ExecContext& ctx, const Tensor& n, const Tensor& rstd,
                          const Tensor& d_n, const Tensor& d_x);

// RmsNormalize with an Output-Norm scale γ over short rows, D <= 256 (a
// head vector: DNP's and QK-norm's per-head norms view [N, H*D] as
// [N*H, D]), in one pass per direction:
//   y = n ⊙ γ,  n = x · rstd,  rstd = 1 / sqrt(mean(x²) + eps)
// x [R, D] of f32, f64 or bf16; γ [D] and rstd [R] in StatDType(x) (f32 for
// bf16), in which n and y are computed. y is x's dtype, or bf16 for f32 x
// (the f32 projection in, the attention's bf16 operand out), rounded once
// on store. n is not stored: the backward recomputes it from x and rstd with
// the same expression. The CPU gives the bits of RmsNormalize then
// ScaleRowsCols(n, -, γ) run in StatDType(x), then one rounding to y.
// x may also be [..., H, D] and token-strided (core/head_rows.h: the
// q|k|v projection's slices), rows r = token·H + head; y, rstd and the
// backward's d_y are contiguous with x's row count, the backward's d_x
// (x's rows, its own layout) may be token-strided too.
constexpr int64_t kScaledRmsNormalizeMaxDim = 256;
void ScaledRmsNormalize(const ExecContext& ctx, const Tensor& x, const Tensor& gamma, double eps,
                        const Tensor& y, const Tensor& rstd);
// Its backward: d_x = RmsNormalizeBackward(n, rstd, d_y ⊙ γ) (overwritten,
// rounded once) and d_gamma[j] += Σ_r d_y[r, j] · n[r, j] (d_gamma like γ).
// d_y and d_x share y's dtype rule (x's, or both bf16 for f32 x). The CPU
// gives ScaleRowsColsBackward's then RmsNormalizeBackward's bits (d_gamma
// summed row by row in StatDType(x)); CUDA sums d_gamma in f64 in a fixed
// order (the same bits on every run for the same shapes and alignment).
void ScaledRmsNormalizeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                const Tensor& gamma, const Tensor& d_y, const Tensor& d_x,
                                const Tensor& d_gamma);

// ScaledRmsNormalize then Rope in one pass (the per-head q/k norms of DNP and
// QK-norm, whose outputs RoPE rotates next): x [B, T, H, D] (D even), y the
// same bits as ScaledRmsNormalize(x, γ, eps, y) followed by Rope(y, theta,
// y), the norm's output rounded to y's dtype before it is rotated. The
// rotation comes from rope_table = RopeTable(theta) with at least T
// positions.
void ScaledRmsNormalizeRope(const ExecContext& ctx, const Tensor& x, const Tensor& gamma,
                            double eps, const Tensor& rope_table, const Tensor& y,
                            const Tensor& rstd);
// Its backward: the bits of RopeBackward(d_y, theta) into a copy of d_y's
// dtype, then ScaledRmsNormalizeBackward on it. d_y is not written.
void ScaledRmsNormalizeRopeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                    const Tensor& gamma, const Tensor& rope_table,
                                    const Tensor& d_y, const Tensor& d_x, const Tensor& d_gamma);

// The residual add and the norm after it in one pass over the rows (Block:
// the attention sublayer's residual, then the FFN's pre-norm): x += residual
// in place, then RmsNormalize(x, eps, n, rstd) of the sum. The same bits as
// Axpy(1.0, residual, x) followed by RmsNormalize(x, eps, n, rstd) on both
// backends (CUDA: RmsNormalize's kernel, its row layout and sums), the sum
// rounded to x's dtype (bf16 too) before it is squared. Shapes and dtypes as
// RmsNormalize (residual like x). Any two of residual, x and n may be the
// same tensor (each element is read before it is written); a partial
// overlap is SM_CHECKed.
void AddRmsNormalize(const ExecContext& ctx, const Tensor& residual, const Tensor& x, double eps,
                     const Tensor& n, const Tensor& rstd);
// Its backward with the residual's gradient added: d_x = d_res +
// RmsNormalizeBackward(n, rstd, d_n) (overwritten), the same bits as
// RmsNormalizeBackward into d_x then Axpy(1.0, d_res, d_x) on both backends
// (CUDA: the backward's kernel and sums), the backward's result rounded to
// the dtype (bf16 too) before the add. d_x may be the same tensor as d_res,
// d_n or n (each element is read before it is written); a partial overlap
// is SM_CHECKed.
void RmsNormalizeBackwardAdd(const ExecContext& ctx, const Tensor& n, const Tensor& rstd,
                             const Tensor& d_n, const Tensor& d_res, const Tensor& d_x);

// Rotary position embedding, rotate-half convention: for each head vector of
// x [B, T, H, D] (D even) at position t, pairs (i, i + D/2) rotate by angle
// t · theta^(−2i/D). out may alias x. f32, f64 or bf16 (computed in f32);
// each output is x1·c − x2·s or x2·c + x1·s with both products rounded.
// x and out have the same shape; either may be token-strided
// (core/head_rows.h), each with its own stride (out of a slice of the
// q|k|v projection's output into a tensor of its own, or back).
// table, if defined, is RopeTable(theta)'s for at least T positions
// ([2, >= T, D/2] contiguous, f32 for f32 and bf16 x, f64 for f64 x, on x's
// device): cos and sin come from it instead of being computed per call (the
// same bits; on CUDA a kernel that is bound by memory bandwidth alone).
void Rope(const ExecContext& ctx, const Tensor& x, double theta, const Tensor& out,
          const Tensor& table = Tensor());
// d_x = Rᵀ d_out (the inverse rotation); d_x may alias d_out. table as Rope's.
void RopeBackward(const ExecContext& ctx, const Tensor& d_out, double theta, const Tensor& d_x,
                  const Tensor& table = Tensor());

// Rope's rotation as a table, table [2, T, D/2] (f32, or f64 for f64
// tensors: the compute type): table[0, t, i] = cos(t · theta^(−2i/D)),
// table[1, t, i] = its sin, the angle in f64 and each value rounded once,
// the numbers Rope rotates by. Computed once per sequence length and reused
// by ScaledRmsNormalizeRope.
void RopeTable(const ExecContext& ctx, double theta, const Tensor& table);

// How CausalAttention and its backward compute.
struct AttentionOptions {
  // train.precision BF16: on CUDA, head dims 64 and 128 with f32 or bf16
  // tensors run on tensor cores (core/cuda/causal_attention_tc.cu): q, k, v,
  // d_out and the probabilities enter the matmuls as bf16, accumulation and
  // the softmax statistics stay f32, outputs keep the tensors' dtype. false:
  // the exact kernels. The CPU computes exactly either way.
  bool bf16_operands = false;
};

// Causal softmax attention with grouped-query heads: q [B, T, H, D], k and v
// [B, T, KV, D] (KV divides H; query head h reads kv head h / (H/KV)),
// out [B, T, H, D] = softmax(q·kᵀ/√D over keys ≤ t) v, lse [B, H, T] (f32;
// f64 when q is f64) = log Σ_{j≤t} exp(q_t·k_j/√D), the one thing the
// backward needs besides the inputs and out: the [B, H, T, T] probabilities
// are never stored. bf16 inputs compute in f32. q, k and v (and the
// backward's d_q, d_k, d_v) may be token-strided, each in its own layout
// (core/head_rows.h: column slices of one q|k|v matrix); out, lse and
// d_out are contiguous. CUDA's mma.sync kernels (bf16 operands) read and
// write them where they lie; the other paths run on contiguous copies.
void CausalAttention(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const AttentionOptions& options = {});
// d_q, d_k, d_v overwritten from d_out, the probabilities recomputed from q,
// k and lse (P = exp(q·kᵀ/√D − lse), D = rowsum(d_out ⊙ out),
// dS = P ⊙ (d_out·vᵀ − D)); k and v gradients summed over the query heads
// that share them, in a fixed order (deterministic on every device).
void CausalAttentionBackward(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Tensor& out, const Tensor& lse,
                             const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                             const Tensor& d_v, const AttentionOptions& options = {});

// The CUDA backward on tensor cores stores dSᵀ for its d_q pass: per
// sequence and query head, the causal pairs of 64 x 64 tiles in bf16
// (core/cuda/causal_attention_mma.cu). It runs the batch in slices whose
// tiles take at most kAttentionDsBudgetBytes; a sequence whose tiles alone
// take more recomputes dS in the d_q pass instead (no scratch).
inline constexpr int64_t kAttentionDsBudgetBytes = int64_t{1} << 30;
inline constexpr int64_t kAttentionDsTile = 64;  // the kernels' tile edge (kAttnTile)
// Bytes of one sequence's dSᵀ tiles: heads x n(n + 1)/2 tiles, n = ⌈T/64⌉.
inline constexpr int64_t AttentionDsBytesPerSequence(int64_t seq_length, int64_t heads) {
  const int64_t n = (seq_length + kAttentionDsTile - 1) / kAttentionDsTile;
  return heads * n * (n + 1) / 2 * kAttentionDsTile * kAttentionDsTile * 2;
}
// The scratch one backward call allocates for a micro-batch of `batch`.
inline constexpr int64_t AttentionDsScratchBytes(int64_t batch, int64_t seq_length, int64_t heads) {
  const int64_t per_sequence = AttentionDsBytesPerSequence(seq_length, heads);
  if (per_sequence > kAttentionDsBudgetBytes) return 0;
  const int64_t slice = kAttentionDsBudgetBytes / per_sequence;
  return (batch < slice ? batch : slice) * per_sequence;
}

// out[n, :] = weight[tokens[n], :]; tokens int32 [N] with values in [0, V)
// (SM_CHECK: callers validate data; on CUDA, which cannot check without a
// host read, a bad id gives a NaN row here and adds nothing in the
// backward), weight [V, C], out [N, C].
void EmbeddingLookup(const ExecContext& ctx, const Tensor& tokens, const Tensor& weight,
                     const Tensor& out);
// d_weight[tokens[n], :] += d_out[n, :] (accumulated; on CUDA too in the
// order of n, without atomics: the same bits every run).
void EmbeddingBackward(const ExecContext& ctx, const Tensor& tokens, const Tensor& d_out,
                       const Tensor& d_weight);

// Mean over the N rows of −log softmax(logits[n])[targets[n]]; logits [N, V],
// targets int32 [N]. If d_logits is defined it is overwritten with
// d(mean loss)/d logits = (softmax − onehot) / N. loss f64[1] is overwritten
// with the mean (a device scalar: read it with ExecContext::ToHost). Logits
// f32, f64 or bf16 (bf16 computed on in f32); d_logits in their dtype or
// bf16.
// On CUDA a target outside [0, V) makes the loss and its gradient row NaN
// where the CPU SM_CHECKs.
void CrossEntropy(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                  const Tensor& d_logits, const Tensor& loss);

// ---------------------------------------------------------------- MoE ops (moe/)
// Owner: the MoE work. Add declarations below this line.

// Router math (core/cpu/router_scores.cc, topk_routing.cc, router_losses.cc).
// Shapes: logits/scores [N, E]; expert_ids [N, K] i32; weights/kept [N, K].
enum class ScoreFunction : uint8_t { kSoftmax = 0, kSigmoid = 1 };

// scores = softmax over each row, or elementwise sigmoid, of logits.
void RouterScores(const ExecContext& ctx, ScoreFunction fn, const Tensor& logits,
                  const Tensor& scores);
// d_logits (overwritten) from d_scores.
void RouterScoresBackward(const ExecContext& ctx, ScoreFunction fn, const Tensor& scores,
                          const Tensor& d_scores, const Tensor& d_logits);

// Per row: the K experts with the largest scores + bias (bias [E] may be
// undefined; it only selects), ties to the lower expert index, in descending
// order. weights = scores at those experts, divided by their sum if normalize.
void TopKRouting(const ExecContext& ctx, const Tensor& scores, const Tensor& bias, int k,
                 bool normalize, const Tensor& expert_ids, const Tensor& weights);
// d_scores += gradient of the weights above given d_weights.
void TopKRoutingBackward(const ExecContext& ctx, const Tensor& scores,
                         const Tensor& expert_ids, bool normalize, const Tensor& d_weights,
                         const Tensor& d_scores);
// The weights TopKRouting writes for a selection made elsewhere (a router
// holding its routing fixed: moe/router.h, ForceSelection): weights[t, j] =
// scores[t, expert_ids[t, j]], divided by their sum (taken in slot order,
// as TopKRouting does, so the same ids give the same bits) if normalize.
// TopKRoutingBackward is its backward. Ids must lie in [0, E).
void TopKWeightsAt(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                   bool normalize, const Tensor& weights);
// kept [N, K] i32 (1 kept, 0 dropped): per expert at most `capacity`
// assignments, the highest `priority` [N, K] kept, ties to the earlier token.
// capacity <= 0 keeps everything (dropless).
void CapacityDrop(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& priority,
                  int num_experts, int64_t capacity, const Tensor& kept);

// Switch/GShard loss[1] = coeff * E * Σ_e f_e P_e with f_e the fraction of
// the N*K (token, slot) assignments on e (constant) and P_e = mean_t scores[t, e].
void LoadBalancingLoss(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                       double coeff, const Tensor& loss);
// d_scores += scale * dloss/dscores.
void LoadBalancingLossBackward(const ExecContext& ctx, const Tensor& expert_ids, double coeff,
                               double scale, const Tensor& d_scores);
// z-loss[1] = coeff * mean_t logsumexp(logits[t])².
void ZLoss(const ExecContext& ctx, const Tensor& logits, double coeff, const Tensor& loss);
// d_logits += scale * dloss/dlogits.
void ZLossBackward(const ExecContext& ctx, const Tensor& logits, double coeff, double scale,
                   const Tensor& d_logits);

// Token-sharded forms (tensor parallel: the N_total rows of one micro-batch
// are split over the ranks of a group, this rank holding `scores`/`logits`
// [N_local, E]). Each loss op writes this rank's ADDITIVE SHARE of the whole
// micro-batch's loss (its rows' terms of the sum) and each backward adds the
// gradient of that share only, so shares and gradients summed over the group
// equal the single-rank ops on the concatenated rows. With fractions from
// these rows alone and total_tokens = N_local they are the ops above.
// counts [E] f64 (overwritten) = top-k assignments per expert among these
// rows, before capacity drops (integers, exact in f64; the caller sums them
// over the group and divides by total_tokens·K to get the fractions).
void AssignmentCounts(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& counts);
// share[1] = coeff·E·Σ_e fractions[e]·(Σ_{t in rows} scores[t, e]) / total_tokens,
// fractions [E] f64 = f_e of the whole micro-batch (constant).
void LoadBalancingLossShare(const ExecContext& ctx, const Tensor& scores,
                            const Tensor& fractions, int64_t total_tokens, double coeff,
                            const Tensor& loss);
// d_scores += scale * dshare/dscores.
void LoadBalancingLossShareBackward(const ExecContext& ctx, const Tensor& fractions,
                                    int64_t total_tokens, double coeff, double scale,
                                    const Tensor& d_scores);
// share[1] = coeff·Σ_{t in rows} logsumexp(logits[t])² / total_tokens.
void ZLossShare(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens,
                double coeff, const Tensor& loss);
// d_logits += scale * dshare/dlogits.
void ZLossShareBackward(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens,
                        double coeff, double scale, const Tensor& d_logits);

// Token permutation (core/cpu/permute_rows.cc).
// Stable sort of the kept (token, slot) assignments by expert:
// perm_slot[M] i32 = flat slot t*K+j of each permuted row (M = N*K; rows past
// Σ counts are -1), counts[E] i64 = kept assignments per expert.
void SortByExpert(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept,
                  int num_experts, const Tensor& perm_slot, const Tensor& counts);
// out[i] = x[indices[i] / divisor] (row gather; index < 0 gives a zero row).
void GatherRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                const Tensor& out);
// out[i] = weights[indices[i]] · x[indices[i] / divisor] (a zero row where
// index < 0): a gather whose rows are scaled by per-slot weights, the MoE
// combine's backward into the permuted rows (d_y_i = w_i · d_out[token_i]).
// x [N, C], weights N · divisor values of x's dtype, or f32 for bf16 x (the
// product in f32, rounded once). The bits of GatherRows then ScaleRowsCols
// by the gathered weights, in one pass.
void GatherScaledRows(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                      const Tensor& weights, const Tensor& out);
// out[indices[i] / divisor] += weights[i] * y[i] (weights [M] may be
// undefined = 1; index < 0 skipped). Accumulates.
void ScatterAddRows(const ExecContext& ctx, const Tensor& y, const Tensor& indices, int divisor,
                    const Tensor& weights, const Tensor& out);
// out[i] = <x[indices[i] / divisor], y[i]> (0 where index < 0). Overwrites.
void GatheredRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor,
                    const Tensor& y, const Tensor& out);

// ---------------------------------------------------------------- scale vectors (norm/)

// out f64[1] = Σ_i x[i]·y[i], accumulated in f64 (a device scalar: no host read).
void Dot(const ExecContext& ctx, const Tensor& x, const Tensor& y, const Tensor& out);
// Magnitude–direction reparameterisation (SCALE_VECTORS.md, "OR"):
// gamma = β·α·s, with s = 1 when norm_sq is undefined, else
// s = √(dim / norm_sq[0]) (the normalized form; norm_sq f64[1] = ‖α‖² of the
// whole vector, α possibly a TP slice of it). alpha, gamma [d]; beta [1].
void MagnitudeDirection(const ExecContext& ctx, const Tensor& alpha, const Tensor& beta,
                        const Tensor& norm_sq, int64_t dim, const Tensor& gamma);
// Its backward, accumulating (+=) into d_alpha [d] and d_beta [1]. dots f64[3]
// = {‖α‖² (whole vector), <α, dγ> (whole vector), <α, dγ> (this slice)};
// dim <= 0 selects the plain form γ = β·α (only dots[2] is read), else the
// normalized form for a vector of `dim` elements. d_beta gets this slice's
// share (summed over the split group by the model's tp_partial_grad pass).
void MagnitudeDirectionBackward(const ExecContext& ctx, const Tensor& alpha, const Tensor& beta,
                                const Tensor& dots, int64_t dim, const Tensor& d_gamma,
                                const Tensor& d_alpha, const Tensor& d_beta);
// The plain form of both over G vectors at once (a MoE layer's experts'
// γ's: one launch for all, no host loop on the device). alpha, gamma,
// d_gamma, d_alpha: MatrixGroups of G [1, d] vectors, beta, d_beta: of G
// [1, 1] (a vector v enters as v.View({1, n})). Forward: gamma_g = β_g·α_g,
// the same bits as MagnitudeDirection. Backward (accumulating): d_alpha_g
// += β_g·dγ_g and d_beta_g += <α_g, dγ_g>, the dot accumulated in f64 in a
// fixed order: the CPU's is Dot's (the same bits as Dot then
// MagnitudeDirectionBackward), the GPU's one block's per vector (the same
// bits on every run, not Dot's). Each group's d_alpha_g and d_beta_g must
// be its own (SM_CHECKed). f32 or f64, one dtype for all.
void MagnitudeDirectionGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                             const MatrixGroup& beta, const MatrixGroup& gamma);
void MagnitudeDirectionBackwardGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                                     const MatrixGroup& beta, const MatrixGroup& d_gamma,
                                     const MatrixGroup& d_alpha, const MatrixGroup& d_beta);

// ---------------------------------------------------------------- optimizer ops (optim/)
// Owner: the optimizer work. Add declarations below this line.
//
// Multi-tensor ops over flat buffers (parameters, gradients, optimizer state
// and master weights are flat, optim/ and core/params.h): one call covers many
// parameters, each a range of the buffers named by one row of a small
// segment table, an i64 tensor on the context's device built once on the host
// (core/host_values.h) and never read back. Rows are disjoint; their order is
// the order of any sum over them. A CUDA kernel maps blocks to chunks of the
// rows (no per-parameter launches); sums are per chunk, then added in row
// order (deterministic, no float atomics).
//
// Device-resident step: the gradient norm's outcome never goes to the host.
// GradNormControl turns the all-reduced sum of squares into a StepControl,
// and the update ops read it: they multiply gradients by clip_factor and do
// nothing at all (parameters, state, num_updates untouched) when nonfinite is
// set, so a non-finite step is skipped on the device.

// The control values of one optimizer step, on the context's device.
struct StepControl {
  Tensor clip_factor;  // f64 [1]: gradients are multiplied by it (1: no clipping)
  Tensor nonfinite;    // i32 [1]: 1 when the gradient norm is NaN/Inf, else 0
  Tensor num_updates;  // i64 [1]: updates applied so far, this step's included
};

// dst[dst_begin + i] = src[src_begin + i] for i < count, per row of
// segments i64 [S, 3] = (src_begin, dst_begin, count). src and dst are
// contiguous f32, f64 or bf16 buffers of any shape, indexed flat (dtypes may
// differ: converted, bf16 rounded to nearest even); destination ranges are
// disjoint and do not overlap the source ranges. ZeRO-1's packing of
// gradients into a shard space and its unpacking of gathered master weights.
void CopySegments(const ExecContext& ctx, const Tensor& src, const Tensor& dst,
                  const Tensor& segments);

// Sums of squares of ranges of x (contiguous f32, f64 or bf16, indexed
// flat), each accumulated in f64 from 0, ADDED into sums (f64): sums [S]
// gets row s's sum in sums[s]; sums [1] with S > 1 gets the rows' sums one by
// one in row order. Rows of segments i64 [S, 2] = (begin, end).
void SegmentSumOfSquares(const ExecContext& ctx, const Tensor& x, const Tensor& segments,
                         const Tensor& sums);

// From the global sum of squares sum_of_squares f64 [1] (every rank's share,
// all-reduced): grad_norm f64 [1] = sqrt(sum) (NaN/Inf when not finite);
// control.nonfinite = 1 if grad_norm is not finite, else 0;
// control.clip_factor = max_norm / grad_norm when max_norm > 0 and a finite
// grad_norm exceeds it, else 1; control.num_updates += 1 unless nonfinite.
void GradNormControl(const ExecContext& ctx, const Tensor& sum_of_squares, double max_norm,
                     const Tensor& grad_norm, const StepControl& control);

struct AdamWUpdateOptions {
  double lr = 0.0;  // scheduled rate; each row multiplies it by its lr multiplier
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
};

// AdamW with decoupled weight decay (PyTorch's torch.optim.AdamW) on the
// rows of segments i64 [S, 2] = (begin, end) of params, grads, exp_avg and
// exp_avg_sq (flat, one index space), with coefficients f64 [S, 2] = (lr
// multiplier, weight decay per unit lr). Per element, lr_s = lr · lr_mult,
// wd_s the row's decay, t = control.num_updates, g = grad · clip_factor:
//   p ← p·(1 − lr_s·wd_s)
//   m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
//   p ← p − (lr_s / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + ε)
// No-op when control.nonfinite. params, exp_avg, exp_avg_sq share a dtype
// (f32 or f64: master weights and state); grads that dtype or bf16.
// Elements outside the rows are not touched.
void AdamWUpdate(const ExecContext& ctx, const Tensor& params, const Tensor& grads,
                 const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& segments,
                 const Tensor& coefficients, const AdamWUpdateOptions& options,
                 const StepControl& control);

struct MuonMomentumOptions {
  double momentum = 0.95;
  bool nesterov = true;
};

// Muon's momentum over the rows of segments i64 [S, 3] = (begin, end,
// packed_begin): grads and momentum indexed [begin, end), update written at
// [packed_begin, packed_begin + end − begin) (matrices of one shape packed
// back to back, for one batched Newton–Schulz). With g = grad · clip_factor:
//   B ← μ·B + g;   update = g + μ·B (nesterov) or B.
// No-op when control.nonfinite (momentum kept, update not written).
// momentum and update share a dtype (f32 or f64); grads that or bf16.
void MuonMomentum(const ExecContext& ctx, const Tensor& grads, const Tensor& momentum,
                  const Tensor& update, const Tensor& segments,
                  const MuonMomentumOptions& options, const StepControl& control);

// x [R, C], or [B, R, C] for B matrices: each matrix X ← X / (‖X‖_F + eps),
// the norm accumulated in f64 (Newton–Schulz's first step). f32, f64, bf16.
void FrobeniusNormalize(const ExecContext& ctx, const Tensor& x, double eps);

// Muon's update of the rows of segments i64 [S, 3] = (begin, end,
// packed_begin) with coefficients f64 [S, 3] = (lr multiplier, weight decay
// per unit lr, shape scale), lr_s = lr · lr_mult:
//   p[begin + i] ← p·(1 − lr_s·wd_s) − lr_s·scale_s·ortho[packed_begin + i].
// No-op when control.nonfinite. params f32 or f64; ortho that or bf16.
void MuonApply(const ExecContext& ctx, const Tensor& params, const Tensor& ortho,
               const Tensor& segments, const Tensor& coefficients, double lr,
               const StepControl& control);

// ---------------------------------------------------------------- trainer (launch/)

// Non-finite step record, f64 tracker[4] = {steps non-finite so far, of them
// in a row now, the first one's `step` (0: none), the longest run in a row}.
// A step is non-finite when `nonfinite` (i32[1], the optimizer's flag) is
// set or `loss` (f64[1]) is not finite; `step` is its 1-based number.
void TrackNonFinite(const ExecContext& ctx, const Tensor& nonfinite, const Tensor& loss,
                    int64_t step, const Tensor& tracker);
// Capacity priority (core/cpu/moe_routing_stats.cc): out[t, j] =
// scores[t, expert_ids[t, j]], the raw score of each selected assignment.
// scores [N, E] and out [N, K] f32, f64 or bf16 (one dtype); expert_ids [N, K] i32.
void SelectedScores(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                    const Tensor& out);

// Per-step MoE statistics, kept on the device (core/cpu/moe_routing_stats.cc).
// step [E + 1] i64 (accumulated): step[e] += counts[e] (kept assignments per
// expert, counts [E] i64), step[E] += assignments − Σ_e counts[e] (the
// assignments capacity dropped; `assignments` = N·K of the forward).
void AccumulateExpertLoads(const ExecContext& ctx, const Tensor& counts, int64_t assignments,
                           const Tensor& step);
// Aux-loss-free balancing (DeepSeek-V3): bias[e] += rate · sign(mean − loads[e]),
// mean = Σ loads / E (exact: loads are integers). loads [E] i64; bias [E] f32/f64.
// skip (i32[1], may be undefined): when set, nothing changes (the step's
// optimizer update was skipped as non-finite: the bias stays with it).
void ExpertBiasUpdate(const ExecContext& ctx, const Tensor& loads, double rate,
                      const Tensor& skip, const Tensor& bias);

// Index building from device counts (core/cpu/moe_index.cc). Row indices
// are i32; −1 marks "no row".
// slot_row[s] = i for every i with row_slot[i] = s >= 0; −1 for slots no row
// holds (overwritten). row_slot [M] (its values >= 0 distinct, < S), slot_row [S].
// The inverse of SortByExpert's perm_slot: each token's rows, for the
// per-token combine below.
void InvertRowIndex(const ExecContext& ctx, const Tensor& row_slot, const Tensor& slot_row);
// Every token to every one of `copies` experts (shared experts), rows grouped
// by copy: gather [copies·N] with gather[c·N + t] = t (the token of each
// row), slot_row [N, copies] with slot_row[t, c] = c·N + t (the row of each
// (token, copy)). N = gather.numel() / copies.
void TiledRowIndex(const ExecContext& ctx, int copies, const Tensor& gather,
                   const Tensor& slot_row);
// Rows that arrive as [source][expert] blocks (counts [S, L] i64: rows of
// source s for local expert l) reordered to [expert][source] blocks (sources
// in order; what GroupedExperts wants), and back. R = Σ counts rows:
//   to_expert_order[g] = source-order position of expert-order row g, where
//     source s's rows start at s·source_stride (source_stride > 0: padded
//     blocks, e.g. an all-gather of equal-sized buffers; each source's total
//     must fit) or right after source s−1's (source_stride = 0: packed);
//   to_source_order[j] = expert-order row of packed source-order row j.
// to_expert_order, to_source_order [R] i32 (R must equal Σ counts).
void SourceToExpertOrder(const ExecContext& ctx, const Tensor& counts, int64_t source_stride,
                         const Tensor& to_expert_order, const Tensor& to_source_order);
// totals[l] = Σ_s counts[s, l] (overwritten); counts [S, L], totals [L], i64.
void SumSourceCounts(const ExecContext& ctx, const Tensor& counts, const Tensor& totals);
// offsets[0] = 0, offsets[e + 1] = offsets[e] + counts[e] (overwritten):
// the grouped GEMMs' row offsets from the per-expert counts, on the device.
// counts [E], offsets [E + 1], i64.
void CountOffsets(const ExecContext& ctx, const Tensor& counts, const Tensor& offsets);

// The combine as a per-token sum (core/cpu/moe_combine.cc; deterministic:
// each token sums its own K slots in slot order, no scatter).
// out[t] += Σ_{j: slot_row[t, j] >= 0} weights[t, j] · rows[slot_row[t, j]]
// (accumulated; weights may be undefined = 1). rows [M, C], slot_row [N, K]
// i32, weights [N, K], out [N, C]; floats f32, f64 or bf16 (one dtype, f32
// accumulation for bf16), or f32 weights with bf16 rows and out (products
// and sums in f32, each out element rounded once).
void CombineSlots(const ExecContext& ctx, const Tensor& rows, const Tensor& slot_row,
                  const Tensor& weights, const Tensor& out);
// out[t, j] = <x[t], rows[slot_row[t, j]]>, 0 where slot_row[t, j] < 0
// (overwritten): the combine weights' gradient. x [N, C], rows [M, C],
// slot_row and out [N, K]; one float dtype, or an f32 out for bf16 x and
// rows (the f32 dot stored unrounded).
void SlotRowDot(const ExecContext& ctx, const Tensor& x, const Tensor& slot_row,
                const Tensor& rows, const Tensor& out);

// ---------------------------------------------------------------- vocab-parallel ops (parallel/)
// Owner: the MoE work (parallel/tp_cross_entropy.h, tp_embedding.h;
// core/cpu/vocab_parallel.cc). A rank holds the vocabulary shard
// [vocab_start, vocab_start + V_local) of the logits or of the table.
// Statistics are f64 whatever the logits' dtype (f32, f64 or bf16).

// row_max[n] = max_v logits[n, v] over this shard; logits [N, V_local], row_max [N] f64.
void VocabRowMax(const ExecContext& ctx, const Tensor& logits, const Tensor& row_max);
// With row_max the max over the WHOLE vocabulary (all-reduced):
// stats[0, n] = Σ_v exp(logits[n, v] − row_max[n]) over this shard;
// stats[1, n] = logits[n, targets[n] − vocab_start] when this shard holds
// targets[n], else 0. targets [N] i32 (global ids), stats [2, N] f64.
void VocabSoftmaxStats(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                       int64_t vocab_start, const Tensor& row_max, const Tensor& stats);
// With stats summed over the shards: loss[0] = mean_n (log stats[0, n] +
// row_max[n] − stats[1, n]); loss [1] f64.
void VocabCrossEntropyLoss(const ExecContext& ctx, const Tensor& row_max, const Tensor& stats,
                           const Tensor& loss);
// This shard of d(mean loss)/d logits = (softmax − onehot(target)) / N
// (overwritten), from the whole vocabulary's row_max and summed stats.
void VocabCrossEntropyBackward(const ExecContext& ctx, const Tensor& logits,
                               const Tensor& targets, int64_t vocab_start,
                               const Tensor& row_max, const Tensor& stats,
                               const Tensor& d_logits);
// rows[n] = tokens[n] − vocab_start when vocab_start <= tokens[n] <
// vocab_start + shard_size, else −1 (another shard's token, or no token's).
// tokens, rows [N] i32.
void VocabShardRows(const ExecContext& ctx, const Tensor& tokens, int64_t vocab_start,
                    int64_t shard_size, const Tensor& rows);
// count[0] = number of ids outside [begin, end) (overwritten): the device
// flag a layer reports bad token ids through. ids i32 (any shape), count [1] i64.
void CountOutOfRange(const ExecContext& ctx, const Tensor& ids, int64_t begin, int64_t end,
                     const Tensor& count);

}  // namespace scalemoe::ops
