#include "moe/moe_config.h"

namespace scalemoe {

void ValidateMoeConfig(const config::RunConfig& c, ConfigProblems& p) {
  const config::MoEConfig& e = c.moe();
  const config::ParallelConfig& par = c.parallel();
  p.Check(e.num_experts() >= 0, "moe.num_experts=", e.num_experts(),
          " must be >= 0: set 0 for a dense model");
  p.NonNegative("moe.capacity_factor", e.capacity_factor());
  p.NonNegative("moe.aux_loss_coeff", e.aux_loss_coeff());
  p.NonNegative("moe.z_loss_coeff", e.z_loss_coeff());
  p.NonNegative("moe.expert_bias_update_rate", e.expert_bias_update_rate());
  if (e.num_experts() <= 0) {
    p.Check(par.ep() == 1, "parallel.ep=", par.ep(),
            " needs routed experts but moe.num_experts=0: set parallel.ep=1 for a dense model");
    p.Check(par.etp() == 1, "parallel.etp=", par.etp(),
            " needs routed experts but moe.num_experts=0: set parallel.etp=1 for a dense model");
    return;
  }
  p.Check(e.top_k() >= 1 && e.top_k() <= e.num_experts(), "moe.top_k=", e.top_k(),
          " must be in [1, moe.num_experts=", e.num_experts(), "]: choose top_k <= num_experts");
  p.Positive("moe.expert_ffn_hidden_size", e.expert_ffn_hidden_size());
  p.Check(e.num_shared_experts() >= 0, "moe.num_shared_experts=", e.num_shared_experts(),
          " must be >= 0");
  p.Check(e.shared_expert_ffn_hidden_size() >= 0,
          "moe.shared_expert_ffn_hidden_size=", e.shared_expert_ffn_hidden_size(),
          " must be >= 0: set 0 for expert_ffn_hidden_size");
  p.Check(e.first_dense_layers() >= 0 && e.first_dense_layers() <= c.model().num_layers(),
          "moe.first_dense_layers=", e.first_dense_layers(),
          " must be in [0, model.num_layers=", c.model().num_layers(), "]");
  p.Positive("moe.moe_layer_frequency", e.moe_layer_frequency());
  if (par.ep() >= 1) {
    p.Check(e.num_experts() % par.ep() == 0, "moe.num_experts=", e.num_experts(),
            " is not divisible by parallel.ep=", par.ep(), ": choose ep that divides num_experts");
  }
  if (par.etp() >= 1 && e.expert_ffn_hidden_size() > 0) {
    p.Check(e.expert_ffn_hidden_size() % par.etp() == 0,
            "moe.expert_ffn_hidden_size=", e.expert_ffn_hidden_size(),
            " is not divisible by parallel.etp=", par.etp(),
            ": choose etp that divides the expert ffn size");
  }
  // Shared experts are not split (replicated over TP: each TP rank runs them
  // on its share of the tokens), so their ffn size has no TP rule. The MoE
  // layer splits each micro-batch's tokens over TP (with or without sequence
  // parallelism); under sequence parallelism the rule is the model's
  // (model/model_config.h) and named there.
  const config::ModelConfig& m = c.model();
  const bool has_moe_layers = e.first_dense_layers() < m.num_layers();
  if (par.tp() > 1 && has_moe_layers && !par.sequence_parallel() && m.seq_length() > 0) {
    p.Check(m.seq_length() % par.tp() == 0, "model.seq_length=", m.seq_length(),
            " is not divisible by parallel.tp=", par.tp(),
            ": the MoE layers split each micro-batch's tokens over tensor-parallel ranks; "
            "choose tp that divides seq_length");
  }
}

}  // namespace scalemoe
