// TrainLoop: the training loop behind Train() (launch/trainer.h), shared by
// its implementation files — trainer.cc (set-up, the step loop, evaluation,
// logging), train_checkpoint.cc (save/resume), train_pipeline.cc (pipeline
// stages). Internal to launch/: nothing else includes it.
#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/context.h"
#include "core/params.h"
#include "data/token_loader.h"
#include "launch/metrics.h"
#include "launch/micro_batch_graph.h"
#include "launch/scale_vector_stats.h"
#include "launch/tensorboard.h"
#include "launch/trainer.h"
#include "model/model.h"
#include "optim/distributed_optimizer.h"
#include "parallel/local_communicator.h"
#include "parallel/pipeline_executor.h"

namespace scalemoe {

// Views a loader micro-batch as the model's [B, T] int32 tensors (the batch
// must outlive them).
std::pair<Tensor, Tensor> BatchTensors(MicroBatch& batch);

// Sums `values` element-wise over `comm` (host scalars: logging, not hot).
StatusOr<std::vector<double>> SumOver(Communicator& comm, std::vector<double> values);

class TrainLoop {
 public:
  explicit TrainLoop(const TrainOptions& options)
      : options_(options),
        cfg_(options.config),
        local_groups_(options.groups ? nullptr
                                     : std::make_unique<ProcessGroups>(LocalProcessGroups())),
        groups_(options.groups ? *options.groups : *local_groups_),
        registry_(ShardCoords{.tp_rank = groups_.coords.tp,
                              .tp_size = groups_.grid.sizes().tp,
                              .etp_rank = groups_.coords.etp,
                              .etp_size = groups_.grid.sizes().etp}) {}

  StatusOr<TrainResult> Run();

 private:
  bool is_rank0() const { return groups_.coords.global == 0; }
  bool pipelined() const { return groups_.grid.sizes().pp > 1; }
  Status Setup();
  Status SetupPipeline();
  // One step's forward/backward passes on this rank; returns the sums over
  // its micro-batches of {total, ce, aux, z} (this stage's share under PP).
  // This rank's loss sums over the step's micro-batches, f64 [kNumLosses]
  // on ctx_ (model/model.h).
  StatusOr<Tensor> ForwardBackward();
  StatusOr<double> EvaluatePipelined();
  // Tied embeddings under PP: the first and last stage both end with the sum
  // of their copies' local gradients (before the data-parallel reduction).
  Status SumTiedEmbeddingGrads();
  Status Resume();
  StatusOr<double> UnigramLoss();
  StatusOr<double> Evaluate();
  Status SaveCheckpoint(int64_t step);
  std::vector<checkpoint::NamedTensor> CheckpointTensors(bool for_save) const;
  // Every MoE layer of the model with its global layer index, on every rank:
  // under PP each stage contributes its own layers (a sum over the pp group).
  StatusOr<std::vector<std::pair<int, MoeLayerStats>>> AllMoeStats();
  Status LogStep(int64_t step, const LossBreakdown& mean, const StepStats& stats,
                 double tokens_per_second, double eta_seconds);
  // The STOP message; `skipped_in_a_row` > 0: SKIP reached its limit.
  Status NonFinite(int64_t step, double loss, double grad_norm,
                   int64_t skipped_in_a_row = 0) const;
  // What the host learns of the step, in one ToHost read: the mean losses,
  // the gradient norm and the non-finite record (core/ops.h TrackNonFinite).
  struct StepReport {
    LossBreakdown mean;
    double grad_norm = 0;
    int64_t skipped_total = 0, first_bad_step = 0, longest_skip_run = 0;
  };
  StepReport ReadStepReport(const Tensor& mean_losses, const Tensor& grad_norm) const;
  // Applies train.on_nonfinite to what `report` says happened so far: the
  // STOP message after any non-finite step, SKIP's after too many in a row.
  Status CheckNonFinite(const StepReport& report) const;

  const TrainOptions& options_;
  const config::RunConfig& cfg_;
  ExecContext ctx_ = ExecContext::Cpu();         // train.device's, set by Setup
  std::unique_ptr<ProcessGroups> local_groups_;  // world of one, when none given
  ProcessGroups& groups_;
  ParamRegistry registry_;
  // This rank's model: one chunk, or parallel.virtual_stages of them under the
  // interleaved pipeline schedule (built in Setup, once the layout is checked).
  std::vector<std::unique_ptr<MoeTransformer>> chunks_;
  MoeTransformer& model() const { return *chunks_.front(); }
  // Whether this rank holds the first / last (virtual) pipeline stage.
  bool holds_first_stage() const { return chunks_.front()->is_first_stage(); }
  bool holds_last_stage() const { return chunks_.back()->is_last_stage(); }
  std::unique_ptr<DistributedOptimizer> optimizer_;
  std::optional<PipelineExecutor> executor_;  // pp > 1
  std::optional<MicroBatchGraph> graph_;      // train.cuda_graphs
  std::optional<TokenLoader> train_loader_;
  std::optional<TokenLoader> val_loader_;
  std::unique_ptr<MetricsWriter> metrics_;         // rank 0
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0
  // logging.scale_vector_stats: the scale-vector figures of each log record
  // (every rank takes part in their world sum).
  std::optional<ScaleVectorStats> scale_vector_stats_;
  int64_t start_step_ = 0;
  Tensor nonfinite_tracker_;  // f64 [4] on ctx_ (core/ops.h TrackNonFinite)
  Tensor loss_sums_;          // f64 [kNumLosses]: ForwardBackward's, without PP
  int64_t accumulation_ = 1;    // micro-batches per step on each rank
  double flops_per_token_ = 0;  // training FLOPs per token (model counts)
  TrainResult result_;
};

}  // namespace scalemoe
