// Training FLOPs of a step as Megatron counts them, from the config alone
// (bench/train_step_bench and bench/torch_reference.py use the same rule, so
// their TFLOP/s and MFU compare like for like):
//   FLOPs per token = 6 · (active matmul parameters, LM head included)
//                   + 12 · num_layers · seq_length · hidden_size
// The first term is forward + backward of every weight a token meets (routed
// experts counted top_k of num_experts; tied embeddings once, as the head);
// the second is attention's scores and values (forward 4·T·h, ×3), causal
// masking not discounted. Norm scale vectors, biases and the embedding lookup
// cost no FLOPs here.
#pragma once

#include <cstdint>

#include "configs/scalemoe.pb.h"

namespace scalemoe {

struct MegatronFlops {
  int64_t active_params = 0;  // matmul weights a token meets, LM head included
  int64_t total_params = 0;   // every matmul weight (all experts, embedding and head)
  double flops_per_token = 0;
};

MegatronFlops CountMegatronFlops(const config::RunConfig& cfg);

// Dense bf16 peak of one H100/H200 SXM (TFLOP/s), the MFU denominator.
inline constexpr double kH100DenseBf16Tflops = 989.0;

}  // namespace scalemoe
