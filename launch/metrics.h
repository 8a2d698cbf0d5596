// Run metrics: the metrics.jsonl writer (one JSON object per line, the
// machine-readable record of a run) and the rank-0 progress line (the
// human-readable one). Only rank 0 writes either; callers decide that.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

// Appends records to <run_dir>/metrics.jsonl. The file is opened in append
// mode, so a resumed run keeps the lines up to its checkpoint (the trainer
// drops the later ones first: DropMetricsAfter), and
// every record is flushed before Write returns, so a crash loses at most the
// record being written. Not thread-safe. Non-finite numbers are written as
// null (JSON has no NaN).
class MetricsWriter {
 public:
  // Creates `run_dir` if needed and opens its metrics.jsonl for appending.
  static StatusOr<std::unique_ptr<MetricsWriter>> Open(const std::string& run_dir);

  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  ~MetricsWriter();

  // Writes `record` as one line. It must be a JSON object with an integer
  // "step", e.g. {"step": 120, "loss": 4.21, "lr": 2.9e-3}.
  Status Write(const nlohmann::json& record);

  const std::string& path() const { return path_; }

 private:
  MetricsWriter(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}

  std::string path_;  // <run_dir>/metrics.jsonl
  std::FILE* file_;   // owned; closed by the destructor
};

// Resuming from the checkpoint of `step`: drops the records of
// <run_dir>/metrics.jsonl with a "step" above it (the stopped run wrote
// them; the resumed run writes those steps again) and a last line cut short
// by a crash. Lines it cannot read as records are kept. Atomic: the kept
// lines go to metrics.jsonl.tmp, fsynced, renamed over the file; a missing
// file is fine.
Status DropMetricsAfter(const std::string& run_dir, int64_t step);

// Reads a metrics.jsonl back, one object per non-empty line; an unparsable
// line is an error naming the file and line.
StatusOr<std::vector<nlohmann::json>> ReadMetricsFile(const std::string& path);

// One rank-0 progress line:
// "step 120/300 | loss 4.213 | lr 2.9e-03 | gnorm 0.84 | 12.3k tok/s | ETA 1m12s".
struct ProgressLine {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double tokens_per_second = 0;
  double eta_seconds = -1;  // < 0: unknown, printed as "--"

  std::string ToString() const;
};

// "950", "12.3k", "4.56M": three significant figures with a k/M/G suffix.
std::string FormatCount(double value);
// "45s", "1m12s", "2h05m", "3d04h"; "--" for negative or non-finite input.
std::string FormatDuration(double seconds);

}  // namespace scalemoe
