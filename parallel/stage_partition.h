// StagePartition: which transformer layers each pipeline stage owns.
// Stage 0 also owns the embedding; the last stage also owns the final norm,
// the LM head and the loss (with one stage, that stage owns everything).
// Layers are contiguous and in order: stage s owns
// [first_layer(s), first_layer(s) + num_layers(s)).
//
// Even(num_layers, pp) splits as evenly as possible, the first
// num_layers % pp stages taking one extra layer (5 over 2 -> 3 + 2), because
// the last stage already carries the head and the loss. Explicit(...) takes
// the per-stage counts from the config; only the first and last stage may
// own zero layers (they still hold the embedding / the head).
// Pure arithmetic: no communication, no allocation beyond the table.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

struct StageLayers {
  int first_layer = 0;
  int num_layers = 0;
  bool has_embedding = false;  // stage 0
  bool has_head = false;       // last stage: final norm, LM head, loss
};

class StagePartition {
 public:
  // InvalidArgument when pp < 1 or num_layers < pp (some stage would own no
  // layer); the message names model.num_layers and parallel.pp.
  static StatusOr<StagePartition> Even(int num_layers, int pp);
  // layers_per_stage[s] layers on stage s; they must sum to num_layers and
  // be >= 0, and a middle stage (neither first nor last) must own >= 1.
  static StatusOr<StagePartition> Explicit(int num_layers,
                                           const std::vector<int>& layers_per_stage);

  int num_stages() const { return static_cast<int>(stages_.size()); }
  int num_layers() const { return num_layers_; }
  // SM_CHECK-fails when stage is out of range (a programming error).
  const StageLayers& stage(int stage) const;
  // The stage that owns `layer` (0 <= layer < num_layers()).
  int StageOfLayer(int layer) const;
  // "stage 0: layers [0, 3) + embedding; stage 1: layers [3, 5) + head".
  std::string Describe() const;

 private:
  StagePartition(int num_layers, std::vector<StageLayers> stages)
      : num_layers_(num_layers), stages_(std::move(stages)) {}
  int num_layers_ = 0;
  std::vector<StageLayers> stages_;
};

}  // namespace scalemoe
