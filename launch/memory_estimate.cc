#include "launch/memory_estimate.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/ops.h"
#include "norm/scale_options.h"
#include "parallel/pipeline_executor.h"
#include "parallel/pipeline_schedule.h"

namespace scalemoe {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The config's sizes as doubles, with the layer counts the model derives.
struct Sizes {
  // Layers, hidden, heads, kv heads, head dim, ffn, vocab, seq, micro batch.
  double L, C, H, KV, D, F, V, T, B;
  double E, K, Fe, S, Fs;  // experts, top_k, expert ffn, shared experts, shared ffn
  double moe_layers, dense_layers;
  double tp, pp, v, dp, ep, etp, edp;

  Sizes(const config::RunConfig& c, const ParallelLayout& l) {
    const config::ModelConfig& m = c.model();
    const config::MoEConfig& e = c.moe();
    L = m.num_layers();
    C = m.hidden_size();
    H = m.num_heads();
    KV = m.num_kv_heads() > 0 ? m.num_kv_heads() : H;
    D = C / H;
    F = m.ffn_hidden_size();
    V = m.vocab_size();
    T = m.seq_length();
    B = c.train().micro_batch_size();
    E = std::max(0, e.num_experts());
    K = E > 0 ? e.top_k() : 0;
    Fe = e.expert_ffn_hidden_size();
    S = E > 0 ? e.num_shared_experts() : 0;
    Fs = e.shared_expert_ffn_hidden_size() > 0 ? e.shared_expert_ffn_hidden_size() : Fe;
    // Layers [first_dense, L) every moe_layer_frequency-th (model/block.h IsMoeLayer).
    const double first = e.first_dense_layers(), every = std::max(1, e.moe_layer_frequency());
    moe_layers = E > 0 && L > first ? std::ceil((L - first) / every) : 0;
    dense_layers = L - moe_layers;
    tp = l.tp, pp = l.pp, dp = l.dp, ep = l.ep, etp = l.etp, edp = l.edp;
    v = pp > 1 ? std::max(1, c.parallel().virtual_stages()) : 1;
  }
};

std::string Num(double x) {
  return x < 1e15 && x == std::floor(x) ? absl::StrFormat("%.0f", x) : absl::StrFormat("%.3g", x);
}

// (chunk, micro-batch) pairs the first pipeline stage holds at its peak
// (parallel/pipeline_schedule.h), for the micro-batches of one step.
double StageZeroInFlight(const config::RunConfig& c, const ParallelLayout& l) {
  const config::TrainConfig& t = c.train();
  const int64_t per_step = t.global_batch_size() > 0
                               ? t.global_batch_size()
                               : static_cast<int64_t>(t.micro_batch_size()) * l.dp;
  const int64_t m =
      std::max<int64_t>(1, per_step / std::max<int64_t>(1, t.micro_batch_size() * l.dp));
  const int v = std::max(1, c.parallel().virtual_stages());
  const PipelineScheduleKind kind =
      v > 1 ? PipelineScheduleKind::kInterleaved1F1B : PipelineScheduleKind::kOneFOneB;
  StatusOr<std::vector<PipelineAction>> actions = BuildPipelineSchedule(
      kind, 0, l.pp, static_cast<int>(std::min<int64_t>(m, kPipelineTagLimit)), v);
  // A schedule the other validators refuse: bound it by every chunk's stage.
  if (!actions.ok()) return static_cast<double>(l.pp) * v;
  return PeakInFlightMicrobatches(*actions);
}

}  // namespace

std::string MemoryEstimate::Summary() const {
  return absl::StrFormat("%s per rank (weights %.3g, gradients %.3g, optimizer state %.3g, "
                         "activations %.3g GiB)",
                         FormatBytes(total_bytes()), param_bytes / kGiB, grad_bytes / kGiB,
                         optimizer_bytes / kGiB, activation_bytes / kGiB);
}

MemoryEstimate EstimateMemory(const config::RunConfig& cfg, const ParallelLayout& layout) {
  const Sizes s(cfg, layout);
  const bool bf16 = cfg.train().precision() == config::TrainConfig::BF16;
  const bool zero = cfg.parallel().zero_stage() == 1;
  const bool tied = cfg.model().tied_embeddings();
  MemoryEstimate est;

  // Bytes per weight element: the weight, its gradient, and the optimizer
  // state (master copy + moments + reduced-gradient shard under ZeRO-1,
  // divided over the replicas that share it).
  const double weight = bf16 ? 2 : 4, grad = 4;
  auto state = [&](double replicas) {
    const double master = bf16 || zero ? 4 : 0, moments = 8, shard = zero ? 4 : 0;
    return (master + moments + shard) / (zero ? replicas : 1);
  };
  // The largest stage's share of the layers.
  const double chunks = s.pp * s.v;
  const double stage_layers = std::min(s.L, std::ceil(s.L / chunks) * s.v);
  const double share = stage_layers / s.L;
  auto add_weights = [&](std::string what, std::string fields, double elements, double replicas) {
    est.rank_params += elements;
    est.param_bytes += elements * weight;
    est.grad_bytes += elements * grad;
    est.optimizer_bytes += elements * state(replicas);
    est.parts.push_back(
        {std::move(what), std::move(fields), elements * (weight + grad + state(replicas))});
  };
  const std::string tp_text = absl::StrCat(" / parallel.tp=", Num(s.tp));
  // Embedding, and the head (untied) or the last stage's copy (tied, pp > 1).
  const double vocab_mats = s.pp > 1 ? 1 : (tied ? 1 : 2);
  add_weights("embedding and head weights",
              absl::StrCat(Num(vocab_mats), " x model.vocab_size=", Num(s.V),
                           " x model.hidden_size=", Num(s.C), tp_text),
              vocab_mats * s.V * s.C / s.tp, s.dp);
  const double attn = 2 * (s.H + s.KV) * s.D * s.C;
  add_weights("attention weights",
              absl::StrCat(Num(stage_layers), " layers x 2 x (model.num_heads=", Num(s.H),
                           " + num_kv_heads=", Num(s.KV), ") x head dim ", Num(s.D),
                           " x model.hidden_size=", Num(s.C), tp_text),
              stage_layers * attn / s.tp, s.dp);
  if (s.dense_layers > 0) {
    add_weights("dense MLP weights",
                absl::StrCat(Num(s.dense_layers * share),
                             " dense layers x 3 x model.ffn_hidden_size=", Num(s.F),
                             " x model.hidden_size=", Num(s.C), tp_text),
                s.dense_layers * share * 3 * s.F * s.C / s.tp, s.dp);
  }
  const double moe = s.moe_layers * share;
  if (moe > 0) {
    add_weights("routers",
                absl::StrCat(Num(moe), " MoE layers x moe.num_experts=", Num(s.E),
                             " x model.hidden_size=", Num(s.C)),
                moe * s.E * s.C, s.dp);
    add_weights("routed experts' weights",
                absl::StrCat(Num(moe), " MoE layers x moe.num_experts=", Num(s.E),
                             " / parallel.ep=", Num(s.ep), " x 3 x moe.expert_ffn_hidden_size=",
                             Num(s.Fe), " / parallel.etp=", Num(s.etp), " x model.hidden_size=",
                             Num(s.C)),
                moe * s.E / s.ep * 3 * s.Fe / s.etp * s.C, s.edp);
    if (s.S > 0) {
      add_weights("shared experts' weights",
                  absl::StrCat(Num(moe), " MoE layers x moe.num_shared_experts=", Num(s.S),
                               " x 3 x ffn ", Num(s.Fs), " x model.hidden_size=", Num(s.C)),
                  moe * s.S * 3 * s.Fs * s.C, s.dp);
    }
  }
  est.weight_bytes = est.param_bytes + est.grad_bytes + est.optimizer_bytes;
  est.model_params = (tied ? 1 : 2) * s.V * s.C + s.L * attn + s.dense_layers * 3 * s.F * s.C +
                     s.moe_layers * (s.E * s.C + s.E * 3 * s.Fe * s.C + s.S * 3 * s.Fs * s.C);
  // Per layer at most 4 weights, 3 input γ's, 4 u's, 3 head norms and 2
  // sandwich norms (two tensors each under OR); per expert 3 weights, 2 γ's
  // and 3 u's (two tensors each under OR).
  est.tensors = 8 + s.L * 32 + s.moe_layers * (1 + 16 * (s.E + s.S));

  // Activations kept for backward (train.recompute; the in-flight counts
  // are the first pipeline stage's, the largest):
  // - one stage, NONE: every layer's of one micro-batch;
  // - one stage, FULL: one layer's, plus every layer's input (B*T*C);
  // - pipeline, NONE: one chunk's layers per in-flight (chunk, micro-batch)
  //   (min(pp, micro-batches) under 1F1B; the interleaved schedule's peak);
  // - pipeline, FULL: one chunk's layers (recomputed in backward) plus the
  //   in-flight boundaries.
  // Activations under BF16: the FFNs' F-wide intermediates (gate, up, h)
  // and attention's q, k, v and output are bf16 (model/mlp.h,
  // moe/grouped_experts.h, model/attention.h), and so are the residual
  // stream, the norms' outputs and the MoE layer's permuted rows unless
  // train.fp32_residual_connection; the router keeps an fp32 copy of its
  // input then. Statistics (rstd, log-sum-exp) are fp32, and so are the
  // logits unless train.fp32_logits is off.
  // Operand copies made per call and released are not counted.
  const bool bf16_stream = bf16 && !cfg.train().fp32_residual_connection();
  const double act = 4, ffn_act = bf16 ? 2 : 4, tokens = s.B * s.T;
  const double stream = bf16_stream ? 0.5 : 1;  // C-wide values' bytes relative to fp32
  const bool recompute = cfg.train().recompute() == config::TrainConfig::FULL;
  const double chunk_layers = std::ceil(s.L / chunks);
  double kept_layers = recompute ? 1 : s.L, boundaries = recompute ? s.L : 0;
  if (s.pp > 1) {
    kept_layers = chunk_layers * (recompute ? 1 : StageZeroInFlight(cfg, layout));
    boundaries = recompute ? chunks : 0;
  }
  auto add_acts = [&](std::string what, std::string fields, double elements, double bytes) {
    est.activation_bytes += elements * bytes;
    est.parts.push_back({std::move(what), std::move(fields), elements * bytes});
  };
  const std::string batch = absl::StrCat("train.micro_batch_size=", Num(s.B),
                                         " x model.seq_length=", Num(s.T));
  // Attention keeps one log-sum-exp per query row, never the [B, H, T, T]
  // probabilities (core/ops.h, CausalAttention).
  add_acts(
      "attention log-sum-exp",
      absl::StrCat(Num(kept_layers), " layers x ", batch, " x model.num_heads=", Num(s.H), tp_text),
      kept_layers * tokens * s.H / s.tp, act);
  // The per-head norms (DNP, QK-norm; model/attention.h) keep their input,
  // and one rstd a head row: in fp32, or in bf16 under BF16 with
  // train.fp32_head_norm_input off where they run as one op (a γ, head dims
  // up to 256; else they keep their fp32 normalized rows).
  const ScaleOptions so(cfg.scale_vectors());
  const bool qk_norm = cfg.model().qk_norm();
  const double normed_heads =
      (so.NormalizedOutput(config::ScaleVectorConfig::Q) || qk_norm ? s.H : 0) +
      (so.NormalizedOutput(config::ScaleVectorConfig::K) || qk_norm ? s.KV : 0) +
      (so.NormalizedOutput(config::ScaleVectorConfig::V) ? s.KV : 0);
  if (normed_heads > 0) {
    const bool one_op = !so.none() && s.D <= ops::kScaledRmsNormalizeMaxDim;
    const double input_bytes = bf16 && one_op && !cfg.train().fp32_head_norm_input() ? 2 : 4;
    add_acts("per-head norms' inputs",
             absl::StrCat(Num(kept_layers), " layers x ", batch, " x ", Num(normed_heads),
                          " normed heads (DNP, model.qk_norm)", tp_text, " x (head dim ", Num(s.D),
                          " x ", Num(input_bytes), " + 4 bytes: train.fp32_head_norm_input)"),
             kept_layers * tokens * normed_heads / s.tp * (s.D * input_bytes + 4), 1);
  }
  // Values per token and layer, weighted by their bytes relative to fp32.
  // An MoE layer keeps its K permuted output rows, and its K permuted input
  // rows unless moe.fuse_permute reads them through the permutation (no EP,
  // ETP or capacity: moe/moe_layer.h).
  const double ffn = ffn_act / act;
  const bool fused_permute =
      cfg.moe().fuse_permute() && s.ep == 1 && s.etp == 1 && cfg.moe().capacity_factor() == 0;
  const auto values_per_token = [&](double permuted_rows) {
    return 10 * s.C * stream + 2 * (s.H + 2 * s.KV) * s.D / s.tp * ffn +
           (s.dense_layers * 4 * ffn * s.F / s.tp +
            s.moe_layers * (s.K * (permuted_rows * s.C * stream + 4 * ffn * s.Fe / s.etp) +
                            (bf16_stream ? s.C : 0) + 4 * ffn * s.S * s.Fs + 2 * s.E)) /
               s.L;
  };
  const double per_token = values_per_token(fused_permute ? 1 : 2);
  // The layer whose backward runs: its weight gradient gathers the permuted
  // input again under moe.fuse_permute (moe/grouped_experts.h, InputRows).
  const double working_per_token = values_per_token(2);
  add_acts("layer activations",
           absl::StrCat(Num(kept_layers), " layers x ", batch, " x ~", Num(std::round(per_token)),
                        " fp32-sized values per token (model.hidden_size, ffn sizes, moe.top_k; "
                        "train.recompute=",
                        config::TrainConfig::Recompute_Name(cfg.train().recompute()), ")"),
           kept_layers * tokens * per_token + boundaries * tokens * s.C * stream, act);
  // The logits are fp32, or bf16 under BF16 with train.fp32_logits off.
  // Their gradient is bf16 where the head's GEMMs take it as it is (BF16 on
  // one TP rank, model/model.cc) or the logits are bf16, else fp32: under
  // BF16 with TP and fp32 logits the vocab-parallel loss's, which the head
  // copies to bf16.
  const bool bf16_logits = bf16 && !cfg.train().fp32_logits();
  const bool bf16_d_logits = bf16 && (s.tp == 1 || bf16_logits);
  const bool d_logits_copy = bf16 && !bf16_d_logits;
  const double logit_bytes = bf16_logits ? 2 : 4, d_logit_bytes = bf16_d_logits ? 2 : 4;
  // train.loss_chunk_tokens: one chunk's at a time (model/model.h), and
  // under sequence parallelism the head's gathered input is kept.
  const double chunk = cfg.train().loss_chunk_tokens();
  const bool chunked = chunk > 0 && chunk < tokens;
  add_acts(
      "logits and their gradient",
      absl::StrCat(chunked ? absl::StrCat("train.loss_chunk_tokens=", Num(chunk)) : batch,
                   " x model.vocab_size=", Num(s.V), tp_text, " x (", Num(logit_bytes), " + ",
                   Num(d_logit_bytes), " bytes: the logits, train.fp32_logits; their gradient)"),
      (chunked ? chunk : tokens) * s.V / s.tp, logit_bytes + d_logit_bytes);
  if (chunked && s.tp > 1 && cfg.parallel().sequence_parallel()) {
    add_acts("LM head's gathered input (train.loss_chunk_tokens, sequence parallel)",
             absl::StrCat(batch, " x model.hidden_size=", Num(s.C)), tokens * s.C * stream, act);
  }
  // Transients at the backward's peak, beside what is kept: the gradients of
  // the layer whose backward runs (about one layer's activations again) and
  // the head's bf16 copy of an fp32 d_logits (BF16 with TP). Without them
  // FULL's estimate was low by 8 % at micro-batch 8 (13.3 GiB against 14.34
  // on an H200; then 14.4) and put gpu_moe_125m's micro-batch 256, which ran
  // out of the H200's 140 GiB, at 103 GiB (then 139). Those peaks had an
  // fp32 d_logits and its bf16 copy; the bf16 d_logits takes 4 bytes a logit
  // off the estimate (1 GiB at micro-batch 8, 32 at 256) and 0.5 to 1 GiB
  // off the peak at 8: not measured again.
  add_acts("backward working set",
           absl::StrCat("1 layer x ", batch, " x ~", Num(std::round(working_per_token)),
                        " values per token (the running layer's gradients)",
                        d_logits_copy ? absl::StrCat(", and d_logits' bf16 copy: ",
                                                     chunked ? "train.loss_chunk_tokens" : batch,
                                                     " x model.vocab_size=", Num(s.V), tp_text)
                                      : std::string()),
           tokens * working_per_token * act +
               (d_logits_copy ? (chunked ? chunk : tokens) * s.V / s.tp * 2 : 0),
           1);
  // The GPU attention backward (bf16 operands) stores dSᵀ for its d_q pass
  // while it runs: at most ops::kAttentionDsBudgetBytes (core/ops.h).
  if (bf16) {
    const double ds_bytes = static_cast<double>(ops::AttentionDsScratchBytes(
        static_cast<int64_t>(s.B), static_cast<int64_t>(s.T), static_cast<int64_t>(s.H / s.tp)));
    if (ds_bytes > 0) {
      add_acts("attention backward's dS tiles",
               absl::StrCat("train.micro_batch_size=", Num(s.B), " x model.num_heads=", Num(s.H),
                            tp_text, " x the causal 64 x 64 tiles of model.seq_length=", Num(s.T),
                            ", at most ", FormatBytes(ops::kAttentionDsBudgetBytes)),
               ds_bytes, 1);
    }
  }
  std::sort(est.parts.begin(), est.parts.end(),
            [](const MemoryPart& a, const MemoryPart& b) { return a.bytes > b.bytes; });
  return est;
}

void ValidateSizes(const config::RunConfig& c, const ParallelLayout& layout, ConfigProblems& p) {
  const config::ModelConfig& m = c.model();
  const config::MoEConfig& e = c.moe();
  for (const auto& [field, value] :
       {std::pair{"model.hidden_size", m.hidden_size()},
        {"model.ffn_hidden_size", m.ffn_hidden_size()},
        {"moe.expert_ffn_hidden_size", e.expert_ffn_hidden_size()},
        {"moe.shared_expert_ffn_hidden_size", e.shared_expert_ffn_hidden_size()}}) {
    p.Check(value <= kMaxWidth, field, "=", value, " is above ", Num(kMaxWidth),
            ", the largest width this trainer accepts (over 10x any published model's): "
            "choose a real size");
  }
  const double budget = c.train().device_memory_gib();
  if (!p.Check(budget > 0 && std::isfinite(budget), "train.device_memory_gib=", budget,
               " must be > 0: the memory of one device (GiB), e.g. 80")) {
    return;
  }
  const config::TrainConfig& t = c.train();
  const double global = t.global_batch_size() > 0
                            ? t.global_batch_size()
                            : static_cast<double>(t.micro_batch_size()) * layout.dp;
  const double tokens = global * m.seq_length();
  const std::string batch =
      t.global_batch_size() > 0
          ? absl::StrCat("train.global_batch_size=", t.global_batch_size())
          : absl::StrCat("train.micro_batch_size=", t.micro_batch_size(), " x dp=", layout.dp);
  p.Check(tokens <= kMaxTokensPerStep, batch, " x model.seq_length=", m.seq_length(), " = ",
          Num(tokens),
          " tokens per step is above ", Num(kMaxTokensPerStep),
          " (100x the largest published batches): lower the global batch or the sequence length");

  const MemoryEstimate est = EstimateMemory(c, layout);
  p.Check(est.tensors <= kMaxTensors, "model.num_layers=", m.num_layers(),
          " with moe.num_experts=", e.num_experts(), " and moe.num_shared_experts=",
          e.num_shared_experts(), " make up to ", Num(est.tensors),
          " parameter tensors, above the limit ", Num(kMaxTensors),
          " (each is registered, checkpointed and listed by name): fewer layers or experts");
  if (est.total_bytes() <= budget * kGiB) return;
  std::string largest;
  for (size_t i = 0; i < est.parts.size() && i < 3; ++i) {
    absl::StrAppend(&largest, i == 0 ? "" : "; ", est.parts[i].what, " ",
                    FormatBytes(est.parts[i].bytes), " (", est.parts[i].fields, ")");
  }
  p.Check(false, "estimated memory ", est.Summary(), " is above train.device_memory_gib=", budget,
          " (launch/memory_estimate.h). Largest: ", largest,
          ". Shrink the largest, or spread it: parallel.tp or pp for dense layers, parallel.ep "
          "or etp for experts, parallel.zero_stage=1 for optimizer state, a smaller "
          "train.micro_batch_size or model.seq_length, or train.recompute=FULL, for activations; "
          "or raise "
          "train.device_memory_gib if the device has more");
}

}  // namespace scalemoe
