// Running a sweep: each point is a child `scalemoe train` process (a plain
// process for one rank, mpirun for more; launch/sweep_child.h: it ends with
// the sweep), one after another, into
// SWEEP_DIR/<point name>/, which holds besides the run's own files:
//   train.log             the child's stdout and stderr, every attempt
//   sweep_attempts.jsonl  one record per attempt: command, exit, wall time
//   sweep_done.json       the finished marker (below)
// A point is finished when sweep_done.json exists. The sweep writes it after
// the child exits 0 and the point's metrics.jsonl holds the val_loss record
// of step train.train_steps (the trainer evaluates at the last step,
// always), with the point's base config and overrides. A finished point is
// skipped and its directory left untouched; delete sweep_done.json (or the
// directory) to run it again. A finished point whose base config or
// overrides differ from what the spec now gives it stops the sweep before
// anything runs (CheckFinishedPoints): its results would not be the spec's. An unfinished
// point with a complete checkpoint resumes from the newest one (train
// --resume); one without starts afresh (the stopped run's metrics and
// TensorBoard files are removed; train.log keeps growing). A failed point
// stops the sweep with an error naming the point and its log; finished
// points stay finished. results.csv (launch/sweep_results.h) is rewritten
// after every point.
#pragma once

#include <string>
#include <vector>

#include "configs/sweep.pb.h"
#include "core/status.h"
#include "launch/sweep_points.h"

namespace scalemoe {

inline constexpr char kPointLogFile[] = "train.log";
inline constexpr char kPointAttemptsFile[] = "sweep_attempts.jsonl";
inline constexpr char kPointDoneFile[] = "sweep_done.json";

enum class PointState {
  kNew,          // nothing run yet
  kStale,        // started, stopped before its first complete checkpoint
  kInterrupted,  // stopped with a complete checkpoint: resume from it
  kDone,         // sweep_done.json exists
};
const char* PointStateName(PointState state);  // "new", "stale", "interrupted", "done"

PointState ReadPointState(const std::string& point_dir);

// The argv that runs `point` under the spec's launcher (LOCAL's mpirun for
// ranks > 1): [mpirun -np N ARGS...] BINARY train --config BASE --set ...
// --run-dir POINT_DIR [--resume].
std::vector<std::string> PointCommand(const config::SweepSpec& spec, const SweepPoint& point,
                                      const std::string& point_dir, const std::string& binary,
                                      bool resume);

// The line PRINT shows for `point`: launcher.command_prefix (verbatim) or
// the mpirun prefix for ranks > 1, then the train command, shell-quoted; or,
// with launcher.sbatch_script, its sbatch submission (configs/sweep.proto).
std::string PrintedCommand(const config::SweepSpec& spec, const SweepPoint& point,
                           const std::string& point_dir, const std::string& binary);

// argv joined with spaces, each argument quoted for a POSIX shell if needed.
std::string ShellJoin(const std::vector<std::string>& argv);

struct SweepRunOptions {
  std::string sweep_dir;
  std::string binary;             // the scalemoe binary the points run
  std::vector<std::string> only;  // names of the points to run; empty = all
  bool quiet = false;             // no plan and progress lines
};

// InvalidArgument naming the unknown ones when `only` names a point that
// `points` lacks.
Status CheckPointNames(const std::vector<SweepPoint>& points, const std::vector<std::string>& only);

// FailedPrecondition naming every finished point under `sweep_dir` whose
// sweep_done.json records another base config or other overrides than
// `points` give it.
Status CheckFinishedPoints(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                           const std::string& sweep_dir);

// Runs the points (those in options.only, if given) in order as above.
Status RunSweep(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                const SweepRunOptions& options);

}  // namespace scalemoe
