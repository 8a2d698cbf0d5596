// Config validation and the parallel layout (declared in launch/config.h).
// Every rule is checked and every failure collected, so one run of
// `scalemoe check-config` shows all problems; each message names the field,
// its value and the fix.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "absl/strings/str_join.h"
#include "core/params.h"
#include "launch/config.h"

namespace scalemoe {
namespace {

class Problems {
 public:
  // Records the concatenated message when `ok` is false.
  template <typename... Parts>
  void Check(bool ok, const Parts&... parts) {
    if (!ok) list_.push_back(absl::StrCat(parts...));
  }
  Status ToStatus(int world_size) const {
    if (list_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("invalid config (world size ", world_size, "), ", list_.size(), " problem",
                     list_.size() == 1 ? "" : "s", ":\n  ", absl::StrJoin(list_, "\n  ")));
  }

 private:
  std::vector<std::string> list_;
};

void Positive(Problems& p, const char* field, int64_t value) {
  p.Check(value > 0, field, "=", value, " must be > 0: set a positive value");
}
void NonNegative(Problems& p, const char* field, double value) {
  p.Check(value >= 0 && std::isfinite(value), field, "=", value,
          " must be a finite value >= 0: set 0 to disable it or a positive value");
}
void InUnitInterval(Problems& p, const char* field, double value) {
  p.Check(value >= 0 && value < 1, field, "=", value, " must be in [0, 1): e.g. 0.9");
}

int KvHeads(const config::ModelConfig& m) {
  return m.num_kv_heads() == 0 ? m.num_heads() : m.num_kv_heads();
}

// Fills `layout` from the config and the world; returns false (with the
// reasons in `p`) when the grids do not tile the world.
bool CheckLayout(const config::RunConfig& c, int world, Problems& p, ParallelLayout* layout) {
  const config::ParallelConfig& par = c.parallel();
  p.Check(world >= 1, "world size ", world, " must be >= 1: launch at least one rank");
  Positive(p, "parallel.tp", par.tp());
  Positive(p, "parallel.pp", par.pp());
  Positive(p, "parallel.ep", par.ep());
  Positive(p, "parallel.etp", par.etp());
  p.Check(par.dp() >= 0, "parallel.dp=", par.dp(), " must be >= 0: set 0 to derive it");
  if (world < 1 || par.tp() < 1 || par.pp() < 1 || par.ep() < 1 || par.etp() < 1 || par.dp() < 0) {
    return false;
  }
  const int64_t tp_pp = int64_t{par.tp()} * par.pp();
  int64_t dp = par.dp();
  bool ok = true;
  if (dp == 0) {
    ok &= world % tp_pp == 0;
    p.Check(world % tp_pp == 0, "world size ", world,
            " is not divisible by parallel.tp*pp=", par.tp(), "*", par.pp(), "=", tp_pp,
            ": launch a multiple of ", tp_pp, " ranks or choose tp, pp whose product divides it");
    dp = world / tp_pp;
  } else {
    ok &= tp_pp * dp == world;
    p.Check(tp_pp * dp == world, "parallel.tp*dp*pp=", par.tp(), "*", dp, "*", par.pp(), "=",
            tp_pp * dp, " != world size ", world, ": set parallel.dp=0 to derive it, or launch ",
            tp_pp * dp, " ranks");
  }
  const int64_t expert_grid = int64_t{par.etp()} * par.ep() * par.pp();
  ok &= world % expert_grid == 0;
  p.Check(world % expert_grid == 0, "world size ", world,
          " is not divisible by parallel.etp*ep*pp=", par.etp(), "*", par.ep(), "*", par.pp(), "=",
          expert_grid, ": choose ep and etp so that etp*ep*pp divides the world size");
  if (!ok) return false;
  *layout = ParallelLayout{par.tp(), par.pp(),  static_cast<int>(dp),
                           par.ep(), par.etp(), static_cast<int>(world / expert_grid),
                           world};
  return true;
}

void CheckModel(const config::RunConfig& c, Problems& p) {
  const config::ModelConfig& m = c.model();
  Positive(p, "model.num_layers", m.num_layers());
  Positive(p, "model.hidden_size", m.hidden_size());
  Positive(p, "model.num_heads", m.num_heads());
  Positive(p, "model.ffn_hidden_size", m.ffn_hidden_size());
  Positive(p, "model.vocab_size", m.vocab_size());
  Positive(p, "model.seq_length", m.seq_length());
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

void CheckMoE(const config::RunConfig& c, Problems& p) {
  const config::MoEConfig& e = c.moe();
  const config::ParallelConfig& par = c.parallel();
  p.Check(e.num_experts() >= 0, "moe.num_experts=", e.num_experts(),
          " must be >= 0: set 0 for a dense model");
  NonNegative(p, "moe.capacity_factor", e.capacity_factor());
  NonNegative(p, "moe.aux_loss_coeff", e.aux_loss_coeff());
  NonNegative(p, "moe.z_loss_coeff", e.z_loss_coeff());
  NonNegative(p, "moe.expert_bias_update_rate", e.expert_bias_update_rate());
  if (e.num_experts() <= 0) {
    p.Check(par.ep() == 1, "parallel.ep=", par.ep(),
            " needs routed experts but moe.num_experts=0: set parallel.ep=1 for a dense model");
    p.Check(par.etp() == 1, "parallel.etp=", par.etp(),
            " needs routed experts but moe.num_experts=0: set parallel.etp=1 for a dense model");
    return;
  }
  p.Check(e.top_k() >= 1 && e.top_k() <= e.num_experts(), "moe.top_k=", e.top_k(),
          " must be in [1, moe.num_experts=", e.num_experts(), "]: choose top_k <= num_experts");
  Positive(p, "moe.expert_ffn_hidden_size", e.expert_ffn_hidden_size());
  p.Check(e.num_shared_experts() >= 0, "moe.num_shared_experts=", e.num_shared_experts(),
          " must be >= 0");
  p.Check(e.shared_expert_ffn_hidden_size() >= 0,
          "moe.shared_expert_ffn_hidden_size=", e.shared_expert_ffn_hidden_size(),
          " must be >= 0: set 0 for expert_ffn_hidden_size");
  p.Check(e.first_dense_layers() >= 0 && e.first_dense_layers() <= c.model().num_layers(),
          "moe.first_dense_layers=", e.first_dense_layers(),
          " must be in [0, model.num_layers=", c.model().num_layers(), "]");
  Positive(p, "moe.moe_layer_frequency", e.moe_layer_frequency());
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
  // parallelism); under sequence parallelism the rule is checked (and named)
  // in CheckParallel.
  const config::ModelConfig& m = c.model();
  const bool has_moe_layers = e.first_dense_layers() < m.num_layers();
  if (par.tp() > 1 && has_moe_layers && !par.sequence_parallel() && m.seq_length() > 0) {
    p.Check(m.seq_length() % par.tp() == 0, "model.seq_length=", m.seq_length(),
            " is not divisible by parallel.tp=", par.tp(),
            ": the MoE layers split each micro-batch's tokens over tensor-parallel ranks; "
            "choose tp that divides seq_length");
  }
}

void CheckParallel(const config::RunConfig& c, Problems& p) {
  const config::ModelConfig& m = c.model();
  const config::ParallelConfig& par = c.parallel();
  Positive(p, "parallel.virtual_stages", par.virtual_stages());
  p.Check(par.zero_stage() == 0 || par.zero_stage() == 1, "parallel.zero_stage=", par.zero_stage(),
          " is not supported: use 0 (replicated) or 1 (sharded optimizer)");
  Positive(p, "parallel.grad_bucket_elements", par.grad_bucket_elements());
  if (par.tp() >= 1) {
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
  if (par.pp() >= 1 && par.virtual_stages() >= 1) {
    const int64_t chunks = int64_t{par.pp()} * par.virtual_stages();
    p.Check(m.num_layers() >= chunks, "model.num_layers=", m.num_layers(),
            " is less than parallel.pp*virtual_stages=", chunks,
            ": every pipeline chunk needs a layer; lower pp or virtual_stages");
    p.Check(par.virtual_stages() == 1 || par.pp() > 1,
            "parallel.virtual_stages=", par.virtual_stages(),
            " needs parallel.pp > 1: set virtual_stages=1 without a pipeline");
  }
}

void CheckOptimizer(const config::RunConfig& c, Problems& p) {
  const config::OptimizerConfig& o = c.optimizer();
  p.Check(o.lr() > 0 && std::isfinite(o.lr()), "optimizer.lr=", o.lr(), " must be > 0: e.g. 3e-3");
  p.Check(o.min_lr() >= 0 && (o.lr() <= 0 || o.min_lr() <= o.lr()), "optimizer.min_lr=", o.min_lr(),
          " must be in [0, optimizer.lr=", o.lr(), "]: lower min_lr");
  NonNegative(p, "optimizer.weight_decay", o.weight_decay());
  InUnitInterval(p, "optimizer.beta1", o.beta1());
  InUnitInterval(p, "optimizer.beta2", o.beta2());
  p.Check(o.eps() > 0, "optimizer.eps=", o.eps(), " must be > 0: e.g. 1e-8");
  NonNegative(p, "optimizer.grad_clip", o.grad_clip());
  if (o.type() == config::OptimizerConfig::MUON) {
    const config::ParallelConfig& par = c.parallel();
    p.Check(par.tp() <= 1 && par.etp() <= 1, "optimizer.type=MUON with parallel.tp=", par.tp(),
            " etp=", par.etp(),
            " is not supported: Muon's Newton-Schulz step needs whole matrices but tensor "
            "parallelism splits them; use optimizer.type=ADAMW or set parallel.tp=1 and "
            "parallel.etp=1");
    p.Check(o.muon_lr() > 0, "optimizer.muon_lr=", o.muon_lr(), " must be > 0: e.g. 0.02");
    InUnitInterval(p, "optimizer.muon_momentum", o.muon_momentum());
    Positive(p, "optimizer.muon_ns_steps", o.muon_ns_steps());
  }
  std::set<std::string> known;
  for (int r = 0; r <= static_cast<int>(ParamRole::kExpertBias); ++r) {
    known.insert(ParamRoleName(static_cast<ParamRole>(r)));
  }
  std::set<std::string> seen;
  for (const config::RoleMultiplier& rm : o.role_multipliers()) {
    p.Check(known.count(rm.role()) > 0, "optimizer.role_multipliers.role='", rm.role(),
            "' is not a parameter role: use one of ", absl::StrJoin(known, ", "));
    p.Check(seen.insert(rm.role()).second, "optimizer.role_multipliers.role='", rm.role(),
            "' appears twice: keep one entry per role");
    NonNegative(p, "optimizer.role_multipliers.lr_mult", rm.lr_mult());
    NonNegative(p, "optimizer.role_multipliers.wd_mult", rm.wd_mult());
  }
}

void CheckTraining(const config::RunConfig& c, const ParallelLayout* layout, Problems& p) {
  const config::TrainConfig& t = c.train();
  const config::ScheduleConfig& s = c.schedule();
  Positive(p, "train.train_steps", t.train_steps());
  Positive(p, "train.micro_batch_size", t.micro_batch_size());
  p.Check(t.global_batch_size() >= 0, "train.global_batch_size=", t.global_batch_size(),
          " must be >= 0: set 0 for micro_batch_size * dp");
  if (layout != nullptr && t.micro_batch_size() > 0 && t.global_batch_size() > 0) {
    const int64_t per_step = int64_t{t.micro_batch_size()} * layout->dp;
    p.Check(t.global_batch_size() % per_step == 0,
            "train.global_batch_size=", t.global_batch_size(),
            " is not a multiple of train.micro_batch_size*dp=", t.micro_batch_size(), "*",
            layout->dp, "=", per_step, ": choose a global batch that is a multiple of ", per_step);
  }
  p.Check(t.eval_interval() >= 0, "train.eval_interval=", t.eval_interval(),
          " must be >= 0: set 0 to disable evaluation");
  p.Check(t.eval_interval() == 0 || t.eval_batches() > 0, "train.eval_batches=", t.eval_batches(),
          " must be > 0 when train.eval_interval > 0: e.g. 4");
  p.Check(s.warmup_steps() >= 0 && s.warmup_steps() <= t.train_steps(),
          "schedule.warmup_steps=", s.warmup_steps(),
          " must be in [0, train.train_steps=", t.train_steps(), "]: shorten the warm-up");
  p.Check(s.wsd_decay_fraction() >= 0 && s.wsd_decay_fraction() <= 1,
          "schedule.wsd_decay_fraction=", s.wsd_decay_fraction(), " must be in [0, 1]: e.g. 0.2");
  p.Check(!c.data().dataset_dir().empty(),
          "data.dataset_dir is empty: set it to the directory written by `scalemoe prepare`");
  p.Check(c.checkpoint().interval() >= 0, "checkpoint.interval=", c.checkpoint().interval(),
          " must be >= 0: set 0 to save only at the end");
  p.Check(c.checkpoint().keep_last() >= 0, "checkpoint.keep_last=", c.checkpoint().keep_last(),
          " must be >= 0: set 0 to keep all");
  Positive(p, "logging.log_interval", c.logging().log_interval());
  p.Check(!c.name().empty() && c.name().find('/') == std::string::npos, "name='", c.name(),
          "' must be non-empty without '/': it names the run directory");
}

}  // namespace

int MinimalWorldSize(const config::RunConfig& c) {
  const config::ParallelConfig& par = c.parallel();
  const int tp = std::max(par.tp(), 1), pp = std::max(par.pp(), 1);
  if (par.dp() > 0) return tp * par.dp() * pp;
  return std::lcm(tp * pp, std::max(par.etp(), 1) * std::max(par.ep(), 1) * pp);
}

StatusOr<ParallelLayout> ResolveLayout(const config::RunConfig& c, int world_size) {
  Problems p;
  ParallelLayout layout;
  if (!CheckLayout(c, world_size, p, &layout)) return p.ToStatus(world_size);
  return layout;
}

Status ValidateConfig(const config::RunConfig& c, int world_size) {
  Problems p;
  ParallelLayout layout;
  const bool layout_ok = CheckLayout(c, world_size, p, &layout);
  CheckModel(c, p);
  CheckMoE(c, p);
  CheckParallel(c, p);
  CheckOptimizer(c, p);
  CheckTraining(c, layout_ok ? &layout : nullptr, p);
  return p.ToStatus(world_size);
}

}  // namespace scalemoe
