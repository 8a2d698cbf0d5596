// Running a sweep's points as child processes (launch/sweep_runner.h).
#include "launch/sweep_runner.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint.h"
#include "launch/metrics.h"
#include "launch/sweep_child.h"
#include "launch/sweep_results.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

Status AppendLine(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << "\n";
  out.flush();
  if (!out) return absl::DataLossError(absl::StrCat("cannot append to ", path, " (disk full?)"));
  return absl::OkStatus();
}

// LOCAL's CUDA_VISIBLE_DEVICES for the child, if the launcher sets one.
std::vector<std::string> CudaDevices(const config::SweepLauncher& launcher) {
  if (launcher.cuda_visible_devices().empty()) return {};
  return {"CUDA_VISIBLE_DEVICES=" + launcher.cuda_visible_devices()};
}

// Writes `text` to `path` through a temporary file and a rename.
Status WriteAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat("cannot write ", tmp, " (disk full?)"));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::DataLossError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

// The last `n` lines of `path`, for a failure message.
std::string Tail(const std::string& path, size_t n) {
  std::ifstream in(path);
  std::deque<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
    if (lines.size() > n) lines.pop_front();
  }
  return absl::StrJoin(lines, "\n    ");
}

int CountLines(const std::string& path) {
  std::ifstream in(path);
  int n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

// A run stopped before its first checkpoint: its metrics and TensorBoard
// files would be appended to by the fresh start, so they go.
void ClearStaleRun(const std::string& point_dir) {
  std::error_code ec;
  fs::remove(fs::path(point_dir) / "metrics.jsonl", ec);
  for (const auto& entry : fs::directory_iterator(point_dir, ec)) {
    if (entry.path().filename().string().rfind("events.out.tfevents", 0) == 0) {
      fs::remove(entry.path(), ec);
    }
  }
}

// Finished: the val_loss record of the last step is in metrics.jsonl.
bool ReachedLastStep(const std::string& point_dir, int64_t train_steps) {
  StatusOr<std::vector<nlohmann::json>> records =
      ReadMetricsFile((fs::path(point_dir) / "metrics.jsonl").string());
  if (!records.ok()) return false;
  return std::any_of(records->begin(), records->end(), [&](const nlohmann::json& r) {
    return r.contains("val_loss") && r.value("step", int64_t{-1}) == train_steps;
  });
}

// Runs one unfinished point to its end (or its failure).
Status RunPoint(const config::SweepSpec& spec, const SweepPoint& point,
                const std::string& point_dir, PointState state, const SweepRunOptions& options) {
  std::error_code ec;
  fs::create_directories(point_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", point_dir, ": ", ec.message(),
                                                    "; choose a writable --sweep-dir"));
  }
  if (state == PointState::kStale) ClearStaleRun(point_dir);
  const bool resume = state == PointState::kInterrupted;
  const std::vector<std::string> argv =
      PointCommand(spec, point, point_dir, options.binary, resume);
  const std::string log = (fs::path(point_dir) / kPointLogFile).string();
  const std::string attempts = (fs::path(point_dir) / kPointAttemptsFile).string();
  const int attempt = CountLines(attempts) + 1;
  std::string from = "fresh start";
  if (resume) {
    StatusOr<std::string> latest = checkpoint::LatestCheckpoint(point_dir);
    from = absl::StrCat("resuming from ", latest.ok() ? *latest : "its newest checkpoint");
  }
  SM_RETURN_IF_ERROR(
      AppendLine(log, absl::StrCat("=== scalemoe sweep: point ", point.name, ", attempt ", attempt,
                                   " (", from, ")\n$ ", ShellJoin(argv))));
  const auto start = std::chrono::steady_clock::now();
  SM_ASSIGN_OR_RETURN(const ChildEnd end, RunChild(argv, CudaDevices(spec.launcher()), log));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const nlohmann::json record = {{"attempt", attempt},
                                 {"resume", resume},
                                 {"command", ShellJoin(argv)},
                                 {"end", end.how},
                                 {"wall_s", seconds}};
  SM_RETURN_IF_ERROR(AppendLine(attempts, record.dump()));
  const int64_t steps = point.config.train().train_steps();
  if (!end.ok || !ReachedLastStep(point_dir, steps)) {
    const std::string what = end.ok ? absl::StrCat("ended without the val_loss record of step ",
                                                   steps, " in its metrics.jsonl")
                                    : absl::StrCat("failed (", end.how, ")");
    return absl::AbortedError(absl::StrCat(
        "point ", point.name, " ", what, " after ", absl::StrFormat("%.1f", seconds),
        " s; its log is ", log, ":\n    ", Tail(log, 12),
        "\nFinished points are kept: fix the cause and rerun the same sweep command; this point "
        "resumes from its newest complete checkpoint, if it has one"));
  }
  const nlohmann::json done = {{"point", point.name},
                               {"base_config", spec.base_config()},
                               {"overrides", point.overrides},
                               {"train_steps", steps},
                               {"wall_s", AttemptsWallSeconds(point_dir).value_or(seconds)}};
  return WriteAtomically((fs::path(point_dir) / kPointDoneFile).string(), done.dump() + "\n");
}

}  // namespace

const char* PointStateName(PointState state) {
  switch (state) {
    case PointState::kNew:
      return "new";
    case PointState::kStale:
      return "stale";
    case PointState::kInterrupted:
      return "interrupted";
    case PointState::kDone:
      return "done";
  }
  return "?";
}

PointState ReadPointState(const std::string& point_dir) {
  std::error_code ec;
  const fs::path dir(point_dir);
  if (fs::exists(dir / kPointDoneFile, ec)) return PointState::kDone;
  if (checkpoint::LatestCheckpoint(point_dir).ok()) return PointState::kInterrupted;
  if (fs::exists(dir / "metrics.jsonl", ec)) return PointState::kStale;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().rfind("events.out.tfevents", 0) == 0) {
      return PointState::kStale;
    }
  }
  return PointState::kNew;
}

std::vector<std::string> PointCommand(const config::SweepSpec& spec, const SweepPoint& point,
                                      const std::string& point_dir, const std::string& binary,
                                      bool resume) {
  std::vector<std::string> argv;
  const config::SweepLauncher& launcher = spec.launcher();
  if (launcher.ranks() > 1) {
    argv = {launcher.mpirun(), "-np", std::to_string(launcher.ranks())};
    argv.insert(argv.end(), launcher.mpirun_args().begin(), launcher.mpirun_args().end());
  }
  argv.insert(argv.end(), {binary, "train", "--config", spec.base_config()});
  for (const std::string& o : point.overrides) argv.insert(argv.end(), {"--set", o});
  argv.insert(argv.end(), {"--run-dir", point_dir});
  if (resume) argv.push_back("--resume");
  return argv;
}

std::string PrintedCommand(const config::SweepSpec& spec, const SweepPoint& point,
                           const std::string& point_dir, const std::string& binary) {
  const std::string& prefix = spec.launcher().command_prefix();
  const std::string& script = spec.launcher().sbatch_script();
  if (!script.empty()) {
    // slurm_train.sbatch takes the run directory and binary from the
    // environment, then CONFIG and the train flags.
    std::vector<std::string> args = {spec.base_config()};
    for (const std::string& o : point.overrides) args.insert(args.end(), {"--set", o});
    std::vector<std::string> env = {"SCALEMOE_RUN_DIR=" + point_dir};
    if (!spec.launcher().binary().empty()) env.push_back("SCALEMOE_BIN=" + binary);
    return absl::StrCat(ShellJoin(env), " sbatch --job-name=", point.name,
                        prefix.empty() ? "" : " ", prefix, " ", ShellJoin({script}), " ",
                        ShellJoin(args));
  }
  if (prefix.empty()) return ShellJoin(PointCommand(spec, point, point_dir, binary, false));
  config::SweepSpec one_rank = spec;  // the prefix replaces mpirun
  one_rank.mutable_launcher()->set_ranks(1);
  return prefix + " " + ShellJoin(PointCommand(one_rank, point, point_dir, binary, false));
}

std::string ShellJoin(const std::vector<std::string>& argv) {
  std::vector<std::string> quoted;
  for (const std::string& a : argv) {
    const bool plain = !a.empty() && std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_./=:,+@%", c);
    });
    if (plain) {
      quoted.push_back(a);
      continue;
    }
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    quoted.push_back(q + "'");
  }
  return absl::StrJoin(quoted, " ");
}

Status CheckPointNames(const std::vector<SweepPoint>& points,
                       const std::vector<std::string>& only) {
  for (const std::string& name : only) {
    if (std::none_of(points.begin(), points.end(),
                     [&](const SweepPoint& p) { return p.name == name; })) {
      std::vector<std::string> names;
      for (const SweepPoint& p : points) names.push_back(p.name);
      return absl::InvalidArgumentError(absl::StrCat(
          "--points: no point named '", name, "'; the points are ", absl::StrJoin(names, ", ")));
    }
  }
  return absl::OkStatus();
}

Status CheckFinishedPoints(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                           const std::string& sweep_dir) {
  std::vector<std::string> problems;
  for (const SweepPoint& point : points) {
    const fs::path marker = fs::path(sweep_dir) / point.name / kPointDoneFile;
    std::ifstream in(marker);
    if (!in) continue;
    const nlohmann::json done = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (!done.is_object() || !done.contains("overrides")) continue;
    std::vector<std::string> then;
    if (done["overrides"].is_array()) then = done["overrides"].get<std::vector<std::string>>();
    const std::string then_base = done.value("base_config", spec.base_config());
    if (then == point.overrides && then_base == spec.base_config()) continue;
    std::string what = absl::StrCat("base_config ", then_base, ", now ", spec.base_config());
    if (then_base == spec.base_config()) {
      size_t i = 0;
      while (i < then.size() && i < point.overrides.size() && then[i] == point.overrides[i]) ++i;
      what = absl::StrCat("--set ", i < then.size() ? then[i] : "(none)", ", now --set ",
                          i < point.overrides.size() ? point.overrides[i] : "(none)");
    }
    problems.push_back(absl::StrCat("point ", point.name,
                                    " finished with other settings than "
                                    "the spec gives it now (",
                                    what, ")"));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(absl::StrJoin(problems, "\n"),
                   "\nRun the changed sweep into another --sweep-dir, or delete "
                   "the point's directory under ",
                   sweep_dir, " to run it again"));
}

Status RunSweep(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                const SweepRunOptions& options) {
  SM_RETURN_IF_ERROR(CheckPointNames(points, options.only));
  SM_RETURN_IF_ERROR(CheckFinishedPoints(spec, points, options.sweep_dir));
  std::error_code ec;
  fs::create_directories(options.sweep_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create sweep directory ",
                                                    options.sweep_dir, ": ", ec.message(),
                                                    "; choose a writable --sweep-dir"));
  }
  const size_t n = points.size();
  for (size_t i = 0; i < n; ++i) {
    const SweepPoint& point = points[i];
    const bool selected =
        options.only.empty() ||
        std::find(options.only.begin(), options.only.end(), point.name) != options.only.end();
    if (!selected) continue;
    const std::string dir = (fs::path(options.sweep_dir) / point.name).string();
    const PointState state = ReadPointState(dir);
    if (!options.quiet) {
      std::printf("[%zu/%zu] %s: %s\n", i + 1, n, point.name.c_str(),
                  state == PointState::kDone          ? "finished, skipped"
                  : state == PointState::kInterrupted ? "resuming from its newest checkpoint"
                                                      : "training");
      std::fflush(stdout);
    }
    if (state == PointState::kDone) continue;
    Status ran = RunPoint(spec, point, dir, state, options);
    // The table is current whatever happened to this point.
    Status written = WriteResults(spec, points, options.sweep_dir);
    SM_RETURN_IF_ERROR(ran);
    SM_RETURN_IF_ERROR(written);
    if (!options.quiet) {
      StatusOr<PointSummary> s = SummarisePoint(spec, point, dir);
      if (s.ok() && s->val_loss && s->wall_s) {
        std::printf("    done: val loss %.4f in %.1f s\n", *s->val_loss, *s->wall_s);
        std::fflush(stdout);
      }
    }
  }
  return WriteResults(spec, points, options.sweep_dir);
}

}  // namespace scalemoe
