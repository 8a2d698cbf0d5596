// What one rank of a run needs, estimated from the config alone (nothing is
// built or allocated), and the size rules validation enforces with it, so
// that sizes that overflow or cannot fit are refused up front with exit 2
// (launch/config_validate.cc) instead of wrapping into negative counts or
// filling the machine. check-config and inspect print the estimate.
//
// Arithmetic is in double: products of the config's 32-bit sizes cannot
// overflow it (int64 did: a 65536 x 65536 model printed a negative count).
//
// The rank counted is the one holding the most: the largest pipeline stage
// (ceil(L / (pp·v))·v layers; a share of the dense and MoE layers in
// proportion) together with the embedding or the head.
//   weights      embedding and head (V·C, split over tp), attention
//                (2·(H + KV)·D·C / tp per layer), dense MLP (3·F·C / tp),
//                router (E·C), routed experts (E/ep · 3·Fe·C / etp), shared
//                experts (S · 3·Fs·C). Scale vectors and norms, O(C) per
//                layer and under 1% of a real model, are left out.
//   per element  fp32: weight 4 + gradient 4 + AdamW moments 8 bytes (Muon
//                keeps less); bf16: weight 2 + fp32 gradient 4 + fp32 master
//                weight and moments 12. Under parallel.zero_stage 1 the
//                master weights, moments and a reduced-gradient shard (fp32:
//                master 4 + moments 8 + shard 4) are divided over dp (the
//                experts' over edp), as optim/distributed_optimizer does.
//   activations  one micro-batch (B·T tokens) kept for backward, per layer
//                and token: 10·C (residual, norms, outputs) + 2·(H + 2·KV)·D
//                /tp (q, k, v) + H/tp (attention's log-sum-exp; the T×T
//                probabilities are never kept) + 4·F/tp (dense MLP) or
//                top_k·(2·C + 4·Fe/etp) + 4·S·Fs + 2·E (MoE); plus the
//                logits and their gradient (2·V/tp per token, fp32; the
//                gradient bf16 under BF16 without TP, both bf16 under BF16
//                with train.fp32_logits off; one chunk's tokens' with
//                train.loss_chunk_tokens).
//                train.recompute NONE keeps that per in-flight micro-batch:
//                under pipeline parallelism one chunk's layers per (chunk,
//                micro-batch) the first stage holds at its peak (min(pp,
//                micro-batches) under 1F1B). FULL keeps one layer's plus
//                every layer's input (B·T·C) on one stage; under pipeline
//                parallelism one chunk's layers, plus pp·v micro-batches of
//                boundary activations (B·T·C) in flight.
// The budget is train.device_memory_gib per rank (default 80 GiB, one
// A100/H100): the estimate must fit it. It is an estimate of the dominant
// terms, not a promise: allocator slack, workspaces and communication
// buffers come on top.
#pragma once

#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/allocator.h"  // FormatBytes
#include "core/config_problems.h"
#include "launch/config.h"

namespace scalemoe {

// Sanity bounds far above any real model, for what the estimate cannot
// bound (a size no layer uses, the metadata of very many tensors, a step
// no dataset feeds):
inline constexpr double kMaxWidth = 1 << 20;         // hidden and ffn sizes
inline constexpr double kMaxTensors = 1 << 22;       // parameter tensors of the model
inline constexpr double kMaxTokensPerStep = 1LL << 34;  // global_batch_size × seq_length

// One term of the estimate, with the fields it grows with.
struct MemoryPart {
  std::string what;    // e.g. "routed experts' weights"
  std::string fields;  // e.g. "MoE layers 4 x moe.num_experts=8 / ep=1 x 3 x ..."
  double bytes = 0;
};

struct MemoryEstimate {
  double model_params = 0;      // weight elements of the whole model (one rank, no split)
  double tensors = 0;           // parameter tensors of the whole model (an upper bound)
  double rank_params = 0;       // weight elements on the rank counted
  double weight_bytes = 0;      // of rank_params: weights, gradients, optimizer state
  double param_bytes = 0;
  double grad_bytes = 0;
  double optimizer_bytes = 0;
  double activation_bytes = 0;
  std::vector<MemoryPart> parts;  // weight_bytes and activation_bytes by term, largest first

  double total_bytes() const { return weight_bytes + activation_bytes; }
  // "1.2 GiB per rank (weights 0.1, gradients 0.1, optimizer state 0.3,
  // activations 0.7 GiB)".
  std::string Summary() const;
};

// The estimate for `layout` (sizes must be positive and divide as the
// other validators require).
MemoryEstimate EstimateMemory(const config::RunConfig& cfg, const ParallelLayout& layout);

// The size rules: widths, tensor count, tokens per step, and the estimate
// against train.device_memory_gib (which must be > 0). Appends to `problems`,
// naming the fields and the fix.
void ValidateSizes(const config::RunConfig& cfg, const ParallelLayout& layout,
                   ConfigProblems& problems);

}  // namespace scalemoe
