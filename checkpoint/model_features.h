// The features of the model a checkpoint holds (checkpoint/hf_architecture.h),
// read from the tensors it holds (their names and global shapes) and, for
// what leaves no tensor behind, from its stored config: under scale-vector
// mode NONE a per-head or sandwich norm normalises without a scale, and
// routing options (score function, top-k renormalisation, capacity) are
// config only.
#pragma once

#include <map>
#include <string>

#include "checkpoint/hf_architecture.h"
#include "configs/scalemoe.pb.h"
#include "core/tensor.h"

namespace scalemoe::checkpoint {

// `shapes`: every MODEL tensor of the checkpoint, name -> global shape.
// DataLoss when the tensors do not form a model of `cfg` (a layer with
// neither a dense MLP nor a router, experts of different sizes).
StatusOr<ModelFeatures> ModelFeaturesOf(const config::RunConfig& cfg,
                                        const std::map<std::string, Shape>& shapes);

}  // namespace scalemoe::checkpoint
