// compare_runs RUN REFERENCE STEP TOLERANCE: the launcher tests' check that
// two training runs agree (the bar every parallel layout meets against one
// rank, tests/launch/mpi_training.h): the loss of every logged step, then
// every model parameter of checkpoints/step_STEP, each within TOLERANCE
// relative. The model comes from REFERENCE/config.textproto. Prints one line
// per check and exits 0 when all pass, 1 when one fails, 2 on bad usage.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "launch/config.h"
#include "launch/metrics.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

// step -> loss; a step logged twice (a resumed run) keeps its last record.
StatusOr<std::map<int64_t, double>> Losses(const fs::path& run) {
  SM_ASSIGN_OR_RETURN(std::vector<nlohmann::json> records,
                      ReadMetricsFile((run / "metrics.jsonl").string()));
  std::map<int64_t, double> losses;
  for (const auto& r : records) {
    if (r.contains("loss") && r["loss"].is_number()) {
      losses[r["step"].get<int64_t>()] = r["loss"].get<double>();
    }
  }
  return losses;
}

int Compare(const fs::path& run, const fs::path& reference, int64_t step, double tolerance) {
  StatusOr<std::map<int64_t, double>> got = Losses(run), want = Losses(reference);
  if (!got.ok() || !want.ok()) {
    std::fprintf(stderr, "compare_runs: %s\n",
                 std::string((got.ok() ? want : got).status().message()).c_str());
    return 1;
  }
  int failures = 0;
  double worst = 0;
  if (want->empty() || got->size() != want->size()) {
    std::printf("FAIL losses: %zu logged steps in %s, %zu in %s\n", got->size(),
                run.c_str(), want->size(), reference.c_str());
    return 1;
  }
  for (const auto& [s, w] : *want) {
    auto it = got->find(s);
    const double rel = it == got->end() ? INFINITY : std::abs(it->second - w) / std::abs(w);
    worst = std::max(worst, rel);
    if (!(rel <= tolerance)) {
      std::printf("FAIL loss of step %lld: %.9g vs %.9g (relative %.3g)\n",
                  static_cast<long long>(s), it == got->end() ? NAN : it->second, w, rel);
      ++failures;
    }
  }
  std::printf("losses: %zu steps, worst relative difference %.3g\n", want->size(), worst);

  StatusOr<config::RunConfig> cfg = LoadConfig((reference / "config.textproto").string(), {});
  if (!cfg.ok()) {
    std::fprintf(stderr, "compare_runs: %s\n", std::string(cfg.status().message()).c_str());
    return 1;
  }
  const std::string last = "checkpoints/step_" + std::to_string(step);
  StatusOr<testing::WholeModel> a = testing::LoadWholeModel(*cfg, (run / last).string());
  StatusOr<testing::WholeModel> b = testing::LoadWholeModel(*cfg, (reference / last).string());
  if (!a.ok() || !b.ok()) {
    std::printf("FAIL loading %s: %s\n", last.c_str(),
                std::string((a.ok() ? b : a).status().message()).c_str());
    return 1;
  }
  worst = 0;
  for (const auto& p : b->registry->params()) {
    const Param* q = a->registry->Find(p->spec.name);
    const double rel = q == nullptr ? INFINITY : testing::RelativeDifference(q->value, p->value);
    worst = std::max(worst, rel);
    if (!(rel <= tolerance)) {
      std::printf("FAIL parameter %s: relative difference %.3g\n", p->spec.name.c_str(), rel);
      ++failures;
    }
  }
  std::printf("parameters of %s: %zu tensors, worst relative difference %.3g\n", last.c_str(),
              b->registry->params().size(), worst);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: compare_runs RUN REFERENCE STEP TOLERANCE\n");
    return 2;
  }
  return scalemoe::Compare(argv[1], argv[2], std::atoll(argv[3]), std::atof(argv[4]));
}
