#include "model/model.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/host_values.h"
#include "core/ops.h"
#include "model/weight_spec.h"
#include "norm/scale_options.h"
#include "norm/scaled_linear.h"
#include "parallel/process_groups.h"
#include "parallel/stage_partition.h"
#include "parallel/tp_grad_reduce.h"

namespace scalemoe {

namespace {

Communicator* TpComm(const ProcessGroups* groups) {
  return groups != nullptr ? groups->tp.get() : nullptr;
}

}  // namespace

MoeTransformer::MoeTransformer(ParamRegistry& registry, const config::RunConfig& cfg,
                               const ProcessGroups* groups, int chunk)
    : registry_(registry),
      cfg_(cfg),
      groups_(groups),
      tp_(TpComm(groups), cfg.parallel().sequence_parallel()),
      num_local_experts_(cfg.moe().num_experts()) {
  const config::ModelConfig& m = cfg_.model();
  const ScaleOptions so(cfg_.scale_vectors());
  const int64_t v = m.vocab_size(), c = m.hidden_size();
  const int chunks = std::max(1, cfg.parallel().virtual_stages());
  SM_CHECK_MSG(chunk >= 0 && chunk < chunks, "model chunk ", chunk, " of parallel.virtual_stages=",
               chunks);
  if (groups != nullptr) {
    stage_ = chunk * groups->grid.sizes().pp + groups->coords.pp;
    num_stages_ = groups->grid.sizes().pp * chunks;
  } else {
    SM_CHECK_MSG(chunk == 0, "model chunk ", chunk, " without process groups: one rank holds "
                 "the whole model");
  }
  recompute_layers_ = num_stages_ == 1 && cfg.train().recompute() == config::TrainConfig::FULL;
  // Config validation has refused these already (invariants here): a direct
  // caller with an unvalidated config gets a clear abort, not a wrong model.
  StatusOr<StagePartition> partition = StagePartition::Even(m.num_layers(), num_stages_);
  SM_CHECK_MSG(partition.ok(), "unvalidated config: ", partition.status().message());
  const StageLayers& mine = partition->stage(stage_);
  const size_t first_param = registry.params().size();
  // Embedding and head are split over the vocabulary (a no-op on one TP rank).
  ParamSpec vocab_spec =
      WeightSpec("embedding.weight", {v, c}, ParamRole::kEmbedding, m.init_std(), -1);
  vocab_spec.layout.tp_split_dim = 0;
  if (mine.has_embedding) {
    if (tp_.size() > 1) {
      StatusOr<std::unique_ptr<VocabParallelEmbedding>> e = VocabParallelEmbedding::Create(
          registry, vocab_spec, *tp_.comm(),
          tp_.sequence_parallel() ? SequenceParallel::kOn : SequenceParallel::kOff);
      SM_CHECK_MSG(e.ok(), "unvalidated config: ", e.status().message());
      vocab_embedding_ = std::move(*e);
      embedding_ = vocab_embedding_->weight();
    } else {
      embedding_ = registry.Create(vocab_spec);
    }
    embedding_params_ = {first_param, registry.params().size()};
  }
  for (int l = mine.first_layer; l < mine.first_layer + mine.num_layers; ++l) {
    const size_t before = registry.params().size();
    blocks_.push_back(std::make_unique<Block>(registry, cfg_, l, groups, tp_));
    block_params_.emplace_back(before, registry.params().size());
    if (blocks_.back()->moe()) {
      num_local_experts_ = blocks_.back()->moe()->num_local_experts();
      moe_layers_.push_back(l);
    }
  }
  // Tied under PP: the last stage registers its own copy of the embedding
  // (same name and init, so bit-identical to the first stage's); the
  // trainer sums the two copies' gradients before every update.
  if (mine.has_head && m.tied_embeddings() && !mine.has_embedding) {
    const size_t before = registry.params().size();
    embedding_ = registry.Create(vocab_spec);
    embedding_params_ = {before, registry.params().size()};
  }
  const size_t before_head = registry.params().size();
  if (mine.has_head) {
    // The final γ feeds the vocab-split head: each rank gets a share of dγ.
    ParamLayout final_layout;
    final_layout.tp_partial_grad = true;
    final_scales_ = std::make_unique<BranchScales>(
        registry, so, "final_norm.scale", final_layout, c,
        std::vector<BranchSpec>{{"final_norm.scale", final_layout}},
        /*own_vectors=*/false);
    Param* head_weight = embedding_;
    if (!m.tied_embeddings()) {
      ParamSpec head_spec =
          WeightSpec("lm_head.weight", {v, c}, ParamRole::kLmHead, m.init_std(), -1);
      head_spec.layout.tp_split_dim = 0;
      head_weight = registry.Create(head_spec);
    }
    // Tied on one stage, the embedding lookup adds into the same gradient.
    const ScaledLinearOptions head_options{
        .path = so.path(),
        .split_group = tp_.comm(),
        .shared_weight_grad = m.tied_embeddings() && mine.has_embedding,
        .bf16_operands = Bf16Operands(cfg_)};
    head_ = std::make_unique<ScaledLinear>(registry, head_weight, final_scales_.get(), 0,
                                           head_options);
    if (tp_.size() > 1) {
      StatusOr<VocabParallelCrossEntropy> loss = VocabParallelCrossEntropy::Create(v, *tp_.comm());
      SM_CHECK_MSG(loss.ok(), "unvalidated config: ", loss.status().message());
      vocab_loss_.emplace(std::move(*loss));
    }
  }
  head_params_ = {before_head, registry.params().size()};
  for (size_t i = first_param; i < registry.params().size(); ++i) {
    registry.params()[i]->spec.layout.pipeline_stage = stage_;
  }
}

MoeTransformer::~MoeTransformer() = default;

Shape MoeTransformer::BoundaryShape(int64_t batch, int64_t seq) const {
  return {tp_.Rows(batch * seq), cfg_.model().hidden_size()};
}

DType MoeTransformer::BoundaryDType() const {
  return ResidualDType(cfg_, registry_.flat_values().dtype());
}

Status MoeTransformer::SumPartialGrads(const ExecContext& ctx,
                                       std::pair<size_t, size_t> range) const {
  if (groups_ == nullptr) return absl::OkStatus();
  return SumPartialGradsOverTp(ctx, registry_, range.first, range.second, *groups_->tp,
                               *groups_->etp);
}

Status MoeTransformer::CheckBatch(const Tensor& tokens, const Tensor& targets) const {
  for (const Tensor* t : {&tokens, &targets}) {
    const char* what = t == &tokens ? "tokens" : "targets";
    if (!t->defined() || t->ndim() != 2 || t->dtype() != DType::kI32 || !t->is_contiguous()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model batch: ", what, " must be a contiguous int32 tensor [B, T], got ",
          t->defined() ? t->DebugString() : std::string("an undefined tensor")));
    }
    if (t->dim(1) > cfg_.model().seq_length()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model batch: ", what, " has ", t->dim(1), " positions, more than model.seq_length=",
          cfg_.model().seq_length(), "; cut the sequences or raise model.seq_length"));
    }
    // A batch already on the device (a CUDA graph's input buffers) had its
    // ids checked here on the host before it was uploaded.
    if (t->device() != Device::kCPU) continue;
    const int32_t* ids = t->data<int32_t>();
    for (int64_t i = 0; i < t->numel(); ++i) {
      if (ids[i] < 0 || ids[i] >= cfg_.model().vocab_size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model batch: ", what, "[", i, "] = ", ids[i], " is outside the vocabulary [0, ",
            cfg_.model().vocab_size(), "); the data and model.vocab_size disagree"));
      }
    }
  }
  if (tokens.shape() != targets.shape()) {
    return absl::InvalidArgumentError(absl::StrCat("model batch: tokens ",
                                                   ShapeString(tokens.shape()), " and targets ",
                                                   ShapeString(targets.shape()), " differ"));
  }
  return absl::OkStatus();
}

Status MoeTransformer::PrepareStep(const ExecContext& ctx) {
  SM_CHECK_MSG(registry_.materialized(), "MoeTransformer::PrepareStep before Materialize");
  const DType dt = registry_.flat_values().dtype();
  for (size_t l = 0; l < blocks_.size(); ++l) {
    SM_RETURN_IF_ERROR_CTX(blocks_[l]->PrepareStep(ctx, dt), "layer ", blocks_[l]->layer(),
                           " prepare");
  }
  if (head_) {
    SM_RETURN_IF_ERROR_CTX(final_scales_->Forward(ctx, dt), "final norm prepare");
    SM_RETURN_IF_ERROR_CTX(head_->PrepareStep(ctx, dt), "lm head prepare");
  }
  return absl::OkStatus();
}

StatusOr<StageOutput> MoeTransformer::ForwardStage(const ExecContext& ctx, const Tensor& tokens,
                                                   const Tensor& targets, const Tensor& input,
                                                   bool keep_grad) {
  SM_RETURN_IF_ERROR(CheckBatch(tokens, targets));
  const DType dt = registry_.flat_values().dtype(), act = BoundaryDType();
  batch_ = tokens.dim(0);
  seq_ = tokens.dim(1);
  const int64_t n = batch_ * seq_;
  const Shape rows = BoundaryShape(batch_, seq_);
  SM_CHECK_MSG(!tp_.sequence_parallel() || n % tp_.size() == 0, "sequence parallelism splits ",
               n, " tokens over parallel.tp=", tp_.size(),
               ": make micro_batch_size * sequence length a multiple of tp");
  // The ids on the context's device (checked on the host above; one copy
  // per micro-batch on the GPU, none on the CPU).
  tokens_ = ctx.ToDevice(tokens).View({n});
  residuals_.assign(blocks_.size() + 1, Tensor());
  // The last evaluation's logits (a training forward's go in its backward):
  // released before this forward allocates its own.
  logits_ = Tensor();
  if (is_first_stage()) {
    // Looked up (and summed over the vocab shards) in the table's dtype.
    Tensor embedded = ctx.Empty(rows, dt);
    if (vocab_embedding_) {
      SM_RETURN_IF_ERROR_CTX(vocab_embedding_->Forward(ctx, tokens_, embedded),
                             "embedding forward");
    } else {
      ops::EmbeddingLookup(ctx, tokens_, embedding_->value, embedded);
    }
    residuals_[0] = InDType(ctx, embedded, act);
  } else {
    SM_CHECK_MSG(input.defined() && input.shape() == rows && input.dtype() == act,
                 "pipeline stage ", stage_, " needs an input activation ", ShapeString(rows), " ",
                 DTypeName(act));
    residuals_[0] = input;
  }
  StageOutput out;
  out.losses = ctx.Zeros({kNumLosses}, DType::kF64);
  out.tokens = n;
  const Tensor ce = out.losses.Narrow(0, kCrossEntropyLoss, 1);
  const Tensor aux = out.losses.Narrow(0, kAuxLoss, 1);
  const Tensor z = out.losses.Narrow(0, kZLoss, 1);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    residuals_[l + 1] = ctx.Empty(rows, act);
    SM_RETURN_IF_ERROR_CTX(
        blocks_[l]->Forward(ctx, residuals_[l], batch_, seq_, residuals_[l + 1]), "layer ",
        blocks_[l]->layer(), " forward");
    if (MoeLayer* moe = blocks_[l]->moe()) {
      // This layer's (aux, z), in the router's dtype: summed in f64.
      const Tensor layer_losses = ctx.Empty({2}, DType::kF64);
      ops::Copy(ctx, moe->losses(), layer_losses);
      ops::Axpy(ctx, 1.0, layer_losses, out.losses.Narrow(0, kAuxLoss, 2));
    }
    if (!keep_grad || recompute_layers_) {
      // Evaluation keeps no block's activations (no backward reads them);
      // under FULL recomputation BackwardStage's rerun rebuilds them.
      ForwardCacheStash dropped;
      blocks_[l]->VisitForwardCache(dropped);
    }
    if (!keep_grad) residuals_[l] = Tensor();  // only the last one is read on
  }
  const Tensor total = out.losses.Narrow(0, kTotalLoss, 1);
  if (!is_last_stage()) {
    out.output = residuals_.back();
    keep_grad_ = keep_grad;
    ops::Axpy(ctx, 1.0, aux, total);
    ops::Axpy(ctx, 1.0, z, total);
    return out;
  }
  n_final_ = ctx.Empty(rows, act);
  rstd_final_ = ctx.Empty({rows[0]}, StatDType(act));
  ops::RmsNormalize(ctx, residuals_.back(), cfg_.model().norm_eps(), n_final_, rstd_final_);
  StatusOr<Tensor> n_full = tp_.ToFull(ctx, n_final_);
  SM_RETURN_IF_ERROR_CTX(n_full.status(), "lm head forward");
  keep_grad_ = keep_grad;
  const Tensor target_ids = ctx.ToDevice(targets).View({n});
  const int64_t chunk = cfg_.train().loss_chunk_tokens();
  head_input_ = target_ids_ = Tensor();
  if (chunk > 0 && n > chunk) {
    d_logits_ = Tensor();  // logits_ went at the start
    SM_RETURN_IF_ERROR(ChunkedHeadLoss(ctx, *n_full, target_ids, chunk, ce, Tensor(), 0.0));
    if (keep_grad) {
      head_input_ = *n_full;
      target_ids_ = ctx.Empty({n}, DType::kI32);  // the caller's targets need not outlive this
      ops::Copy(ctx, target_ids, target_ids_);
    }
    for (const Tensor& part : {ce, aux, z}) ops::Axpy(ctx, 1.0, part, total);
    return out;
  }
  // This rank's vocab shard.
  logits_ = ctx.Empty({n, head_->out_features()}, LogitsDType(dt));
  head_->Forward(ctx, *n_full, logits_);
  d_logits_ = keep_grad ? ctx.Empty(logits_.shape(), DLogitsDType(dt)) : Tensor();
  if (vocab_loss_) {
    SM_RETURN_IF_ERROR_CTX(vocab_loss_->Forward(ctx, logits_, target_ids, d_logits_, ce),
                           "vocab-parallel cross-entropy");
  } else {
    ops::CrossEntropy(ctx, logits_, target_ids, d_logits_, ce);
  }
  for (const Tensor& part : {ce, aux, z}) ops::Axpy(ctx, 1.0, part, total);
  return out;
}

DType MoeTransformer::LogitsDType(DType master) const {
  // The master's dtype, or as the head's bf16 GEMM writes them.
  return cfg_.train().fp32_logits() ? master : head_->output_dtype(master);
}

DType MoeTransformer::DLogitsDType(DType master) const {
  // The dtype the head's backward takes as it is (bf16 under BF16: the loss
  // rounds the gradient once where the head copied it), but for the
  // vocab-parallel loss, which keeps the logits' dtype.
  return vocab_loss_ ? LogitsDType(master) : head_->copy_free_d_y_dtype();
}

Status MoeTransformer::ChunkedHeadLoss(const ExecContext& ctx, const Tensor& x,
                                       const Tensor& target_ids, int64_t chunk, const Tensor& ce,
                                       const Tensor& d_x, double loss_grad_scale) {
  const bool backward = d_x.defined();
  const DType master = registry_.flat_values().dtype();
  const int64_t n = x.dim(0), vocab = head_->out_features();
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t rows = std::min(chunk, n - first);
    // Each chunk's loss is its rows' mean: the whole micro-batch's mean
    // weighs it by its share of the rows, its gradient too.
    const double share = static_cast<double>(rows) / static_cast<double>(n);
    const Tensor logits = ctx.Empty({rows, vocab}, LogitsDType(master));
    head_->Forward(ctx, x.Narrow(0, first, rows), logits);
    const Tensor d_logits = backward ? ctx.Empty(logits.shape(), DLogitsDType(master)) : Tensor();
    const Tensor loss = ctx.Empty({1}, DType::kF64);
    const Tensor targets = target_ids.Narrow(0, first, rows);
    if (vocab_loss_) {
      SM_RETURN_IF_ERROR_CTX(vocab_loss_->Forward(ctx, logits, targets, d_logits, loss),
                             "vocab-parallel cross-entropy, tokens [", first, ", ", first + rows,
                             ")");
    } else {
      ops::CrossEntropy(ctx, logits, targets, d_logits, loss);
    }
    if (backward) {
      head_->Backward(ctx, d_logits, d_x.Narrow(0, first, rows), GradMode::kOverwrite,
                      loss_grad_scale * share);
    } else {
      ops::Axpy(ctx, share, loss, ce);
    }
  }
  return absl::OkStatus();
}

LossBreakdown ReadLosses(const ExecContext& ctx, const Tensor& losses, int64_t tokens) {
  const std::vector<double> v = ReadHostDoubles(ctx, losses);
  LossBreakdown l;
  l.total = v[kTotalLoss];
  l.cross_entropy = v[kCrossEntropyLoss];
  l.aux = v[kAuxLoss];
  l.z = v[kZLoss];
  l.tokens = tokens;
  return l;
}

StatusOr<LossBreakdown> MoeTransformer::Forward(const ExecContext& ctx, const Tensor& tokens,
                                                const Tensor& targets) {
  SM_CHECK_MSG(num_stages_ == 1, "MoeTransformer::Forward on pipeline stage ", stage_,
               ": use ForwardStage");
  SM_ASSIGN_OR_RETURN(StageOutput out,
                      ForwardStage(ctx, tokens, targets, Tensor(), /*keep_grad=*/true));
  return ReadLosses(ctx, out.losses, out.tokens);
}

StatusOr<LossBreakdown> MoeTransformer::Evaluate(const ExecContext& ctx, const Tensor& tokens,
                                                 const Tensor& targets) {
  SM_CHECK_MSG(num_stages_ == 1, "MoeTransformer::Evaluate on pipeline stage ", stage_,
               ": use ForwardStage");
  SM_ASSIGN_OR_RETURN(StageOutput out,
                      ForwardStage(ctx, tokens, targets, Tensor(), /*keep_grad=*/false));
  return ReadLosses(ctx, out.losses, out.tokens);
}

Status MoeTransformer::Backward(const ExecContext& ctx, double loss_grad_scale) {
  SM_CHECK_MSG(num_stages_ == 1, "MoeTransformer::Backward on pipeline stage ", stage_,
               ": use BackwardStage");
  return BackwardStage(ctx, Tensor(), loss_grad_scale).status();
}

StatusOr<Tensor> MoeTransformer::BackwardStage(const ExecContext& ctx, const Tensor& d_output,
                                               double loss_grad_scale) {
  SM_CHECK_MSG(keep_grad_, "MoeTransformer::Backward needs a Forward (with gradients) first");
  keep_grad_ = false;  // one Backward per Forward
  const int64_t n = batch_ * seq_;
  const Shape shape = BoundaryShape(batch_, seq_);
  const DType master = registry_.flat_values().dtype(), dt = BoundaryDType();
  Tensor d_x = ctx.Empty(shape, dt);
  if (is_last_stage()) {
    // The loss is taken: the logits go before the head's backward. Under
    // BF16 d_logits is bf16 already, but for the vocab-parallel loss's f32
    // one, which the head copies to bf16 beside it (launch/memory_estimate.cc
    // counts what is kept and that copy).
    logits_ = Tensor();
    Tensor d_n = ctx.Empty(shape, dt);
    // The vocab-split head gives this rank's share of d n_final (all tokens),
    // summed in the logits' dtype. The loss scale rides on its GEMMs.
    const Tensor d_n_full = tp_.PartialFor(ctx, d_n, n, master);
    if (target_ids_.defined()) {  // the loss ran in chunks: their logits again
      SM_RETURN_IF_ERROR(ChunkedHeadLoss(ctx, head_input_, target_ids_,
                                         cfg_.train().loss_chunk_tokens(), Tensor(), d_n_full,
                                         loss_grad_scale));
      head_input_ = target_ids_ = Tensor();
    } else {
      head_->Backward(ctx, d_logits_, d_n_full, GradMode::kOverwrite, loss_grad_scale);
    }
    SM_RETURN_IF_ERROR_CTX(tp_.ReduceToRows(ctx, d_n_full, d_n), "lm head backward");
    ops::RmsNormalizeBackward(ctx, n_final_, rstd_final_, d_n, d_x);
    d_logits_ = Tensor();
  } else {
    SM_CHECK_MSG(d_output.defined() && d_output.shape() == shape && d_output.dtype() == dt,
                 "pipeline stage ", stage_, " needs an output gradient ", ShapeString(shape));
    ops::Copy(ctx, d_output, d_x);  // the blocks overwrite their buffers; the caller's stays intact
  }
  Tensor d_in = ctx.Empty(shape, dt);
  for (size_t l = blocks_.size(); l-- > 0;) {
    if (recompute_layers_) {
      // The same input and parameters: the same cache, bit for bit. The MoE
      // layer's statistics count once (in its Backward), not per forward.
      Tensor y = ctx.Empty(shape, dt);
      SM_RETURN_IF_ERROR_CTX(blocks_[l]->Forward(ctx, residuals_[l], batch_, seq_, y), "layer ",
                             blocks_[l]->layer(), " recompute");
    }
    SM_RETURN_IF_ERROR_CTX(blocks_[l]->Backward(ctx, d_x, d_in, loss_grad_scale), "layer ",
                           blocks_[l]->layer(), " backward");
    if (recompute_layers_) {
      ForwardCacheStash dropped;  // one block's activations alive at a time
      blocks_[l]->VisitForwardCache(dropped);
    }
    std::swap(d_x, d_in);
  }
  if (!is_first_stage()) return d_x;
  const Tensor d_embedded = InDType(ctx, d_x, master);
  if (vocab_embedding_) {
    SM_RETURN_IF_ERROR_CTX(vocab_embedding_->Backward(ctx, d_embedded), "embedding backward");
  } else {
    ops::EmbeddingBackward(ctx, tokens_, d_embedded, embedding_->grad);
  }
  return Tensor();
}

Status MoeTransformer::FinishBackward(const ExecContext& ctx, const GradsReadyFn& on_ready) {
  auto ready = [&](const ParamRange& range) {
    if (!on_ready || range.first == range.second) return;
    const auto& params = registry_.params();
    const Param& last = *params[range.second - 1];
    // From the end of the parameter before (the zero padding in front of an
    // aligned matrix, core/params.h, is ready with it: GradSync's buckets
    // span it), so that the parts' ranges tile the flat buffer.
    const Param* before = range.first > 0 ? params[range.first - 1].get() : nullptr;
    const int64_t begin = before ? before->flat_offset + before->local_numel() : 0;
    on_ready(begin, last.flat_offset + last.local_numel());
  };
  // The order a fused backward finishes them: head first, then the layers
  // from the last; the embedding (tied: also written by the head) last.
  // Each part's tp_partial_grad shares are summed over (E)TP before it is
  // reported: GradientsReady may start its data-parallel reduction at once.
  if (head_) {
    SM_RETURN_IF_ERROR_CTX(head_->FinishBackward(ctx), "lm head finish backward");
    SM_RETURN_IF_ERROR_CTX(final_scales_->Backward(ctx), "final norm finish backward");
    SM_RETURN_IF_ERROR_CTX(SumPartialGrads(ctx, head_params_), "lm head gradient sum over tp");
    ready(head_params_);
  }
  for (size_t l = blocks_.size(); l-- > 0;) {
    SM_RETURN_IF_ERROR_CTX(blocks_[l]->FinishBackward(ctx), "layer ", blocks_[l]->layer(),
                           " finish backward");
    SM_RETURN_IF_ERROR_CTX(SumPartialGrads(ctx, block_params_[l]), "layer ", blocks_[l]->layer(),
                           " gradient sum over tp");
    ready(block_params_[l]);
  }
  // Tied under PP the embedding is not reported: its gradient is final only
  // once the trainer has added the other stage's copy, and the optimizer's
  // Step syncs the ranges never reported.
  if (!(num_stages_ > 1 && cfg_.model().tied_embeddings())) ready(embedding_params_);
  return absl::OkStatus();
}

std::vector<MoeLayer*> MoeTransformer::MoeLayers() const {
  std::vector<MoeLayer*> layers;
  for (const auto& b : blocks_) {
    if (b->moe()) layers.push_back(b->moe());
  }
  return layers;
}

StatusOr<std::vector<MoeLayerStats>> MoeTransformer::MoeStats(const ExecContext& ctx) const {
  // One all-reduce per router replica group for every layer's statistics.
  return MoeLayer::StepStats(ctx, MoeLayers());
}

Status MoeTransformer::UpdateExpertBiases(const ExecContext& ctx, const Tensor& skip) {
  std::vector<MoeLayer*> layers;
  for (MoeLayer* l : MoeLayers()) {
    if (l->has_expert_bias()) layers.push_back(l);
  }
  SM_RETURN_IF_ERROR(MoeLayer::ReduceStepStats(ctx, layers));
  for (MoeLayer* l : layers) SM_RETURN_IF_ERROR(l->UpdateExpertBias(ctx, skip));
  return absl::OkStatus();
}

std::vector<Tensor> MoeTransformer::RoutedExperts() const {
  std::vector<Tensor> ids;
  for (const MoeLayer* l : MoeLayers()) ids.push_back(l->expert_ids());
  return ids;
}

Status MoeTransformer::ForceRouting(const ExecContext& ctx, const std::vector<Tensor>& expert_ids) {
  const std::vector<MoeLayer*> layers = MoeLayers();
  if (!expert_ids.empty() && expert_ids.size() != layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeTransformer::ForceRouting: ", expert_ids.size(), " selections for ",
                     layers.size(), " MoE layers; give one per MoE layer or none to clear"));
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    SM_RETURN_IF_ERROR_CTX(
        layers[i]->ForceRouting(ctx, expert_ids.empty() ? Tensor() : expert_ids[i]), "layer ",
        moe_layers_[i], ": moe");
  }
  return absl::OkStatus();
}

ModelCounts MoeTransformer::Counts() const {
  const config::ModelConfig& m = cfg_.model();
  const double active_fraction =
      cfg_.moe().num_experts() > 0
          ? static_cast<double>(cfg_.moe().top_k()) / cfg_.moe().num_experts()
          : 1.0;
  ModelCounts counts;
  // Routed-expert elements are counted locally, then scaled to all E experts
  // (every expert of a layer has the same shapes; EP holds only some).
  int64_t total = 0, scale_vectors = 0, routed = 0, routed_sv = 0, routed_matmul = 0,
          matmul = 0;
  for (const auto& p : registry_.params()) {
    const ParamRole role = p->spec.role;
    if (!IsTrainable(role)) continue;
    const int64_t numel = NumElements(p->spec.shape);
    const bool is_routed = p->spec.layout.expert >= 0;
    (is_routed ? routed : total) += numel;
    if (IsScaleVector(role)) (is_routed ? routed_sv : scale_vectors) += numel;
    const bool is_matmul = role == ParamRole::kLinear || role == ParamRole::kExpertLinear ||
                           role == ParamRole::kRouter || role == ParamRole::kLmHead ||
                           (role == ParamRole::kEmbedding && m.tied_embeddings());
    if (is_matmul) (is_routed ? routed_matmul : matmul) += numel;
  }
  const int64_t num_experts = cfg_.moe().num_experts();
  auto global = [&](int64_t local) {
    return num_local_experts_ > 0 ? local / num_local_experts_ * num_experts : local;
  };
  routed = global(routed);
  routed_matmul = global(routed_matmul);
  counts.total_params = total + routed;
  counts.scale_vector_params = scale_vectors + global(routed_sv);
  counts.active_params_per_token =
      counts.total_params - routed + static_cast<int64_t>(routed * active_fraction + 0.5);
  counts.scale_vector_share =
      counts.total_params > 0
          ? static_cast<double>(counts.scale_vector_params) / counts.total_params
          : 0.0;
  const double active_matmul = matmul + routed_matmul * active_fraction;
  const int64_t heads = m.num_heads(), head_dim = m.hidden_size() / std::max(1, m.num_heads());
  counts.train_flops_per_token =
      6.0 * active_matmul + 12.0 * m.num_layers() * heads * head_dim * m.seq_length();
  return counts;
}

std::vector<ParamSpec> WholeModelSpecs(const config::RunConfig& cfg) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  std::vector<ParamSpec> specs;
  for (const auto& p : registry.params()) specs.push_back(p->spec);
  return specs;
}

void MoeTransformer::VisitForwardCache(ForwardCacheStash& stash) {
  for (int64_t* size : {&batch_, &seq_}) stash.Visit(*size);
  stash.Visit(tokens_);
  stash.Visit(residuals_);
  for (Tensor* t : {&n_final_, &rstd_final_, &d_logits_, &head_input_, &target_ids_}) {
    stash.Visit(*t);
  }
  stash.Visit(keep_grad_);
  if (vocab_embedding_) vocab_embedding_->VisitForwardCache(stash);
  for (auto& block : blocks_) block->VisitForwardCache(stash);
  if (head_) head_->VisitForwardCache(stash);
}

}  // namespace scalemoe
