#include "moe/moe_config.h"

namespace scalemoe {

Status ValidateMoeConfig(const config::RunConfig& cfg) {
  const config::MoEConfig& m = cfg.moe();
  auto bad = [](const char* field, auto value, const char* fix) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe.", field, " = ", value, " is invalid: ", fix));
  };
  if (m.num_experts() <= 0) return bad("num_experts", m.num_experts(), "set it >= 1");
  if (m.top_k() < 1 || m.top_k() > m.num_experts()) {
    return bad("top_k", m.top_k(),
               absl::StrCat("set it in [1, moe.num_experts = ", m.num_experts(), "]").c_str());
  }
  if (m.expert_ffn_hidden_size() <= 0) {
    return bad("expert_ffn_hidden_size", m.expert_ffn_hidden_size(), "set it >= 1");
  }
  const int etp = cfg.parallel().etp();
  if (etp >= 1 && m.expert_ffn_hidden_size() % etp != 0) {
    return bad("expert_ffn_hidden_size", m.expert_ffn_hidden_size(),
               absl::StrCat("it must be divisible by parallel.etp = ", etp,
                            " (expert tensor parallelism splits it); change either")
                   .c_str());
  }
  if (m.num_shared_experts() < 0) {
    return bad("num_shared_experts", m.num_shared_experts(), "set it >= 0");
  }
  if (m.shared_expert_ffn_hidden_size() < 0) {
    return bad("shared_expert_ffn_hidden_size", m.shared_expert_ffn_hidden_size(),
               "set it >= 0 (0 = expert_ffn_hidden_size)");
  }
  if (m.capacity_factor() < 0) {
    return bad("capacity_factor", m.capacity_factor(), "set it >= 0 (0 = dropless)");
  }
  if (m.aux_loss_coeff() < 0) return bad("aux_loss_coeff", m.aux_loss_coeff(), "set it >= 0");
  if (m.z_loss_coeff() < 0) return bad("z_loss_coeff", m.z_loss_coeff(), "set it >= 0");
  if (m.expert_bias_update_rate() < 0) {
    return bad("expert_bias_update_rate", m.expert_bias_update_rate(), "set it >= 0");
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
