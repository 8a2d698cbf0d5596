#include "launch/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/allocator.h"
#include "core/host_values.h"
#include "core/logging.h"
#include "core/ops.h"
#include "core/params.h"
#include "data/token_loader.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "launch/tensorboard.h"
#include "launch/train_loop.h"
#include "model/model.h"
#include "nlohmann/json.hpp"
#include "optim/distributed_optimizer.h"
#include "parallel/nccl_choice.h"
#include "parallel/nccl_process_groups.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// This process's rank on its node, as the launcher says (mpirun, srun).
int LocalRank() {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "LOCAL_RANK"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

// train.device CUDA: GPU local_rank mod the visible devices (several ranks
// share one GPU when there are more ranks than GPUs on the node).
StatusOr<ExecContext> RankCudaContext() {
  const int count = ExecContext::CudaDeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(
        "train.device=CUDA but no CUDA device is visible (and a build without the CUDA backend "
        "sees none): run on a GPU machine, check CUDA_VISIBLE_DEVICES, or set train.device: CPU");
  }
  return ExecContext::Cuda(LocalRank() % count);
}

// parallel.communicator on a CUDA run: switch every group to NCCL, or keep
// the host communicators (MPI staging device buffers; parallel/nccl_choice.h
// says when). Every rank decides alike (the facts are gathered over the
// world).
Status UseConfiguredCommunicator(const config::RunConfig& cfg, ProcessGroups& groups,
                                 const ExecContext& ctx) {
  const config::ParallelConfig::Communicator setting = cfg.parallel().communicator();
  const CommunicatorRequest request =
      setting == config::ParallelConfig::NCCL  ? CommunicatorRequest::kNccl
      : setting == config::ParallelConfig::MPI ? CommunicatorRequest::kMpi
                                               : CommunicatorRequest::kAuto;
  CommunicatorFacts facts;
  facts.cuda = true;
  facts.world = groups.grid.world();
  // A world of one under AUTO has nothing to send: NCCL is not even loaded.
  if (request == CommunicatorRequest::kNccl ||
      (request == CommunicatorRequest::kAuto && facts.world > 1)) {
    facts.nccl_available = NcclAvailableEverywhere(*groups.world);
    SM_ASSIGN_OR_RETURN(facts.shared_gpus, DescribeSharedGpus(*groups.world, ctx));
  }
  SM_ASSIGN_OR_RETURN(const CommunicatorDecision decision, ChooseCommunicator(request, facts));
  SM_LOG_RANK0(kInfo, "communicator: ", decision.why);
  if (!decision.nccl) return absl::OkStatus();
  NcclOptions options;
  options.timeout = std::chrono::seconds(cfg.parallel().collective_timeout_s());
  options.world_rank = groups.coords.global;
  return UseNcclCommunicators(groups, ctx, options);
}

}  // namespace

std::pair<Tensor, Tensor> BatchTensors(MicroBatch& batch) {
  const Shape shape = {batch.batch, batch.seq};
  return {Tensor::FromBlob(batch.inputs.data(), shape, DType::kI32, Device::kCPU),
          Tensor::FromBlob(batch.targets.data(), shape, DType::kI32, Device::kCPU)};
}

StatusOr<std::vector<double>> SumOver(Communicator& comm, std::vector<double> values) {
  Tensor t = Tensor::FromBlob(values.data(), {static_cast<int64_t>(values.size())},
                              DType::kF64, Device::kCPU);
  SM_RETURN_IF_ERROR(comm.AllReduceHost(t));
  return values;
}

Status TrainLoop::Setup() {
  const auto& train = cfg_.train();
  if (train.device() == config::TrainConfig::CUDA) {
    SM_ASSIGN_OR_RETURN(ctx_, RankCudaContext());
    SM_RETURN_IF_ERROR(UseConfiguredCommunicator(cfg_, groups_, ctx_));
  }
  result_.device = ctx_.device() == Device::kCUDA ? absl::StrCat("CUDA:", ctx_.device_ordinal())
                                                  : std::string("CPU");
  if (is_rank0()) {
    std::error_code ec;
    fs::create_directories(options_.run_dir, ec);
    if (ec) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create run dir ", options_.run_dir,
                                                      ": ", ec.message(),
                                                      "; pass another --run-dir"));
    }
    std::ofstream out(fs::path(options_.run_dir) / "config.textproto");
    out << ConfigToText(cfg_);
    if (!out) return absl::InternalError("cannot write config.textproto in " + options_.run_dir);
  }
  const int chunks = pipelined() ? std::max(1, cfg_.parallel().virtual_stages()) : 1;
  for (int c = 0; c < chunks; ++c) {
    chunks_.push_back(std::make_unique<MoeTransformer>(registry_, cfg_, &groups_, c));
  }
  SM_RETURN_IF_ERROR(registry_.Materialize(train.seed(), DType::kF32, ctx_.device()));
  if (train.cuda_graphs()) {
    // ValidateConfig names the same conditions; Train may be called without it.
    if (ctx_.device() != Device::kCUDA || groups_.grid.world() != 1) {
      return absl::FailedPreconditionError(
          "train.cuda_graphs=true needs train.device: CUDA and a world of one rank: set "
          "train.cuda_graphs: false");
    }
    graph_.emplace(ctx_, model());
  }
  {
    // FLOPs of the whole model (this rank's registry holds only its stage):
    // counted on a registry that is never materialized.
    ParamRegistry whole_registry;
    const MoeTransformer whole(whole_registry, cfg_);
    flops_per_token_ = whole.Counts().train_flops_per_token;
    if (cfg_.logging().scale_vector_stats()) {
      // The whole model's list of vectors, the same on every rank.
      scale_vector_stats_.emplace(ctx_, whole_registry, registry_, groups_.coords,
                                  cfg_.scale_vectors().reparam());
    }
  }
  SM_ASSIGN_OR_RETURN(optimizer_, DistributedOptimizer::Create(cfg_, registry_, groups_, ctx_));
  const MemoryReport memory = optimizer_->Memory();
  // Per rank (its (E)TP slices, its ZeRO shards).
  SM_LOG_RANK0(kInfo, "memory on rank 0: parameters ", memory.param_bytes / 1048576.0,
               " MiB, gradients ", memory.grad_bytes / 1048576.0, " MiB, optimizer state ",
               memory.optimizer_state_bytes / 1048576.0, " MiB");
  const int64_t dp = groups_.grid.sizes().dp;
  const int64_t global_batch = train.global_batch_size() > 0
                                   ? train.global_batch_size()
                                   : train.micro_batch_size() * dp;
  accumulation_ = global_batch / (train.micro_batch_size() * dp);
  if (pipelined()) SM_RETURN_IF_ERROR(SetupPipeline());

  TokenLoaderOptions lo;
  lo.dataset_dir = cfg_.data().dataset_dir();
  lo.seq_length = cfg_.model().seq_length();
  lo.micro_batch_size = train.micro_batch_size();
  lo.dp_rank = groups_.coords.dp;
  lo.dp_size = groups_.grid.sizes().dp;
  lo.seed = cfg_.data().shuffle_seed();
  SM_ASSIGN_OR_RETURN(TokenLoader train_loader, TokenLoader::Open(lo));
  lo.split = "val";
  SM_ASSIGN_OR_RETURN(TokenLoader val_loader, TokenLoader::Open(lo));
  train_loader_.emplace(std::move(train_loader));
  val_loader_.emplace(std::move(val_loader));
  if (train_loader_->vocab_size() > cfg_.model().vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset ", lo.dataset_dir, " has vocab size ", train_loader_->vocab_size(),
        " but model.vocab_size=", cfg_.model().vocab_size(),
        ": set model.vocab_size >= ", train_loader_->vocab_size()));
  }
  if (val_loader_->micro_batches_per_epoch() < train.eval_batches() * accumulation_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the validation split of ", lo.dataset_dir, " holds ",
        val_loader_->micro_batches_per_epoch() / accumulation_,
        " global batches but train.eval_batches=", train.eval_batches(),
        ": lower train.eval_batches or prepare a larger val split"));
  }
  SM_ASSIGN_OR_RETURN(result_.unigram_val_loss, UnigramLoss());

  if (options_.resume) SM_RETURN_IF_ERROR(Resume());
  if (is_rank0()) {
    // Records past the checkpoint were written by the run that stopped; the
    // resumed run writes those steps again.
    if (options_.resume) SM_RETURN_IF_ERROR(DropMetricsAfter(options_.run_dir, start_step_));
    SM_ASSIGN_OR_RETURN(metrics_, MetricsWriter::Open(options_.run_dir));
    if (cfg_.logging().tensorboard()) {
      SM_ASSIGN_OR_RETURN(tensorboard_, TensorBoardWriter::Open(options_.run_dir));
    }
  }
  return absl::OkStatus();
}

// The unigram baseline: cross-entropy on the evaluation batches of token
// frequencies counted on the first ~2048 train windows (add-one smoothing),
// over all data-parallel ranks. A model that learned only frequencies
// scores this.
StatusOr<double> TrainLoop::UnigramLoss() {
  const int64_t vocab = train_loader_->vocab_size();
  std::vector<double> counts(vocab, 0.0);
  const int64_t windows_per_batch = cfg_.train().micro_batch_size() * groups_.grid.sizes().dp;
  const int64_t count_batches = std::min<int64_t>(
      (2048 + windows_per_batch - 1) / windows_per_batch, train_loader_->micro_batches_per_epoch());
  for (int64_t i = 0; i < count_batches; ++i) {
    for (int32_t t : train_loader_->At(i).targets) counts[t] += 1;
  }
  SM_ASSIGN_OR_RETURN(counts, SumOver(*groups_.dp, std::move(counts)));
  double total = 0;
  for (double& c : counts) total += (c += 1.0);
  std::vector<double> loss_and_tokens = {0, 0};
  for (int64_t i = 0; i < cfg_.train().eval_batches() * accumulation_; ++i) {
    for (int32_t t : val_loader_->At(i).targets) {
      loss_and_tokens[0] -= std::log(counts[t] / total);
      loss_and_tokens[1] += 1;
    }
  }
  SM_ASSIGN_OR_RETURN(loss_and_tokens, SumOver(*groups_.dp, std::move(loss_and_tokens)));
  return loss_and_tokens[0] / loss_and_tokens[1];
}

// Mean cross-entropy over train.eval_batches global batches of the
// validation split: the same windows whatever the layout.
StatusOr<double> TrainLoop::Evaluate() {
  // The folded weights were formed before the last update: re-form them from
  // the parameters as they are now (the ones a checkpoint of this step holds).
  for (auto& c : chunks_) SM_RETURN_IF_ERROR(c->PrepareStep(ctx_));
  if (graph_) graph_->Invalidate();  // the eager forward replaces the model's caches
  if (pipelined()) return EvaluatePipelined();
  Tensor loss = ctx_.Zeros({1}, DType::kF64);
  const int64_t n = cfg_.train().eval_batches() * accumulation_;
  for (int64_t i = 0; i < n; ++i) {
    MicroBatch batch = val_loader_->At(i);
    auto [tokens, targets] = BatchTensors(batch);
    SM_ASSIGN_OR_RETURN(const StageOutput out,
                        model().ForwardStage(ctx_, tokens, targets, Tensor(), false));
    ops::Axpy(ctx_, 1.0 / n, out.losses.Narrow(0, kCrossEntropyLoss, 1), loss);
  }
  // TP ranks hold the same TP-global loss: mean over dp replicas only.
  SM_RETURN_IF_ERROR(groups_.dp->AllReduce(ctx_, loss));
  return ReadScalar(ctx_, loss) / groups_.dp->size();
}

Status TrainLoop::NonFinite(int64_t step, double loss, double grad_norm,
                            int64_t skipped_in_a_row) const {
  const std::string fix =
      skipped_in_a_row > 0
          ? absl::StrCat(" (", skipped_in_a_row, " steps in a row: train.max_consecutive_skips=",
                         cfg_.train().max_consecutive_skips(),
                         "). Lower optimizer.lr, or raise train.max_consecutive_skips")
          : ". Lower optimizer.lr or set train.on_nonfinite: SKIP";
  return absl::DataLossError(absl::StrCat(
      "step ", step + 1, ": non-finite loss or gradient (loss=", loss, ", grad_norm=", grad_norm,
      "); parameters were not updated. Last good checkpoint: ",
      result_.last_checkpoint.empty() ? "none" : result_.last_checkpoint, fix));
}

StatusOr<std::vector<std::pair<int, MoeLayerStats>>> TrainLoop::AllMoeStats() {
  // A layer's statistics are global (MoeStats all-reduces the step's counts
  // over every replica of the routers); only the pipeline stages hold
  // different layers.
  std::vector<std::pair<int, MoeLayerStats>> out;
  for (const auto& chunk : chunks_) {
    SM_ASSIGN_OR_RETURN(const std::vector<MoeLayerStats> mine, chunk->MoeStats(ctx_));
    const std::vector<int> layers = chunk->MoeLayerIndices();
    for (size_t i = 0; i < mine.size(); ++i) out.emplace_back(layers[i], mine[i]);
  }
  if (!pipelined()) return out;
  // One slot per MoE layer of the model: [E loads, dropped, load_cv, aux, z].
  const int num_experts = cfg_.moe().num_experts();
  const size_t width = static_cast<size_t>(num_experts) + 4;
  std::vector<int> all_layers;
  for (int l = 0; l < cfg_.model().num_layers(); ++l) {
    if (IsMoeLayer(cfg_, l)) all_layers.push_back(l);
  }
  std::vector<double> slots(all_layers.size() * width, 0.0);
  for (const auto& [layer, st] : out) {
    const size_t slot = std::lower_bound(all_layers.begin(), all_layers.end(), layer) -
                        all_layers.begin();
    double* v = slots.data() + slot * width;
    for (int e = 0; e < num_experts; ++e) v[e] = static_cast<double>(st.tokens_per_expert[e]);
    v[num_experts] = static_cast<double>(st.dropped_tokens);
    v[num_experts + 1] = st.load_cv;
    v[num_experts + 2] = st.aux_loss;
    v[num_experts + 3] = st.z_loss;
  }
  SM_ASSIGN_OR_RETURN(slots, SumOver(*groups_.pp, std::move(slots)));
  out.clear();
  for (size_t slot = 0; slot < all_layers.size(); ++slot) {
    const double* v = slots.data() + slot * width;
    MoeLayerStats st;
    for (int e = 0; e < num_experts; ++e) st.tokens_per_expert.push_back(std::llround(v[e]));
    st.dropped_tokens = std::llround(v[num_experts]);
    st.load_cv = v[num_experts + 1];
    st.aux_loss = v[num_experts + 2];
    st.z_loss = v[num_experts + 3];
    out.emplace_back(all_layers[slot], st);
  }
  return out;
}

TrainLoop::StepReport TrainLoop::ReadStepReport(const Tensor& mean_losses,
                                                const Tensor& grad_norm) const {
  // One read: [losses (kNumLosses), grad norm, tracker (4)] packed on the device.
  Tensor packed = ctx_.Empty({kNumLosses + 5}, DType::kF64);
  ops::Copy(ctx_, mean_losses, packed.Narrow(0, 0, kNumLosses));
  ops::Copy(ctx_, grad_norm, packed.Narrow(0, kNumLosses, 1));
  ops::Copy(ctx_, nonfinite_tracker_, packed.Narrow(0, kNumLosses + 1, 4));
  const std::vector<double> v = ReadHostDoubles(ctx_, packed);
  StepReport r;
  r.mean = {v[kTotalLoss], v[kCrossEntropyLoss], v[kAuxLoss], v[kZLoss], 0};
  r.grad_norm = v[kNumLosses];
  r.skipped_total = static_cast<int64_t>(v[kNumLosses + 1]);
  r.first_bad_step = static_cast<int64_t>(v[kNumLosses + 3]);
  r.longest_skip_run = static_cast<int64_t>(v[kNumLosses + 4]);
  return r;
}

Status TrainLoop::CheckNonFinite(const StepReport& report) const {
  if (report.first_bad_step == 0) return absl::OkStatus();
  if (cfg_.train().on_nonfinite() == config::TrainConfig::STOP) {
    return NonFinite(report.first_bad_step - 1, report.mean.total, report.grad_norm);
  }
  if (report.longest_skip_run >= cfg_.train().max_consecutive_skips()) {
    return NonFinite(report.first_bad_step - 1, report.mean.total, report.grad_norm,
                     report.longest_skip_run);
  }
  return absl::OkStatus();
}

Status TrainLoop::LogStep(int64_t step, const LossBreakdown& mean, const StepStats& stats,
                          double tokens_per_second, double eta_seconds) {
  std::vector<std::pair<int, MoeLayerStats>> moe;
  if (cfg_.logging().moe_stats()) {
    SM_ASSIGN_OR_RETURN(moe, AllMoeStats());
  }
  std::vector<ScaleVectorSummary> scale_vectors;
  if (scale_vector_stats_ && !scale_vector_stats_->empty()) {
    // Every rank's share (one device read), summed over the world.
    SM_ASSIGN_OR_RETURN(const std::vector<double> sums,
                        SumOver(*groups_.world, scale_vector_stats_->ReadShares(ctx_)));
    scale_vectors = scale_vector_stats_->Summarise(sums);
  }
  if (!is_rank0()) return absl::OkStatus();
  nlohmann::json record = {{"step", step},
                           {"loss", mean.total},
                           {"ce", mean.cross_entropy},
                           {"aux_loss", mean.aux},
                           {"z_loss", mean.z},
                           {"lr", stats.lr},
                           {"grad_norm", stats.grad_norm},
                           {"skipped_steps", result_.skipped_steps},
                           {"tokens_per_s", tokens_per_second},
                           {"tflops", tokens_per_second * flops_per_token_ * 1e-12}};
  if (cfg_.logging().moe_stats()) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& [layer, st] : moe) {
      layers.push_back({{"layer", layer},
                        {"tokens_per_expert", st.tokens_per_expert},
                        {"load_cv", st.load_cv},
                        {"dropped", st.dropped_tokens},
                        {"aux_loss", st.aux_loss},
                        {"z_loss", st.z_loss}});
      if (tensorboard_) {
        SM_RETURN_IF_ERROR(tensorboard_->AddScalar(absl::StrCat("moe/layer", layer, "/load_cv"),
                                                   step, st.load_cv));
      }
    }
    record["moe"] = layers;
  }
  if (!scale_vectors.empty()) record["sv"] = ScaleVectorJson(scale_vectors);
  SM_RETURN_IF_ERROR(metrics_->Write(record));
  if (tensorboard_) {
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/loss", step, mean.total));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/lr", step, stats.lr));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/grad_norm", step, stats.grad_norm));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/skipped_steps", step,
                                               static_cast<double>(result_.skipped_steps)));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/tokens_per_s", step, tokens_per_second));
    for (const auto& [tag, value] : ScaleVectorScalars(scale_vectors)) {
      SM_RETURN_IF_ERROR(tensorboard_->AddScalar(tag, step, value));
    }
    SM_RETURN_IF_ERROR(tensorboard_->Flush());
  }
  if (!options_.quiet) {
    ProgressLine line{step, cfg_.train().train_steps(), mean.total, stats.lr,
                      stats.grad_norm, tokens_per_second, eta_seconds};
    std::printf("%s\n", line.ToString().c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

StatusOr<TrainResult> TrainLoop::Run() {
  SM_RETURN_IF_ERROR(Setup());
  result_.steps_done = start_step_;
  const auto& train = cfg_.train();
  const int64_t total_steps = train.train_steps();
  const int64_t stop_at = options_.exit_after_steps > 0
                              ? std::min<int64_t>(total_steps, options_.exit_after_steps)
                              : total_steps;
  const int64_t dp = groups_.grid.sizes().dp;
  const int64_t accumulation = accumulation_;
  // Tokens of one global batch: each data-parallel replica's (its TP and PP
  // ranks share them, so not × tp or × pp); tokens/s and TFLOP/s (the
  // model's global FLOPs per token) are per run, not per rank.
  const int64_t tokens_per_step =
      accumulation * dp * train.micro_batch_size() * cfg_.model().seq_length();
  const int interval = std::max(1, cfg_.logging().log_interval());

  auto window_start = Clock::now();
  const auto run_start = Clock::now();
  int64_t window_tokens = 0;
  // Every step stays on the device; the host reads losses, norm and the
  // non-finite record when it logs, evaluates, saves or stops (a step late
  // is fine: the optimizer never applies a non-finite update).
  nonfinite_tracker_ = ctx_.Zeros({4}, DType::kF64);
  // step_0: the weights before any update (a resumed run has its checkpoints).
  if (cfg_.checkpoint().save_initial() && !options_.resume) {
    SM_RETURN_IF_ERROR(SaveCheckpoint(0));
  }
  for (int64_t step = start_step_; step < stop_at; ++step) {
    const int64_t reads_before = ctx_.counters().host_reads.load();
    const AllocatorStats allocs_before = ctx_.allocator_stats();
    for (auto& c : chunks_) SM_RETURN_IF_ERROR_CTX(c->PrepareStep(ctx_), "step ", step + 1);
    ops::Zero(ctx_, registry_.flat_grads());  // ordered on the step's stream
    StatusOr<Tensor> forward_backward = ForwardBackward();
    SM_RETURN_IF_ERROR_CTX(forward_backward.status(), "step ", step + 1);
    const Tensor sums = *std::move(forward_backward);
    // Gradient all-reduces start as each layer's gradients are final.
    Status sync_started;
    auto on_ready = [&](int64_t begin, int64_t end) {
      sync_started.Update(optimizer_->GradientsReady(begin, end));
    };
    for (size_t c = chunks_.size(); c-- > 0;) {  // last layers first
      SM_RETURN_IF_ERROR_CTX(chunks_[c]->FinishBackward(ctx_, on_ready), "step ", step + 1);
    }
    SM_RETURN_IF_ERROR(sync_started);
    // Tied under PP: the embedding was not reported ready; Step reduces it
    // over dp after the stages' copies are summed.
    if (pipelined() && cfg_.model().tied_embeddings()) {
      SM_RETURN_IF_ERROR(SumTiedEmbeddingGrads());
    }
    SM_ASSIGN_OR_RETURN(const StepResult step_result, optimizer_->Step(ctx_, step));
    // Under PP each stage holds its share (CE on the last, aux/z per stage).
    // Under TP every TP rank of a replica holds the same TP-global losses:
    // reduce over pp and dp only (a world sum would count them tp times).
    // Every rank then holds the same mean, so the record below agrees too.
    if (pipelined()) SM_RETURN_IF_ERROR(groups_.pp->AllReduce(ctx_, sums));
    SM_RETURN_IF_ERROR(groups_.dp->AllReduce(ctx_, sums));
    ops::Scale(ctx_, 1.0 / static_cast<double>(accumulation * dp), sums);
    ops::TrackNonFinite(ctx_, step_result.nonfinite, sums.Narrow(0, kTotalLoss, 1), step + 1,
                        nonfinite_tracker_);
    // The expert bias moves only with an applied update (gated on the device).
    for (auto& c : chunks_) {
      SM_RETURN_IF_ERROR(c->UpdateExpertBiases(ctx_, step_result.nonfinite));
    }
    SM_RETURN_IF_ERROR(ctx_.status());
    const int64_t done = step + 1;
    if (options_.on_step_queued) options_.on_step_queued(done, ctx_);
    window_tokens += tokens_per_step;
    const int eval_every = train.eval_interval();
    const bool log = done % interval == 0 || done == stop_at;
    const bool evaluate = (eval_every > 0 && done % eval_every == 0) || done == total_steps;
    const int every = cfg_.checkpoint().interval();
    const bool at_end = done == stop_at && (cfg_.checkpoint().save_at_end() || done < total_steps);
    const bool save = (every > 0 && done % every == 0) || at_end;
    if (!log && !evaluate && !save) {
      result_.quiet_step_host_reads = ctx_.counters().host_reads.load() - reads_before;
      const AllocatorStats allocs = ctx_.allocator_stats();
      result_.quiet_step_system_allocs = allocs.system_allocs - allocs_before.system_allocs +
                                         allocs.system_frees - allocs_before.system_frees;
    } else {
      const StepReport report = ReadStepReport(sums, step_result.grad_norm);
      result_.skipped_steps = report.skipped_total;
      result_.last_train_loss = report.mean.total;
      SM_RETURN_IF_ERROR(CheckNonFinite(report));
      if (log) {
        const double tps = window_tokens / std::max(1e-9, Seconds(window_start));
        const double per_step = Seconds(run_start) / static_cast<double>(done - start_step_);
        const StepStats stats{step_result.lr, step_result.muon_lr, report.grad_norm,
                              std::isfinite(report.grad_norm)};
        SM_RETURN_IF_ERROR(
            LogStep(done, report.mean, stats, tps, per_step * (total_steps - done)));
        window_start = Clock::now();
        window_tokens = 0;
      }
    }
    if (evaluate) {
      SM_ASSIGN_OR_RETURN(result_.last_val_loss, Evaluate());
      if (is_rank0()) {
        SM_RETURN_IF_ERROR(metrics_->Write({{"step", done},
                                            {"val_loss", result_.last_val_loss},
                                            {"unigram_val_loss", result_.unigram_val_loss}}));
        if (tensorboard_) {
          SM_RETURN_IF_ERROR(tensorboard_->AddScalar("val/loss", done, result_.last_val_loss));
        }
        if (!options_.quiet) {
          std::printf("step %lld | val loss %.4f (unigram baseline %.4f)\n",
                      static_cast<long long>(done), result_.last_val_loss,
                      result_.unigram_val_loss);
          std::fflush(stdout);
        }
      }
    }
    if (save) SM_RETURN_IF_ERROR(SaveCheckpoint(done));
    result_.steps_done = done;
  }
  if (tensorboard_) SM_RETURN_IF_ERROR(tensorboard_->Flush());
  if (graph_) {
    result_.cuda_graph_replays = graph_->stats().replays;
    result_.cuda_graph_captures = graph_->stats().captures;
    result_.cuda_graph_eager = graph_->stats().eager;
  }
  return result_;
}

StatusOr<TrainResult> Train(const TrainOptions& options) {
  TrainLoop loop(options);
  return loop.Run();
}

}  // namespace scalemoe
