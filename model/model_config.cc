#include "model/model_config.h"

namespace scalemoe {
namespace {

int KvHeads(const config::ModelConfig& m) {
  return m.num_kv_heads() == 0 ? m.num_heads() : m.num_kv_heads();
}

void CheckSizes(const config::ModelConfig& m, ConfigProblems& p) {
  p.Positive("model.num_layers", m.num_layers());
  p.Positive("model.hidden_size", m.hidden_size());
  p.Positive("model.num_heads", m.num_heads());
  p.Positive("model.ffn_hidden_size", m.ffn_hidden_size());
  p.Positive("model.vocab_size", m.vocab_size());
  p.Positive("model.seq_length", m.seq_length());
  p.Check(m.num_kv_heads() >= 0, "model.num_kv_heads=", m.num_kv_heads(),
          " must be >= 0: set 0 for num_kv_heads = num_heads");
  p.Check(m.rope_theta() > 0, "model.rope_theta=", m.rope_theta(), " must be > 0: e.g. 10000");
  p.Check(m.norm_eps() > 0, "model.norm_eps=", m.norm_eps(), " must be > 0: e.g. 1e-6");
  p.Check(m.init_std() > 0, "model.init_std=", m.init_std(), " must be > 0: e.g. 0.02");
  if (m.num_heads() <= 0 || m.num_kv_heads() < 0 || m.hidden_size() <= 0) return;
  const int kv = KvHeads(m);
  p.Check(m.num_heads() % kv == 0, "model.num_kv_heads=", kv,
          " does not divide model.num_heads=", m.num_heads(),
          ": choose num_kv_heads that divides num_heads (or 0 for num_heads)");
  if (m.hidden_size() % m.num_heads() != 0) {
    p.Check(false, "model.hidden_size=", m.hidden_size(),
            " is not divisible by model.num_heads=", m.num_heads(),
            ": choose num_heads that divides hidden_size");
  } else {
    const int head_dim = m.hidden_size() / m.num_heads();
    p.Check(head_dim % 2 == 0, "model.hidden_size/num_heads=", head_dim,
            " (the head dim) is odd: RoPE rotates pairs of dims; choose an even head dim");
  }
}

// Attention by heads, the MLP by its hidden size, embedding and head by the
// vocabulary; the residual stream by tokens under sequence parallelism.
void CheckTensorParallel(const config::RunConfig& c, ConfigProblems& p) {
  const config::ModelConfig& m = c.model();
  const config::ParallelConfig& par = c.parallel();
  if (par.tp() < 1) return;  // reported with the layout
  if (m.num_heads() > 0) {
    p.Check(m.num_heads() % par.tp() == 0, "model.num_heads=", m.num_heads(),
            " is not divisible by parallel.tp=", par.tp(), ": choose tp that divides num_heads");
  }
  if (m.num_heads() > 0 && m.num_kv_heads() >= 0) {
    p.Check(KvHeads(m) % par.tp() == 0, "model.num_kv_heads=", KvHeads(m),
            " is not divisible by parallel.tp=", par.tp(),
            ": choose tp that divides num_kv_heads");
  }
  if (m.ffn_hidden_size() > 0) {
    p.Check(m.ffn_hidden_size() % par.tp() == 0, "model.ffn_hidden_size=", m.ffn_hidden_size(),
            " is not divisible by parallel.tp=", par.tp(),
            ": choose tp that divides ffn_hidden_size");
  }
  if (m.vocab_size() > 0) {
    p.Check(m.vocab_size() % par.tp() == 0, "model.vocab_size=", m.vocab_size(),
            " is not divisible by parallel.tp=", par.tp(),
            ": choose a vocab size that is a multiple of tp (e.g. a multiple of 128)");
  }
  if (par.sequence_parallel() && m.seq_length() > 0) {
    p.Check(m.seq_length() % par.tp() == 0, "model.seq_length=", m.seq_length(),
            " is not divisible by parallel.tp=", par.tp(),
            " under parallel.sequence_parallel: choose tp that divides seq_length");
  }
}

// Every (virtual) pipeline chunk holds at least one layer.
void CheckPipeline(const config::RunConfig& c, ConfigProblems& p) {
  const config::ParallelConfig& par = c.parallel();
  p.Positive("parallel.virtual_stages", par.virtual_stages());
  if (par.pp() < 1 || par.virtual_stages() < 1) return;
  const int64_t chunks = int64_t{par.pp()} * par.virtual_stages();
  p.Check(c.model().num_layers() >= chunks, "model.num_layers=", c.model().num_layers(),
          " is less than parallel.pp*virtual_stages=", chunks,
          ": every pipeline chunk needs a layer; lower pp or virtual_stages");
  p.Check(par.virtual_stages() == 1 || par.pp() > 1,
          "parallel.virtual_stages=", par.virtual_stages(),
          " needs parallel.pp > 1: set virtual_stages=1 without a pipeline");
}

}  // namespace

void ValidateModelConfig(const config::RunConfig& cfg, ConfigProblems& problems) {
  CheckSizes(cfg.model(), problems);
  CheckTensorParallel(cfg, problems);
  CheckPipeline(cfg, problems);
}

}  // namespace scalemoe
