// Global gradient norm and clipping over the registry's trainable
// parameters (kExpertBias is not trained and not counted).
//
// Single rank: the norm is over this process's gradients. The distributed
// optimizer sums SumOfSquares of its shards and all-reduces before the
// square root; the same f64 accumulation is used there.
#pragma once

#include "core/params.h"
#include "core/tensor.h"

namespace scalemoe {

// Σ x² over a contiguous f32/f64 CPU tensor, accumulated in f64.
double SumOfSquares(const Tensor& x);

// sqrt(Σ over trainable parameters of Σ grad²), accumulated in f64. NaN or
// Inf when a gradient is non-finite.
double GlobalGradNorm(const ParamRegistry& registry);

// Scales every trainable gradient by max_norm / norm when norm > max_norm,
// so the clipped norm is max_norm. Returns the pre-clip norm. No-op when
// max_norm <= 0 (clipping off) or the norm is non-finite: the NaN/Inf is
// returned so the trainer can stop or skip the step.
double ClipGradients(ParamRegistry& registry, double max_norm);

}  // namespace scalemoe
