// results.csv of a sweep (launch/sweep_results.h).
#include "launch/sweep_results.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/params.h"
#include "launch/metrics.h"
#include "launch/sweep_runner.h"
#include "model/model.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

std::optional<double> Median(std::vector<double> v) {
  if (v.empty()) return std::nullopt;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::optional<double> Number(const nlohmann::json& record, const char* key) {
  if (!record.contains(key) || !record[key].is_number()) return std::nullopt;
  return record[key].get<double>();
}

// Throughput columns from the logged train records (the first one, which
// holds the warm-up, left out when there are more).
void SummariseThroughput(const config::SweepSpec& spec, std::vector<nlohmann::json> train,
                         PointSummary& s) {
  if (train.size() > 1) train.erase(train.begin());
  std::vector<double> tps, tflops, mfu;
  for (const nlohmann::json& r : train) {
    if (auto v = Number(r, "tokens_per_s")) tps.push_back(*v);
    if (auto v = Number(r, "tflops")) tflops.push_back(*v);
    if (auto v = Number(r, "mfu")) mfu.push_back(*v);
  }
  s.tokens_per_s = Median(tps);
  s.tflops = Median(tflops);
  s.mfu = Median(mfu);
  if (!s.mfu && s.tflops && spec.peak_tflops_per_rank() > 0) {
    s.mfu = *s.tflops / (spec.peak_tflops_per_rank() * spec.launcher().ranks());
  }
}

// Load balance from the records' per-layer MoE statistics, over the last
// quarter of the run (the last such record when that quarter has none).
void SummariseLoad(const std::vector<nlohmann::json>& train, int64_t last_step, PointSummary& s) {
  std::vector<const nlohmann::json*> chosen;
  for (const nlohmann::json& r : train) {
    if (r.contains("moe") && r["moe"].is_array() &&
        4 * r.value("step", int64_t{0}) > 3 * last_step) {
      chosen.push_back(&r);
    }
  }
  if (chosen.empty()) {
    for (auto it = train.rbegin(); it != train.rend(); ++it) {
      if (it->contains("moe") && (*it)["moe"].is_array()) {
        chosen.push_back(&*it);
        break;
      }
    }
  }
  double ratio_sum = 0, cv_sum = 0;
  int ratios = 0, cvs = 0;
  for (const nlohmann::json* r : chosen) {
    for (const nlohmann::json& layer : (*r)["moe"]) {
      if (auto cv = Number(layer, "load_cv")) {
        cv_sum += *cv;
        ++cvs;
      }
      if (!layer.contains("tokens_per_expert") || !layer["tokens_per_expert"].is_array()) continue;
      const std::vector<double> load = layer["tokens_per_expert"].get<std::vector<double>>();
      double total = 0, busiest = 0;
      for (double t : load) {
        total += t;
        busiest = std::max(busiest, t);
      }
      if (total <= 0) continue;
      ratio_sum += busiest / (total / static_cast<double>(load.size()));
      ++ratios;
    }
  }
  if (ratios > 0) s.load_max_over_mean = ratio_sum / ratios;
  if (cvs > 0) s.load_cv = cv_sum / cvs;
}

template <typename T>
std::string Cell(const std::optional<T>& v) {
  if (!v) return "";
  if constexpr (std::is_integral_v<T>) {
    return std::to_string(*v);
  } else {
    return absl::StrFormat("%.8g", *v);
  }
}

// Whether the newest attempt recorded in POINT_DIR/sweep_attempts.jsonl
// ended badly.
bool LastAttemptFailed(const std::string& point_dir) {
  std::ifstream in(fs::path(point_dir) / kPointAttemptsFile);
  std::string last;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) last = line;
  }
  const nlohmann::json r = nlohmann::json::parse(last, nullptr, /*allow_exceptions=*/false);
  return r.is_object() && r.value("end", std::string("exit code 0")) != "exit code 0";
}

}  // namespace

std::optional<double> AttemptsWallSeconds(const std::string& point_dir) {
  std::ifstream in(fs::path(point_dir) / kPointAttemptsFile);
  std::optional<double> total;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json r = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (auto v = r.is_object() ? Number(r, "wall_s") : std::nullopt) total = total.value_or(0) + *v;
  }
  return total;
}

StatusOr<PointSummary> SummarisePoint(const config::SweepSpec& spec, const SweepPoint& point,
                                      const std::string& point_dir) {
  PointSummary s;
  const PointState state = ReadPointState(point_dir);
  s.status =
      state != PointState::kDone && LastAttemptFailed(point_dir) ? "failed" : PointStateName(state);
  {
    ParamRegistry registry;  // counts only: nothing is allocated
    const ModelCounts counts = MoeTransformer(registry, point.config).Counts();
    s.params_total = counts.total_params;
    s.params_active = counts.active_params_per_token;
  }
  s.wall_s = AttemptsWallSeconds(point_dir);
  const std::string path = (fs::path(point_dir) / "metrics.jsonl").string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return s;
  StatusOr<std::vector<nlohmann::json>> records = ReadMetricsFile(path);
  if (!records.ok()) {
    if (state == PointState::kDone) {
      return Status(records.status().code(), absl::StrCat("point ", point.name,
                                                          " is finished but its metrics cannot be "
                                                          "read: ",
                                                          records.status().message()));
    }
    return s;  // a stopped run's cut line: its numbers come with the resume
  }
  std::vector<nlohmann::json> train;
  for (const nlohmann::json& r : *records) {
    if (!r.is_object()) continue;
    if (r.contains("loss")) train.push_back(r);
    if (auto v = Number(r, "val_loss")) s.val_loss = v;
  }
  if (train.empty()) return s;
  const nlohmann::json& last = train.back();
  s.steps = last.value("step", int64_t{0});
  s.train_loss = Number(last, "loss");
  s.train_ce = Number(last, "ce");
  s.tokens = *s.steps * point.tokens_per_step;
  SummariseThroughput(spec, train, s);
  SummariseLoad(train, *s.steps, s);
  return s;
}

std::string ResultsCsv(const std::vector<SweepPoint>& points,
                       const std::vector<PointSummary>& summaries) {
  std::vector<std::string> header = {"point"};
  if (!points.empty()) {
    for (const auto& [axis, label] : points.front().values) header.push_back(axis);
  }
  for (const char* c :
       {"status", "steps", "train_loss", "train_ce", "val_loss", "tokens", "wall_s", "tokens_per_s",
        "tflops", "mfu", "params_total", "params_active", "load_max_over_mean", "load_cv"}) {
    header.push_back(c);
  }
  std::string csv = absl::StrJoin(header, ",") + "\n";
  for (size_t i = 0; i < points.size() && i < summaries.size(); ++i) {
    const PointSummary& s = summaries[i];
    std::vector<std::string> row = {points[i].name};
    for (const auto& [axis, label] : points[i].values) row.push_back(label);
    row.insert(row.end(),
               {s.status, Cell(s.steps), Cell(s.train_loss), Cell(s.train_ce), Cell(s.val_loss),
                Cell(s.tokens), Cell(s.wall_s), Cell(s.tokens_per_s), Cell(s.tflops), Cell(s.mfu),
                std::to_string(s.params_total), std::to_string(s.params_active),
                Cell(s.load_max_over_mean), Cell(s.load_cv)});
    csv += absl::StrJoin(row, ",") + "\n";
  }
  return csv;
}

Status WriteResults(const config::SweepSpec& spec, const std::vector<SweepPoint>& points,
                    const std::string& sweep_dir) {
  std::vector<PointSummary> summaries;
  for (const SweepPoint& p : points) {
    SM_ASSIGN_OR_RETURN(PointSummary s,
                        SummarisePoint(spec, p, (fs::path(sweep_dir) / p.name).string()));
    summaries.push_back(std::move(s));
  }
  std::error_code ec;
  fs::create_directories(sweep_dir, ec);
  const std::string path = (fs::path(sweep_dir) / kResultsFile).string();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << ResultsCsv(points, summaries);
    out.flush();
    if (!out) return absl::DataLossError(absl::StrCat("cannot write ", tmp, " (disk full?)"));
  }
  fs::rename(tmp, path, ec);
  if (ec)
    return absl::DataLossError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace scalemoe
