#include "launch/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/logging.h"
#include "core/params.h"
#include "data/token_loader.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "launch/tensorboard.h"
#include "model/model.h"
#include "nlohmann/json.hpp"
#include "optim/optimizer.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kLoaderBlob[] = "train_loader";

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// Views a loader micro-batch as the model's [B, T] int32 tensors (the batch
// must outlive them).
std::pair<Tensor, Tensor> BatchTensors(MicroBatch& batch) {
  const Shape shape = {batch.batch, batch.seq};
  return {Tensor::FromBlob(batch.inputs.data(), shape, DType::kI32, Device::kCPU),
          Tensor::FromBlob(batch.targets.data(), shape, DType::kI32, Device::kCPU)};
}

// The unigram baseline: cross-entropy on `val` batches of token frequencies
// counted on `train` batches (add-one smoothing). A model that learned
// nothing beyond frequencies scores this; training must go well below it.
double UnigramLoss(TokenLoader& train, TokenLoader& val, int64_t vocab, int eval_batches) {
  std::vector<double> counts(vocab, 1.0);
  double total = static_cast<double>(vocab);
  const int64_t count_batches = std::min<int64_t>(256, train.micro_batches_per_epoch());
  for (int64_t i = 0; i < count_batches; ++i) {
    MicroBatch b = train.At(i);
    for (int32_t t : b.targets) counts[t] += 1;
    total += static_cast<double>(b.targets.size());
  }
  double loss = 0;
  int64_t n = 0;
  for (int i = 0; i < eval_batches; ++i) {
    MicroBatch b = val.At(i);
    for (int32_t t : b.targets) loss -= std::log(counts[t] / total);
    n += static_cast<int64_t>(b.targets.size());
  }
  return loss / static_cast<double>(n);
}

class TrainLoop {
 public:
  explicit TrainLoop(const TrainOptions& options)
      : options_(options), cfg_(options.config), registry_(), model_(registry_, cfg_) {}

  StatusOr<TrainResult> Run();

 private:
  Status Setup();
  Status Resume();
  double Evaluate();
  Status SaveCheckpoint(int64_t step);
  Status LogStep(int64_t step, const LossBreakdown& mean, const StepStats& stats,
                 double tokens_per_second, double eta_seconds);
  Status NonFinite(int64_t step, double loss, double grad_norm) const;

  const TrainOptions& options_;
  const config::RunConfig& cfg_;
  const ExecContext ctx_ = ExecContext::Cpu();
  ParamRegistry registry_;
  MoeTransformer model_;
  std::unique_ptr<Optimizer> optimizer_;
  std::optional<TokenLoader> train_loader_;
  std::optional<TokenLoader> val_loader_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  int64_t start_step_ = 0;
  double flops_per_token_ = 0;  // training FLOPs per token (model counts)
  TrainResult result_;
};

Status TrainLoop::Setup() {
  const auto& train = cfg_.train();
  if (train.device() != config::TrainConfig::CPU) {
    return absl::UnimplementedError(
        "train.device=CUDA: the CUDA training path is not built yet; set train.device: CPU");
  }
  std::error_code ec;
  fs::create_directories(options_.run_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create run dir ", options_.run_dir,
                                                    ": ", ec.message(), "; pass another --run-dir"));
  }
  {
    std::ofstream out(fs::path(options_.run_dir) / "config.textproto");
    out << ConfigToText(cfg_);
    if (!out) return absl::InternalError("cannot write config.textproto in " + options_.run_dir);
  }
  SM_RETURN_IF_ERROR(registry_.Materialize(train.seed(), DType::kF32, Device::kCPU));
  flops_per_token_ = model_.Counts().train_flops_per_token;
  SM_ASSIGN_OR_RETURN(optimizer_, Optimizer::Create(cfg_, registry_));

  TokenLoaderOptions lo;
  lo.dataset_dir = cfg_.data().dataset_dir();
  lo.seq_length = cfg_.model().seq_length();
  lo.micro_batch_size = train.micro_batch_size();
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
  if (val_loader_->micro_batches_per_epoch() < train.eval_batches()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the validation split of ", lo.dataset_dir, " holds ",
        val_loader_->micro_batches_per_epoch(), " micro-batches but train.eval_batches=",
        train.eval_batches(), ": lower train.eval_batches or prepare a larger val split"));
  }
  result_.unigram_val_loss = UnigramLoss(*train_loader_, *val_loader_,
                                         train_loader_->vocab_size(), train.eval_batches());

  SM_ASSIGN_OR_RETURN(metrics_, MetricsWriter::Open(options_.run_dir));
  if (cfg_.logging().tensorboard()) {
    SM_ASSIGN_OR_RETURN(tensorboard_, TensorBoardWriter::Open(options_.run_dir));
  }
  if (options_.resume) SM_RETURN_IF_ERROR(Resume());
  return absl::OkStatus();
}

std::vector<checkpoint::NamedTensor> CheckpointTensors(const ParamRegistry& registry,
                                                       const NamedTensors& state) {
  std::vector<checkpoint::NamedTensor> out;
  for (const auto& p : registry.params()) {
    out.push_back({p->spec.name, p->value, {}, {}, checkpoint::TensorRole::kModel});
  }
  for (const auto& [name, tensor] : state) {
    out.push_back({name, tensor, {}, {}, checkpoint::TensorRole::kState});
  }
  return out;
}

Status TrainLoop::Resume() {
  StatusOr<std::string> latest = checkpoint::LatestCheckpoint(options_.run_dir);
  if (!latest.ok()) {
    return absl::NotFoundError(absl::StrCat("--resume: no complete checkpoint under ",
                                            options_.run_dir,
                                            "/checkpoints; drop --resume to start afresh"));
  }
  // Optimizer state is staged in copies and handed over only after the whole
  // checkpoint verified (LoadCheckpoint writes nothing on failure).
  NamedTensors state = optimizer_->StateTensors();
  for (auto& [name, tensor] : state) tensor = tensor.Clone();
  checkpoint::LoadRequest request;
  request.targets = CheckpointTensors(registry_, state);
  SM_ASSIGN_OR_RETURN(checkpoint::LoadedCheckpoint loaded,
                      checkpoint::LoadCheckpoint(*latest, request));
  SM_RETURN_IF_ERROR(optimizer_->LoadStateTensors(state));
  auto blob = loaded.blobs.find(kLoaderBlob);
  if (blob == loaded.blobs.end()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", *latest, " has no ", kLoaderBlob,
                                            " state; it was not written by scalemoe train"));
  }
  SM_ASSIGN_OR_RETURN(LoaderState loader_state, LoaderState::FromJson(blob->second));
  SM_RETURN_IF_ERROR(train_loader_->Restore(loader_state));
  start_step_ = loaded.step;
  result_.last_checkpoint = *latest;
  SM_LOG_RANK0(kInfo, "resumed from ", *latest, " at step ", start_step_);
  return absl::OkStatus();
}

double TrainLoop::Evaluate() {
  double loss = 0;
  const int n = cfg_.train().eval_batches();
  for (int i = 0; i < n; ++i) {
    MicroBatch batch = val_loader_->At(i);
    auto [tokens, targets] = BatchTensors(batch);
    loss += model_.Evaluate(ctx_, tokens, targets).cross_entropy;
  }
  return loss / n;
}

Status TrainLoop::SaveCheckpoint(int64_t step) {
  checkpoint::SaveRequest request;
  request.root = options_.run_dir;
  request.step = step;
  request.config_text = ConfigToText(cfg_);
  request.tensors = CheckpointTensors(registry_, optimizer_->StateTensors());
  request.blobs[kLoaderBlob] = train_loader_->state().ToJson();
  request.keep_last = cfg_.checkpoint().keep_last();
  SM_RETURN_IF_ERROR(checkpoint::SaveCheckpoint(request));
  result_.last_checkpoint =
      (fs::path(options_.run_dir) / "checkpoints" / absl::StrCat("step_", step)).string();
  return absl::OkStatus();
}

Status TrainLoop::NonFinite(int64_t step, double loss, double grad_norm) const {
  return absl::DataLossError(absl::StrCat(
      "step ", step + 1, ": non-finite loss or gradient (loss=", loss, ", grad_norm=", grad_norm,
      "); parameters were not updated. Last good checkpoint: ",
      result_.last_checkpoint.empty() ? "none" : result_.last_checkpoint,
      ". Lower optimizer.lr or set train.on_nonfinite: SKIP"));
}

Status TrainLoop::LogStep(int64_t step, const LossBreakdown& mean, const StepStats& stats,
                          double tokens_per_second, double eta_seconds) {
  nlohmann::json record = {{"step", step},          {"loss", mean.total},
                           {"ce", mean.cross_entropy}, {"aux_loss", mean.aux},
                           {"z_loss", mean.z},      {"lr", stats.lr},
                           {"grad_norm", stats.grad_norm}, {"tokens_per_s", tokens_per_second},
                           {"tflops", tokens_per_second * flops_per_token_ * 1e-12}};
  if (cfg_.logging().moe_stats()) {
    nlohmann::json layers = nlohmann::json::array();
    const std::vector<MoeLayerStats> moe = model_.MoeStats();
    for (size_t i = 0; i < moe.size(); ++i) {
      layers.push_back({{"tokens_per_expert", moe[i].tokens_per_expert},
                        {"load_cv", moe[i].load_cv},
                        {"dropped", moe[i].dropped_tokens},
                        {"aux_loss", moe[i].aux_loss},
                        {"z_loss", moe[i].z_loss}});
      if (tensorboard_) {
        SM_RETURN_IF_ERROR(tensorboard_->AddScalar(absl::StrCat("moe/", i, "/load_cv"), step,
                                                   moe[i].load_cv));
      }
    }
    record["moe"] = layers;
  }
  SM_RETURN_IF_ERROR(metrics_->Write(record));
  if (tensorboard_) {
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/loss", step, mean.total));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/lr", step, stats.lr));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/grad_norm", step, stats.grad_norm));
    SM_RETURN_IF_ERROR(tensorboard_->AddScalar("train/tokens_per_s", step, tokens_per_second));
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
  const int64_t global_batch =
      train.global_batch_size() > 0 ? train.global_batch_size() : train.micro_batch_size();
  const int64_t accumulation = global_batch / train.micro_batch_size();
  const int64_t tokens_per_step = global_batch * cfg_.model().seq_length();
  const int interval = std::max(1, cfg_.logging().log_interval());

  auto window_start = Clock::now();
  const auto run_start = Clock::now();
  int64_t window_tokens = 0;
  for (int64_t step = start_step_; step < stop_at; ++step) {
    model_.PrepareStep(ctx_);
    registry_.ZeroGrads();
    LossBreakdown mean;
    for (int64_t m = 0; m < accumulation; ++m) {
      MicroBatch batch = train_loader_->Next();
      auto [tokens, targets] = BatchTensors(batch);
      const LossBreakdown loss = model_.Forward(ctx_, tokens, targets);
      model_.Backward(ctx_, 1.0 / static_cast<double>(accumulation));
      mean.total += loss.total / accumulation;
      mean.cross_entropy += loss.cross_entropy / accumulation;
      mean.aux += loss.aux / accumulation;
      mean.z += loss.z / accumulation;
    }
    model_.FinishBackward(ctx_);
    const StepStats stats = optimizer_->Step(ctx_, step);
    if (!stats.applied || !std::isfinite(mean.total)) {
      if (train.on_nonfinite() == config::TrainConfig::STOP) {
        return NonFinite(step, mean.total, stats.grad_norm);
      }
      ++result_.skipped_steps;
      SM_LOG_RANK0(kWarning, "step ", step + 1, ": non-finite loss/gradient, step skipped");
      // A step whose loss alone was non-finite may still have updated: the
      // optimizer only refuses non-finite gradients. Both are counted.
    } else {
      model_.UpdateExpertBiases();
    }
    const int64_t done = step + 1;
    window_tokens += tokens_per_step;
    result_.last_train_loss = mean.total;
    if (done % interval == 0 || done == stop_at) {
      const double tps = window_tokens / std::max(1e-9, Seconds(window_start));
      const double per_step = Seconds(run_start) / static_cast<double>(done - start_step_);
      SM_RETURN_IF_ERROR(LogStep(done, mean, stats, tps, per_step * (total_steps - done)));
      window_start = Clock::now();
      window_tokens = 0;
    }
    const int eval_every = train.eval_interval();
    if ((eval_every > 0 && done % eval_every == 0) || done == total_steps) {
      result_.last_val_loss = Evaluate();
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
    const int every = cfg_.checkpoint().interval();
    const bool at_end = done == stop_at && (cfg_.checkpoint().save_at_end() || done < total_steps);
    if ((every > 0 && done % every == 0) || at_end) SM_RETURN_IF_ERROR(SaveCheckpoint(done));
    result_.steps_done = done;
  }
  if (tensorboard_) SM_RETURN_IF_ERROR(tensorboard_->Flush());
  return result_;
}

}  // namespace

StatusOr<TrainResult> Train(const TrainOptions& options) {
  TrainLoop loop(options);
  return loop.Run();
}

}  // namespace scalemoe
