#include "launch/megatron_flops.h"

#include "model/block.h"

namespace scalemoe {

MegatronFlops CountMegatronFlops(const config::RunConfig& cfg) {
  const config::ModelConfig& m = cfg.model();
  const config::MoEConfig& moe = cfg.moe();
  const int64_t h = m.hidden_size();
  const int64_t head_dim = h / m.num_heads();
  // q and o are h x h; k and v h x (kv heads · head_dim) (GQA).
  const int64_t attention = 2 * h * h + 2 * h * m.num_kv_heads() * head_dim;
  const int64_t swiglu = 3 * h;  // gate, up, down: 3 matrices of h x ffn
  const int64_t shared_ffn = moe.shared_expert_ffn_hidden_size() > 0
                                 ? moe.shared_expert_ffn_hidden_size()
                                 : moe.expert_ffn_hidden_size();
  MegatronFlops out;
  const int64_t embedding = m.vocab_size() * h;
  // Tied: one matrix, counted as the head. Untied: the head computes, the
  // embedding lookup does not.
  out.active_params = embedding;
  out.total_params = m.tied_embeddings() ? embedding : 2 * embedding;
  for (int layer = 0; layer < m.num_layers(); ++layer) {
    int64_t active = attention, total = attention;
    if (IsMoeLayer(cfg, layer)) {
      const int64_t router = h * moe.num_experts();
      const int64_t expert = swiglu * moe.expert_ffn_hidden_size();
      const int64_t shared = moe.num_shared_experts() * swiglu * shared_ffn;
      active += router + moe.top_k() * expert + shared;
      total += router + moe.num_experts() * expert + shared;
    } else {
      active += swiglu * m.ffn_hidden_size();
      total += swiglu * m.ffn_hidden_size();
    }
    out.active_params += active;
    out.total_params += total;
  }
  out.flops_per_token = 6.0 * static_cast<double>(out.active_params) +
                        12.0 * m.num_layers() * m.seq_length() * static_cast<double>(h);
  return out;
}

}  // namespace scalemoe
