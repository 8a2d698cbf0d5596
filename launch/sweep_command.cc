// `scalemoe sweep`: expands a sweep spec (configs/sweep.proto) into points,
// validates every point's config up front, then runs them one after another
// (launch/sweep_runner.h) or prints their commands, and keeps
// SWEEP_DIR/results.csv current (launch/sweep_results.h).
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/text_format.h"
#include "launch/commands.h"
#include "launch/flags.h"
#include "launch/sweep_points.h"
#include "launch/sweep_results.h"
#include "launch/sweep_runner.h"
#include "launch/sweep_spec.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe sweep --spec FILE [--set a.b=value]... [--sweep-dir DIR] [--print]\n"
    "                      [--points A,B] [--collect] [--quiet]\n"
    "  Runs every point of the sweep FILE describes (configs/sweep.proto; examples\n"
    "  in configs/sweeps/), one after another, each as 'scalemoe train --config BASE\n"
    "  --set ... --run-dir DIR/<point>' (under mpirun for launcher.ranks > 1).\n"
    "  Every point's config is validated before the first one starts. A finished\n"
    "  point (DIR/<point>/sweep_done.json) is skipped; an interrupted one resumes\n"
    "  from its newest complete checkpoint; a failed one stops the sweep, naming\n"
    "  its log (DIR/<point>/train.log). Rerun the same command to continue.\n"
    "  DIR/results.csv (one row per point) is rewritten after every point; plot it\n"
    "  with scripts/plot_sweep.py DIR.\n"
    "  --set a.b=value  one more override for every point, after the spec's set\n"
    "                   (e.g. data.dataset_dir of this machine; give the same on reruns)\n"
    "  --sweep-dir DIR  output directory (default: the spec's output_dir, else\n"
    "                   sweeps/<spec name>)\n"
    "  --print          print one train command per point and exit (as launcher\n"
    "                   kind PRINT does)\n"
    "  --points A,B     run only these points (the others are left as they are)\n"
    "  --collect        only rewrite DIR/results.csv from what the points hold\n"
    "  --quiet          no plan and progress lines\n";

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "scalemoe sweep: %s\n", message.c_str());
  return code;
}

// This executable's path: the children run the same build.
std::string SelfPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, n) : std::string("scalemoe");
}

void PrintPlan(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
               const std::string& sweep_dir) {
  const SweepPoint& first = points.front();
  std::printf("sweep %s: %zu points into %s (hold_fixed %s, %lld tokens each, %d rank%s)\n",
              spec.name().c_str(), points.size(), sweep_dir.c_str(),
              config::SweepSpec::HoldFixed_Name(spec.hold_fixed()).c_str(),
              static_cast<long long>(first.tokens_per_step * first.config.train().train_steps()),
              spec.launcher().ranks(), spec.launcher().ranks() == 1 ? "" : "s");
  for (const SweepPoint& p : points) {
    const PointState state = ReadPointState((std::filesystem::path(sweep_dir) / p.name).string());
    std::printf("  %-12s %s%s%s\n", PointStateName(state), p.name.c_str(),
                p.derived.empty() ? "" : "  derived: ", absl::StrJoin(p.derived, " ").c_str());
  }
  std::fflush(stdout);
}

int RunSweepCommand(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags = ParseFlags(args, {{"spec"},
                                                  {"set", true, true},
                                                  {"sweep-dir"},
                                                  {"print", false},
                                                  {"points", true, true},
                                                  {"collect", false},
                                                  {"quiet", false}});
  if (!flags.ok()) return Fail(2, std::string(flags.status().message()) + "\n" + kUsage);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  if (!flags->Has("spec")) return Fail(2, std::string("--spec is required\n") + kUsage);
  StatusOr<config::SweepSpec> spec = LoadSweepSpec(flags->Get("spec"));
  if (!spec.ok()) return Fail(2, std::string(spec.status().message()));
  for (const std::string& o : flags->All("set")) spec->add_set(o);
  if (Status s = ValidateSweepSpec(*spec); !s.ok()) {
    return Fail(2, flags->Get("spec") + ": " + std::string(s.message()));
  }
  StatusOr<std::vector<SweepPoint>> points = ExpandSweep(*spec);
  if (!points.ok())
    return Fail(2, flags->Get("spec") + ": " + std::string(points.status().message()));
  std::string sweep_dir = flags->Get("sweep-dir", spec->output_dir());
  if (sweep_dir.empty()) sweep_dir = "sweeps/" + spec->name();

  if (flags->Has("print") || spec->launcher().kind() == config::SweepLauncher::PRINT) {
    const std::string binary =
        spec->launcher().binary().empty() ? SelfPath() : spec->launcher().binary();
    for (const SweepPoint& p : *points) {
      const std::string dir = (std::filesystem::path(sweep_dir) / p.name).string();
      std::printf("%s\n", PrintedCommand(*spec, p, dir, binary).c_str());
    }
    return 0;
  }
  if (flags->Has("collect")) {
    if (Status s = WriteResults(*spec, *points, sweep_dir); !s.ok()) {
      return Fail(1, std::string(s.message()));
    }
    std::printf("results: %s/%s\n", sweep_dir.c_str(), kResultsFile);
    return 0;
  }
  SweepRunOptions options;
  options.sweep_dir = sweep_dir;
  options.binary = SelfPath();
  options.quiet = flags->Has("quiet");
  for (const std::string& list : flags->All("points")) {
    for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      options.only.emplace_back(name);
    }
  }
  if (Status s = CheckPointNames(*points, options.only); !s.ok()) {
    return Fail(2, std::string(s.message()));
  }
  if (!options.quiet) PrintPlan(*spec, *points, sweep_dir);
  // The spec as run, beside its results.
  std::error_code ec;
  std::filesystem::create_directories(sweep_dir, ec);
  std::string spec_text;
  google::protobuf::TextFormat::PrintToString(*spec, &spec_text);
  std::ofstream(std::filesystem::path(sweep_dir) / "sweep_spec.textproto") << spec_text;

  if (Status s = RunSweep(*spec, *points, options); !s.ok()) {
    const bool usage = s.code() == absl::StatusCode::kInvalidArgument ||
                       s.code() == absl::StatusCode::kFailedPrecondition;
    return Fail(usage ? 2 : 1, std::string(s.message()));
  }
  if (!options.quiet) {
    std::printf("results: %s/%s (plots: scripts/plot_sweep.py %s)\n", sweep_dir.c_str(),
                kResultsFile, sweep_dir.c_str());
  }
  return 0;
}

}  // namespace

Subcommand SweepCommand() {
  return {"sweep", "run (or print) the points of a sweep spec; resumable; results.csv",
          RunSweepCommand};
}

}  // namespace scalemoe
