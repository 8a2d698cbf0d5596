// MoeTransformer: the whole single-rank model on one ParamRegistry:
//   embedding ("embedding.weight" [V, C]) -> blocks (model/block.h) ->
//   final norm ("final_norm": n = x/rms(x), Input-Norm γ "final_norm.scale"
//   feeding the head) -> LM head (tied to the embedding, or
//   "lm_head.weight" [V, C]) -> cross-entropy, mean over tokens.
// Total loss = CE + Σ_layers (aux + z) of the MoE layers.
//
// Step protocol (the trainer's): PrepareStep after every parameter update
// (effective γ's and folded weights); per micro-batch Forward then Backward
// (Backward accumulates loss_grad_scale · d(total)/dθ into the registry's
// grads); FinishBackward once after the last Backward (unfolds the folded
// weights' gradients into the parameters'). Evaluate runs a forward only and
// replaces the Forward cache (do not call it between Forward and Backward).
// The parameter dtype (f32/f64) is the registry's; activations follow it,
// except under train.precision BF16, where the residual stream and the
// activations between sublayers are bf16 (BoundaryDType), and so are the
// logits with train.fp32_logits off.
//
// Activation recomputation (train.recompute): NONE keeps every layer's
// forward cache until Backward; FULL on a single stage keeps only each
// block's input and reruns the block's forward in Backward (one block's
// activations alive at a time). Under pipeline parallelism FULL is the
// stage's business (model/pipeline_model_stage.h), not the model's.
//
// Pipeline parallelism (groups->grid.sizes().pp > 1): this rank holds stage
// groups->coords.pp of StagePartition::Even(num_layers, pp): only that
// stage's blocks are registered (global names unchanged,
// ParamLayout.pipeline_stage set), the embedding on the first stage, the
// final norm and the head on the last. Tied embeddings: the last stage holds
// its own copy of "embedding.weight" as the head weight (ParamLayout
// .pipeline_stage tells the copies apart); the trainer keeps the copies
// identical by summing their gradients (TrainLoop::SumTiedEmbeddingGrads),
// and FinishBackward does not report the embedding range. A stage runs
// ForwardStage / BackwardStage (activations [B*T, C] cross the boundaries,
// model/pipeline_model_stage.h drives them); Forward / Backward / Evaluate
// are the whole-model calls and need a single stage.
//
// Tensor parallelism (groups->grid.sizes().tp > 1, Megatron's layout): the
// embedding and the LM head are split over the vocabulary (vocab-parallel
// lookup, head column-parallel, vocab-parallel cross-entropy: no rank holds
// the full logits, logits() is this rank's [B*T, V/tp] shard); attention and
// MLP are column/row-parallel pairs, the MoE layer splits the tokens over TP
// (model/block.h). With parallel.sequence_parallel the residual stream
// between sublayers holds only this rank's B*T/tp token rows (also across
// pipeline boundaries, BoundaryShape). Every parameter's ParamSpec says how
// it is laid out (shape global, tp_split_dim, tp_partial_grad); after
// FinishBackward each rank holds its data-parallel replica's whole gradient
// for everything it holds (the partial ones summed over (E)TP).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/forward_cache.h"
#include "core/params.h"
#include "core/tensor.h"
#include "model/block.h"
#include "model/tp_region.h"
#include "norm/branch_scales.h"
#include "norm/scaled_linear.h"
#include "parallel/tp_cross_entropy.h"
#include "parallel/tp_embedding.h"

namespace scalemoe {

// The losses of a forward stay on the device as one f64 [kNumLosses] tensor
// (indices below): the step adds them up there and the host reads them only
// when it logs. LossBreakdown is their host copy.
enum LossIndex : int { kTotalLoss = 0, kCrossEntropyLoss, kAuxLoss, kZLoss, kNumLosses };

struct LossBreakdown {
  double total = 0, cross_entropy = 0, aux = 0, z = 0;
  int64_t tokens = 0;
};
// Host copy of a [kNumLosses] loss tensor (one ExecContext::ToHost read).
LossBreakdown ReadLosses(const ExecContext& ctx, const Tensor& losses, int64_t tokens = 0);

// One stage's forward result.
struct StageOutput {
  // f64 [kNumLosses] on the context: cross_entropy on the last stage only (0
  // elsewhere); aux and z of this stage's MoE layers; total = their sum.
  Tensor losses;
  int64_t tokens = 0;  // B*T
  Tensor output;       // [B*T, C] the last block's output (undefined on the last stage)
};

struct ModelCounts {
  int64_t total_params = 0;             // every trainable element
  int64_t active_params_per_token = 0;  // routed experts counted top_k of num_experts
  int64_t scale_vector_params = 0;      // γ, u, α, β (Input- and Output-Norm)
  double scale_vector_share = 0;        // scale_vector_params / total_params
  // 6 · (active matmul weights, head included) + 12 · L · H·D · T (attention
  // scores and values, PaLM's convention).
  double train_flops_per_token = 0;
};

class MoeTransformer {
 public:
  // Registers every parameter (allocates nothing: the caller materializes).
  // groups (may be null = one rank) must outlive the model; under expert
  // parallelism only the owned experts are registered (moe/moe_layer.h).
  // With parallel.virtual_stages = v > 1 (interleaved pipeline) a rank holds
  // v models, one per `chunk`: chunk c of pipeline rank r is virtual stage
  // c*pp + r of StagePartition::Even(num_layers, pp*v); stage() and
  // num_stages() are virtual ones. All chunks register into one registry.
  // Without groups the model is whole (one stage), whatever the config says.
  MoeTransformer(ParamRegistry& registry, const config::RunConfig& cfg,
                 const ProcessGroups* groups = nullptr, int chunk = 0);
  ~MoeTransformer();
  MoeTransformer(const MoeTransformer&) = delete;
  MoeTransformer& operator=(const MoeTransformer&) = delete;

  // Checks a batch against the model (shapes, int32, ids in the vocabulary).
  // Host tensors, or tensors already on the context's device whose ids the
  // caller checked on the host before the upload (a CUDA graph's inputs:
  // launch/micro_batch_graph.h); ids are checked only on the host.
  Status CheckBatch(const Tensor& tokens, const Tensor& targets) const;

  // Errors: every step call returns the first failure (a bad batch, a
  // collective that failed) as a Status whose message names the part of the
  // model ("layer 3: moe: all-to-all on ep[...] ..."); the caller stops.
  Status PrepareStep(const ExecContext& ctx);
  // tokens, targets: [B, T] int32 CPU tensors (T <= seq_length). Forward
  // and Evaluate return the losses on the host (one ToHost read each: for
  // tests and tools; the trainer keeps ForwardStage's device losses).
  StatusOr<LossBreakdown> Forward(const ExecContext& ctx, const Tensor& tokens,
                                  const Tensor& targets);
  Status Backward(const ExecContext& ctx, double loss_grad_scale);
  // Called with each flat range [begin, end) of the registry whose gradients
  // are final, so gradient communication can start while the rest finishes.
  using GradsReadyFn = std::function<void(int64_t begin, int64_t end)>;
  // Once per step after the last Backward: unfolds the folded weights'
  // gradients, last layer first, reporting each finished part to `on_ready`.
  Status FinishBackward(const ExecContext& ctx, const GradsReadyFn& on_ready = nullptr);
  StatusOr<LossBreakdown> Evaluate(const ExecContext& ctx, const Tensor& tokens,
                                   const Tensor& targets);

  // This stage's part. tokens/targets as for Forward (every stage reads
  // them: B and T, the embedding on the first stage, the loss on the last);
  // input: the previous stage's output [B*T, C] (ignored on the first
  // stage). keep_grad = false: no Backward may follow (evaluation), and no
  // block's activations are kept, whatever train.recompute says.
  StatusOr<StageOutput> ForwardStage(const ExecContext& ctx, const Tensor& tokens,
                                     const Tensor& targets, const Tensor& input, bool keep_grad);
  // Backward of the last ForwardStage: d_output is the gradient of its
  // output (ignored on the last stage, which starts from its loss). Returns
  // the gradient of its input [B*T, C], undefined on the first stage.
  StatusOr<Tensor> BackwardStage(const ExecContext& ctx, const Tensor& d_output,
                                 double loss_grad_scale);
  // Moves the forward cache BackwardStage reads (the residual stream, every
  // block's cache, the final norm's, d logits; not logits(), which stays the
  // last Forward's) into or out of `stash` (core/forward_cache.h): a pipeline
  // stage keeps one per in-flight micro-batch (model/pipeline_model_stage.h).
  void VisitForwardCache(ForwardCacheStash& stash);
  // The activation crossing a stage boundary for a [batch, seq] micro-batch:
  // [B*T, C], or under sequence parallelism this TP rank's token rows
  // [B*T/tp, C].
  Shape BoundaryShape(int64_t batch, int64_t seq) const;
  // Its dtype: the residual stream's (bf16 under train.precision BF16,
  // norm/scaled_linear.h ResidualDType), as is its gradient's.
  DType BoundaryDType() const;
  int stage() const { return stage_; }
  int num_stages() const { return num_stages_; }
  bool is_first_stage() const { return stage_ == 0; }
  bool is_last_stage() const { return stage_ == num_stages_ - 1; }

  // MoE layers of this stage only, in layer order (MoeLayer::StepStats:
  // this step's training micro-batches, reduced over the routers' replicas
  // once per step for all layers together; read on the host: for logging);
  // MoeLayerIndices() gives each one's global layer index. Every rank of the
  // stage calls it alike.
  StatusOr<std::vector<MoeLayerStats>> MoeStats(const ExecContext& ctx) const;
  std::vector<int> MoeLayerIndices() const { return moe_layers_; }
  // Expert-bias update of every MoE layer from its reduced step loads, on
  // the device (one reduction for all layers). Every rank of the stage calls it.
  // skip: the step's non-finite flag (i32[1] on ctx, may be undefined).
  Status UpdateExpertBiases(const ExecContext& ctx, const Tensor& skip = Tensor());
  // Tests only (precision checks that hold the routing fixed; see
  // Router::ForceSelection): RoutedExperts() gives each MoE layer's (this
  // stage's, in layer order) expert_ids [B*T (under TP this rank's rows), K]
  // i32 of the last Forward; ForceRouting makes every later Forward of
  // those layers use the given ids (one per MoE layer, same order and
  // shapes, on ctx's device) instead of their top-k; an empty vector clears.
  std::vector<Tensor> RoutedExperts() const;
  Status ForceRouting(const ExecContext& ctx, const std::vector<Tensor>& expert_ids);
  // Global totals: all E routed experts counted, whichever this rank holds.
  ModelCounts Counts() const;

  // Logits [B*T, V] of the last Forward/Evaluate (tests, generation); under
  // TP this rank's vocabulary shard [B*T, V/tp]. Released (undefined) by the
  // Backward that follows a Forward. Undefined when the loss ran in chunks
  // (train.loss_chunk_tokens): no chunk's logits outlive their loss.
  const Tensor& logits() const { return logits_; }

 private:
  // train.loss_chunk_tokens: the LM head and its loss over x's rows (the
  // head's input, all B*T tokens) a chunk of at most `chunk` rows at a
  // time. Forward (d_x undefined): adds the mean loss into `ce` (each
  // chunk's mean weighted by its share of the rows). Backward (d_x [B*T,
  // C] defined, ce ignored): makes each chunk's logits again with their
  // gradient and runs the head's backward of loss_grad_scale times it into
  // d_x's rows.
  Status ChunkedHeadLoss(const ExecContext& ctx, const Tensor& x, const Tensor& target_ids,
                         int64_t chunk, const Tensor& ce, const Tensor& d_x,
                         double loss_grad_scale);
  // The logits' dtype (train.fp32_logits) and their gradient's, for master
  // weights of `master`. After PrepareStep.
  DType LogitsDType(DType master) const;
  DType DLogitsDType(DType master) const;
  std::vector<MoeLayer*> MoeLayers() const;  // this stage's, in layer order
  // Sums the tp_partial_grad gradients of registry params [range) over (E)TP.
  Status SumPartialGrads(const ExecContext& ctx, std::pair<size_t, size_t> range) const;

  ParamRegistry& registry_;
  const config::RunConfig cfg_;
  const ProcessGroups* groups_;  // may be null (one rank)
  int stage_ = 0, num_stages_ = 1;
  TpRegion tp_;
  Param* embedding_ = nullptr;  // first stage; also the last when tied
  std::unique_ptr<VocabParallelEmbedding> vocab_embedding_;  // first stage under TP
  std::optional<VocabParallelCrossEntropy> vocab_loss_;      // last stage under TP
  int num_local_experts_ = 0;  // routed experts per MoE layer held here (E without EP)
  std::vector<std::unique_ptr<Block>> blocks_;   // this stage's layers
  std::vector<int> moe_layers_;                  // global indices of this stage's MoE layers
  // Registry indices [first, end) of the parameters each part registered, for
  // FinishBackward's ready ranges (registration order = flat order).
  using ParamRange = std::pair<size_t, size_t>;
  ParamRange embedding_params_{0, 0};
  std::vector<ParamRange> block_params_;  // per entry of blocks_
  ParamRange head_params_{0, 0};
  std::unique_ptr<BranchScales> final_scales_;  // last stage; one branch: the head
  std::unique_ptr<ScaledLinear> head_;          // last stage
  // Forward cache.
  int64_t batch_ = 0, seq_ = 0;
  Tensor tokens_;                  // [B*T] int32
  std::vector<Tensor> residuals_;  // L+1 tensors [rows, C]: block inputs and the last output
                                   // (L = this stage's layers; rows = tp_.Rows(B*T))
  Tensor n_final_, rstd_final_;    // final norm
  Tensor logits_, d_logits_;       // [B*T, V]; d_logits_ of d(CE)/d logits, in the head's
                                   // copy_free_d_y_dtype (the logits' for vocab_loss_)
  // The loss in chunks (train.loss_chunk_tokens), for the backward's second
  // pass: the head's input [B*T, C] (n_final_ itself without TP) and a copy
  // of the targets [B*T]; undefined otherwise.
  Tensor head_input_, target_ids_;
  bool keep_grad_ = false;         // the cache awaits its Backward
  // train.recompute FULL on a single stage: ForwardStage drops each block's
  // cache (keeping its input in residuals_), BackwardStage reruns the
  // block's forward just before its backward and drops the cache after.
  bool recompute_layers_ = false;
};

// The ParamSpecs of the whole model `cfg` describes, as one rank holds it
// (global names and shapes; what export reads to fold scale vectors).
std::vector<ParamSpec> WholeModelSpecs(const config::RunConfig& cfg);

}  // namespace scalemoe
