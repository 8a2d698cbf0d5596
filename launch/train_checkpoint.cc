// TrainLoop's checkpoints: what each rank writes (replicated tensors by
// their replica group's rank 0 only), saving, and resuming (resharding when
// the layout changed: every rank reads just the slices it holds).
#include <filesystem>
#include <string>

#include "absl/strings/numbers.h"
#include "checkpoint/training_tensors.h"
#include "core/logging.h"
#include "launch/config.h"
#include "launch/train_loop.h"

namespace scalemoe {
namespace {

constexpr char kLoaderBlob[] = "train_loader";
constexpr char kUpdatesBlob[] = "optimizer_updates";

}  // namespace

// Checkpoint contents of this rank (checkpoint/training_tensors.h): for a
// save each element once over the world (replicas over dp/edp by group rank
// 0, over (E)TP by (E)TP rank 0, split tensors by every (E)TP rank, a tied
// embedding by the first stage); for a load everything this rank holds.
// Optimizer state is stored under the parameter's global shape, so it
// reshards over tp, dp and the zero stage like the parameter.
std::vector<checkpoint::NamedTensor> TrainLoop::CheckpointTensors(bool for_save) const {
  return checkpoint::TrainingTensors(registry_, optimizer_->StateSlices(), groups_.coords,
                                     for_save);
}

Status TrainLoop::Resume() {
  StatusOr<std::string> latest = checkpoint::LatestCheckpoint(options_.run_dir);
  if (!latest.ok()) {
    return absl::NotFoundError(absl::StrCat("--resume: no complete checkpoint under ",
                                            options_.run_dir,
                                            "/checkpoints; drop --resume to start afresh"));
  }
  SM_RETURN_IF_ERROR(ctx_.Synchronize());  // the load writes on another stream
  checkpoint::LoadRequest request;
  request.targets = CheckpointTensors(/*for_save=*/false);
  SM_ASSIGN_OR_RETURN(checkpoint::LoadedCheckpoint loaded,
                      checkpoint::LoadCheckpoint(*latest, request, groups_.world.get()));
  optimizer_->LoadMasterFromParams();
  auto loader_blob = loaded.blobs.find(kLoaderBlob);
  auto updates_blob = loaded.blobs.find(kUpdatesBlob);
  if (loader_blob == loaded.blobs.end() || updates_blob == loaded.blobs.end()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", *latest, " lacks the ", kLoaderBlob,
                                            "/", kUpdatesBlob,
                                            " state; it was not written by scalemoe train"));
  }
  SM_ASSIGN_OR_RETURN(LoaderState loader_state, LoaderState::FromJson(loader_blob->second));
  SM_RETURN_IF_ERROR(train_loader_->Restore(loader_state));
  int64_t updates = 0;
  if (!absl::SimpleAtoi(updates_blob->second, &updates)) {
    return absl::DataLossError(absl::StrCat("checkpoint ", *latest, ": ", kUpdatesBlob, " '",
                                            updates_blob->second, "' is not an integer"));
  }
  optimizer_->set_num_updates(updates);
  start_step_ = loaded.step;
  result_.last_checkpoint = *latest;
  SM_LOG_RANK0(kInfo, "resumed from ", *latest, " at step ", start_step_);
  return absl::OkStatus();
}

Status TrainLoop::SaveCheckpoint(int64_t step) {
  // The save copies device tensors on another stream: the step's work first.
  SM_RETURN_IF_ERROR(ctx_.Synchronize());
  checkpoint::SaveRequest request;
  request.root = options_.run_dir;
  request.step = step;
  request.config_text = ConfigToText(cfg_);
  const GridSizes& sizes = groups_.grid.sizes();
  request.layout = {sizes.tp, sizes.pp, sizes.dp, sizes.ep, sizes.etp, groups_.grid.world(),
                    optimizer_->zero_stage()};
  request.rank = groups_.coords.global;
  request.tensors = CheckpointTensors(/*for_save=*/true);
  if (is_rank0()) {
    request.blobs[kLoaderBlob] = train_loader_->state().ToJson();
    request.blobs[kUpdatesBlob] = std::to_string(optimizer_->num_updates());
  }
  request.keep_last = cfg_.checkpoint().keep_last();
  if (Status saved = checkpoint::SaveCheckpoint(request, groups_.world.get()); !saved.ok()) {
    // A full disk (or any failed save) must say what is still safe to
    // resume from: the newest complete checkpoint on disk, as --resume picks.
    StatusOr<std::string> last_good = checkpoint::LatestCheckpoint(options_.run_dir);
    return Status(saved.code(),
                  absl::StrCat("saving the checkpoint of step ", step, " failed: ", saved.message(),
                               ". Last good checkpoint: ",
                               last_good.ok() ? *last_good + " (--resume continues from it)"
                                              : std::string("none: no checkpoint of this run is "
                                                            "complete")));
  }
  result_.last_checkpoint =
      (std::filesystem::path(options_.run_dir) / "checkpoints" / absl::StrCat("step_", step)).string();
  return absl::OkStatus();
}

}  // namespace scalemoe
