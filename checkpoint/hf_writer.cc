#include "checkpoint/hf_writer.h"

#include "absl/strings/str_cat.h"

namespace scalemoe::checkpoint {
namespace {

bool Is(const HfArchitecture& arch, const char* model_type) {
  return std::string(arch.model_type) == model_type;
}

Tensor Filled(int64_t n, double value) {
  Tensor t = Tensor::Empty({n}, DType::kF32);
  t.Fill(value);
  return t;
}

void AddSwiGlu(std::vector<HfTensor>& out, const std::string& prefix, const SwiGlu& mlp,
               const char* gate, const char* up, const char* down) {
  out.push_back({prefix + gate + ".weight", mlp.gate});
  out.push_back({prefix + up + ".weight", mlp.up});
  out.push_back({prefix + down + ".weight", mlp.down});
}

void AddMoe(std::vector<HfTensor>& out, const std::string& h, const FoldedLayer& layer,
            const HfArchitecture& arch) {
  if (Is(arch, "mixtral")) {
    out.push_back({h + "block_sparse_moe.gate.weight", layer.router});
    for (size_t e = 0; e < layer.experts.size(); ++e) {
      AddSwiGlu(out, absl::StrCat(h, "block_sparse_moe.experts.", e, "."), layer.experts[e], "w1",
                "w3", "w2");
    }
    return;
  }
  out.push_back({h + "mlp.gate.weight", layer.router});
  for (size_t e = 0; e < layer.experts.size(); ++e) {
    AddSwiGlu(out, absl::StrCat(h, "mlp.experts.", e, "."), layer.experts[e], "gate_proj", "up_proj",
              "down_proj");
  }
  if (Is(arch, "glm4_moe")) {
    // A buffer of every GLM-4-MoE router: zeros select by the scores alone.
    const Tensor bias = layer.expert_bias.defined()
                            ? layer.expert_bias
                            : Filled(static_cast<int64_t>(layer.experts.size()), 0.0);
    out.push_back({h + "mlp.gate.e_score_correction_bias", bias, /*keep_f32=*/true});
    AddSwiGlu(out, h + "mlp.shared_experts.", layer.shared, "gate_proj", "up_proj", "down_proj");
  }
}

}  // namespace

std::vector<HfTensor> HfTensors(const FoldedModel& model, const HfArchitecture& arch) {
  const int64_t c = model.embedding.dim(1);
  std::vector<HfTensor> out;
  out.push_back({"model.embed_tokens.weight", model.embedding});
  out.push_back({"model.norm.weight", model.final_norm});
  if (model.head.defined()) out.push_back({"lm_head.weight", model.head});
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const FoldedLayer& layer = model.layers[l];
    const std::string h = absl::StrCat("model.layers.", l, ".");
    out.push_back({h + "input_layernorm.weight", Filled(c, 1.0)});
    out.push_back({h + "post_attention_layernorm.weight", Filled(c, 1.0)});
    out.push_back({h + "self_attn.q_proj.weight", layer.q});
    out.push_back({h + "self_attn.k_proj.weight", layer.k});
    out.push_back({h + "self_attn.v_proj.weight", layer.v});
    out.push_back({h + "self_attn.o_proj.weight", layer.o});
    if (layer.q_norm.defined()) {
      out.push_back({h + "self_attn.q_norm.weight", layer.q_norm});
      out.push_back({h + "self_attn.k_norm.weight", layer.k_norm});
    }
    if (layer.moe) {
      AddMoe(out, h, layer, arch);
    } else {
      AddSwiGlu(out, h + "mlp.", layer.mlp, "gate_proj", "up_proj", "down_proj");
    }
  }
  return out;
}

nlohmann::json HfConfig(const FoldedModel& model, const config::RunConfig& cfg,
                        const HfArchitecture& arch, const std::string& dtype_name,
                        const SpecialTokens& tokens) {
  const config::ModelConfig& m = cfg.model();
  const int64_t c = model.embedding.dim(1);
  const int layers = static_cast<int>(model.layers.size());
  nlohmann::json rope = {{"rope_type", "default"}, {"rope_theta", m.rope_theta()}};
  nlohmann::json j = {
      {"architectures", {arch.class_name}},
      {"model_type", arch.model_type},
      {"vocab_size", model.embedding.dim(0)},
      {"hidden_size", c},
      {"num_hidden_layers", layers},
      {"num_attention_heads", m.num_heads()},
      {"num_key_value_heads", m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads()},
      {"head_dim", c / m.num_heads()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", m.seq_length()},
      {"rms_norm_eps", m.norm_eps()},
      {"rope_theta", m.rope_theta()},  // transformers 4.x; 5 reads rope_parameters
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"initializer_range", m.init_std()},
      {"tie_word_embeddings", !model.head.defined()},
      {"use_cache", true},
      {"dtype", dtype_name},
      {"torch_dtype", dtype_name},
  };
  if (tokens.bos >= 0) j["bos_token_id"] = tokens.bos;
  if (tokens.eos >= 0) j["eos_token_id"] = tokens.eos;
  // Dense layers' hidden size, and the MoE layers' (the model's are uniform).
  int64_t dense_hidden = m.ffn_hidden_size();
  const FoldedLayer* moe = nullptr;
  nlohmann::json dense_layers = nlohmann::json::array();
  for (int l = layers - 1; l >= 0; --l) {
    if (model.layers[l].moe) {
      moe = &model.layers[l];
    } else {
      dense_hidden = model.layers[l].mlp.gate.dim(0);
    }
  }
  for (int l = 0; l < layers; ++l) {
    if (!model.layers[l].moe) dense_layers.push_back(l);
  }
  j["intermediate_size"] = dense_hidden;
  if (Is(arch, "qwen3") || Is(arch, "qwen3_moe")) {
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
    j["max_window_layers"] = layers;
    j["layer_types"] = std::vector<std::string>(layers, "full_attention");
  }
  if (Is(arch, "llama")) j["mlp_bias"] = false;
  if (moe != nullptr) {
    const int64_t experts = static_cast<int64_t>(moe->experts.size());
    const int64_t routed_hidden = moe->experts.front().gate.dim(0);
    j["num_experts_per_tok"] = cfg.moe().top_k();
    j["output_router_logits"] = false;
    if (Is(arch, "mixtral")) {
      j["num_local_experts"] = experts;
      j["intermediate_size"] = routed_hidden;  // Mixtral sizes its experts by intermediate_size
      j["router_jitter_noise"] = 0.0;
      j["sliding_window"] = nullptr;
    } else if (Is(arch, "qwen3_moe")) {
      j["num_experts"] = experts;
      j["moe_intermediate_size"] = routed_hidden;
      j["norm_topk_prob"] = cfg.moe().normalize_topk();
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = dense_layers;
    } else if (Is(arch, "glm4_moe")) {
      j["n_routed_experts"] = experts;
      j["moe_intermediate_size"] = routed_hidden;
      j["n_shared_experts"] = moe->shared.gate.dim(0) / routed_hidden;
      j["first_k_dense_replace"] = dense_layers.size();
      j["norm_topk_prob"] = cfg.moe().normalize_topk();
      j["routed_scaling_factor"] = 1.0;
      j["n_group"] = 1;
      j["topk_group"] = 1;
      j["use_qk_norm"] = moe->q_norm.defined();
    }
  }
  if (Is(arch, "glm4_moe")) {
    // GLM-4-MoE rotates half of each head by default; our RoPE rotates all.
    j["partial_rotary_factor"] = 1.0;
    rope["partial_rotary_factor"] = 1.0;
  }
  j["rope_parameters"] = rope;
  return j;
}

}  // namespace scalemoe::checkpoint
