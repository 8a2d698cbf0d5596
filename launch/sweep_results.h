// A sweep's results.csv: one row per point, rebuilt from the points' run
// directories (metrics.jsonl, sweep_attempts.jsonl, sweep_done.json) and
// configs. Columns:
//   point; one per axis (its value label); status (done; failed: its last
//   attempt failed; interrupted; stale; new); steps (last logged);
//   train_loss (total, last logged); train_ce; val_loss (last evaluation);
//   tokens (steps x tokens per step); wall_s (sum over the sweep's
//   attempts, start-up and evaluation included); tokens_per_s and tflops
//   (medians of the logged records, the first left out when there are
//   more: it holds the warm-up); mfu (the records' "mfu", else tflops /
//   (peak_tflops_per_rank x ranks), else empty); params_total and
//   params_active (the model's counts, as `scalemoe inspect`);
//   load_max_over_mean and load_cv (per MoE layer the busiest expert's
//   tokens over the mean, and the load's coefficient of variation, averaged
//   over the layers and the records of the last quarter of the run).
// A value not known (yet) is empty.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "configs/sweep.pb.h"
#include "core/status.h"
#include "launch/sweep_points.h"

namespace scalemoe {

inline constexpr char kResultsFile[] = "results.csv";

struct PointSummary {
  std::string status;
  std::optional<int64_t> steps;
  std::optional<double> train_loss, train_ce, val_loss;
  std::optional<int64_t> tokens;
  std::optional<double> wall_s, tokens_per_s, tflops, mfu;
  int64_t params_total = 0, params_active = 0;
  std::optional<double> load_max_over_mean, load_cv;
};

// Reads one point's directory. A done point's unreadable metrics are an
// error; another point's leave its metric columns empty.
StatusOr<PointSummary> SummarisePoint(const config::SweepSpec& spec, const SweepPoint& point,
                                      const std::string& point_dir);

// The CSV text (header and one row per summary, in point order).
std::string ResultsCsv(const std::vector<SweepPoint>& points,
                       const std::vector<PointSummary>& summaries);

// The sum of the wall times in POINT_DIR/sweep_attempts.jsonl; nullopt
// when no attempt is recorded.
std::optional<double> AttemptsWallSeconds(const std::string& point_dir);

// Summarises every point and replaces SWEEP_DIR/results.csv atomically.
Status WriteResults(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                    const std::string& sweep_dir);

}  // namespace scalemoe
