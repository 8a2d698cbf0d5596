// Scale-vector diagnostics (issue 15): what the γ, u and β·α vectors of a run
// have learned, logged with every metrics record ("sv", launch/metrics.h)
// and as TensorBoard scalars ("sv/<key>/<figure>"), so that a study can show
// how they move, as the paper does. Switched by logging.scale_vector_stats.
//
// Figures, per effective scale vector v (ScaleVectorInfo::vector: a plain γ
// or u, or the vector γ = β·α of an OR pair; its name says which kind it
// is: gamma_* Input-Norm γ, u_* output-side u, *.scale a norm's own γ):
//   rms   ‖v‖₂ / √d, d the whole vector's length (1 at init: every vector
//         starts at ones). Under OR v is the effective β·α (β·α·√d/‖α‖ for
//         the normalized form, whose rms is |β|).
//   beta  the magnitude scalar β (OR only).
// The vectors of routed experts ("layers.L.moe.experts.E.gamma_gate") are
// summarised per layer and branch over the experts, under the name without
// the expert index ("layers.L.moe.experts.gamma_gate"): the count n and the
// mean, min, max and std (population, over the experts) of each figure.
//
// metrics.jsonl, one object per logged record:
//   "sv": {"layers.0.attn.gamma_q": {"rms": 1.03, "beta": 1.01},
//          "layers.0.moe.experts.gamma_up":
//              {"n": 8, "rms": {"mean": 1.02, "min": 0.99, "max": 1.05, "std": 0.02},
//               "beta": {"mean": ..., "min": ..., "max": ..., "std": ...}}, ...}
// TensorBoard: sv/<key>/rms and sv/<key>/beta for one vector;
// sv/<key>/rms_mean, rms_min, rms_max, rms_std (beta_* likewise) for experts.
//
// Cost, only on a logged step: one ops::SegmentSumOfSquares and one
// ops::CopySegments on the context's device, one device→host read
// (ctx.ToHost) of the small packed buffer [sums of squares, betas] of the
// parameters this rank counts (ReadShares), and, by the caller, one host
// all-reduce over the world of one double per scale-vector parameter of the
// model (Summarise takes its result).
//
// Layout independence: every element of the whole model is counted by
// exactly one rank — the rule the optimizer's gradient norm uses
// (optim/distributed_optimizer.cc, CountsInNorm): a vector replicated over
// its (E)TP group on (E)TP rank 0, a split one on each rank for its slice,
// and only on rank 0 of its data-parallel group (dp, or edp for experts);
// routed experts live on their EP rank, layers on their pipeline stage.
// Parameters are whole on every rank after the step (ZeRO-1 shards only the
// optimizer state), so the figures equal the one-rank run's up to the order
// of the sums of a split vector's slices.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "nlohmann/json.hpp"
#include "parallel/process_groups.h"

namespace scalemoe {

// One figure over the vectors of a key (one vector: all four equal it).
struct ScaleVectorFigure {
  double mean = 0, min = 0, max = 0, std = 0;
};

// The figures of one key: one vector, or a layer's routed experts' vectors
// of one branch.
struct ScaleVectorSummary {
  std::string key;
  bool experts = false;  // summarised over routed experts
  int count = 0;         // vectors summarised (1 unless experts)
  ScaleVectorFigure rms;
  bool has_beta = false;  // OR: β
  ScaleVectorFigure beta;
};

class ScaleVectorStats {
 public:
  // `whole` lists every scale-vector parameter of the whole model (a registry
  // of the model built on one rank, not materialized: the same on every
  // rank); `local` is this rank's materialized registry; `coords` this
  // rank's place in the grid; `reparam` the run's scale_vectors.reparam.
  // Uploads the segment tables to ctx's device (once).
  ScaleVectorStats(const ExecContext& ctx, const ParamRegistry& whole, const ParamRegistry& local,
                   const GridCoords& coords, config::ScaleVectorConfig::Reparam reparam);

  // This rank's share of every slot (one per scale-vector parameter of the
  // whole model: the sum of squares of a plain or α vector, or β), zero
  // where another rank counts it; one device→host read (none when this rank
  // counts nothing). Summed over the world, they are the whole model's.
  std::vector<double> ReadShares(const ExecContext& ctx) const;
  // The figures from the world's sum of ReadShares, keys in the model's
  // parameter order.
  std::vector<ScaleVectorSummary> Summarise(const std::vector<double>& world_sums) const;

  bool empty() const { return slots_.empty(); }  // no scale vector (mode NONE)

 private:
  // One scale-vector parameter of the whole model.
  struct Slot {
    std::string vector;  // the effective vector it forms (its key's source)
    VectorPart part = VectorPart::kPlain;
    int64_t dim = 0;  // whole length (plain, alpha)
    int expert = -1;  // routed expert, or -1
  };
  std::vector<Slot> slots_;
  config::ScaleVectorConfig::Reparam reparam_;
  Tensor values_;  // a view of `local`'s flat values
  // What this rank counts: SegmentSumOfSquares rows (begin, end) of plain
  // and alpha parameters, then CopySegments rows (src, dst, 1) of betas into
  // the packed buffer after the sums; and the slot of each packed entry.
  Tensor sum_rows_, beta_rows_;
  int64_t num_sums_ = 0, num_betas_ = 0;
  std::vector<int> packed_slot_;
};

// The "sv" object of a metrics record (layout above).
nlohmann::json ScaleVectorJson(const std::vector<ScaleVectorSummary>& summaries);
// The TensorBoard scalars (tag, value) of the same figures.
std::vector<std::pair<std::string, double>> ScaleVectorScalars(
    const std::vector<ScaleVectorSummary>& summaries);

}  // namespace scalemoe
