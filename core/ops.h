// The op set: free functions in scalemoe::ops, declared here once, implemented
// in core/cpu/<op>.cc (templated reference over f32/f64) and core/cuda/<op>.cu.
//
// Conventions (llm.c's gradient contract):
// - Outputs are passed as tensors (handles) and written in place; they must be
//   allocated by the caller with the right shape, dtype and device.
// - Backward ops OVERWRITE activation gradients (d_x) and ACCUMULATE (+=)
//   parameter gradients (d_w), unless the comment says otherwise.
// - Every op checks shapes/dtypes/devices with SM_CHECK (programming errors).
// - All float tensors of one call share a dtype (f32 or f64 on the CPU).
#pragma once

#include <cstdint>

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
// then shared by every batch). Contiguous inputs. CPU: OpenBLAS.
void Gemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
          const GemmOptions& options = {});

// ---------------------------------------------------------------- elementwise

// y = x (same numel; dtype conversion allowed on the CPU).
void Copy(const ExecContext& ctx, const Tensor& x, const Tensor& y);
// y += alpha * x.
void Axpy(const ExecContext& ctx, double alpha, const Tensor& x, const Tensor& y);
// x *= alpha.
void Scale(const ExecContext& ctx, double alpha, const Tensor& x);
// x = 0.
void Zero(const ExecContext& ctx, const Tensor& x);
// Sum of all elements, accumulated in f64 (returned to the host: not for hot paths).
double Sum(const ExecContext& ctx, const Tensor& x);

// ---------------------------------------------------------------- scale vectors
// The fold of SCALE_VECTORS.md ("Cost"): W_eff = diag(row) · W · diag(col).
// Shapes: x, out [R, C] or batched [B, R, C]; row [R] / [B, R]; col [C] /
// [B, C]; row or col may be undefined (treated as all ones). Also serves as
// the per-token path (x = activations, col = γ).

// out[b,i,j] = row[b,i] * x[b,i,j] * col[b,j].
void ScaleRowsCols(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                   const Tensor& col, const Tensor& out);

// Backward of ScaleRowsCols given d_out:
//   d_x = d_out ⊙ row colᵀ                (overwritten; skipped if undefined)
//   d_row[b,i] += Σ_j d_out[b,i,j] x[b,i,j] col[b,j]   (if defined)
//   d_col[b,j] += Σ_i d_out[b,i,j] x[b,i,j] row[b,i]   (if defined)
void ScaleRowsColsBackward(const ExecContext& ctx, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col);

// ---------------------------------------------------------------- activations

// SwiGLU: h[n, f] = silu(gate[n, f]) * up[n, f], silu(g) = g * sigmoid(g).
void SwiGlu(const ExecContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& h);
// d_gate, d_up overwritten from d_h.
void SwiGluBackward(const ExecContext& ctx, const Tensor& gate, const Tensor& up,
                    const Tensor& d_h, const Tensor& d_gate, const Tensor& d_up);

// ---------------------------------------------------------------- model ops (model/, norm/)
// Owner: the dense-model work. Add declarations below this line.

// ---------------------------------------------------------------- MoE ops (moe/)
// Owner: the MoE work. Add declarations below this line.

}  // namespace scalemoe::ops
