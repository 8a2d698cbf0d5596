// Tests for launch/scale_vector_stats.h through tiny training runs: the "sv"
// figures of every logged record are the norms of the vectors that the
// checkpoint of the same step holds, computed here independently from the
// parameters' names and values (the effective vector element by element),
// on the CPU and on the GPU; TensorBoard gets them too;
// logging.scale_vector_stats=false and a model without vectors write none.
// (Layouts against one rank: mpi_training.h's ExpectSameTraining compares
// these figures in every multi-rank test.)
#include "launch/scale_vector_stats.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/context.h"
#include "gtest/gtest.h"
#include "launch/metrics.h"
#include "launch/trainer.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

constexpr double kTolerance = 1e-12;  // f64 sums of the same f32 values, other order

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// What the figures should be, from a whole model's parameters: per key, the
// rms of each vector (and β under OR) in expert order.
struct Expected {
  std::map<std::string, std::vector<double>> rms, beta;
  std::set<std::string> expert_keys;
};

Expected ExpectedFigures(const ParamRegistry& registry, bool normalized) {
  static const std::regex kExpert(R"(\.experts\.[0-9]+\.)");
  Expected want;
  for (const auto& p : registry.params()) {
    if (!IsScaleVector(p->spec.role) || EndsWith(p->spec.name, ".beta")) continue;
    std::string vector = p->spec.name;
    std::vector<double> gamma = p->value.ToVector();
    const double d = static_cast<double>(gamma.size());
    if (EndsWith(vector, ".alpha")) {
      vector.resize(vector.size() - std::string(".alpha").size());
      const Param* beta = registry.Find(vector + ".beta");
      EXPECT_NE(beta, nullptr) << vector;
      if (beta == nullptr) continue;
      const double b = beta->value.At(0);
      double alpha_norm = 0;
      for (double a : gamma) alpha_norm += a * a;
      alpha_norm = std::sqrt(alpha_norm);
      for (double& g : gamma) g = normalized ? b * g * std::sqrt(d) / alpha_norm : b * g;
      want.beta[std::regex_replace(vector, kExpert, ".experts.")].push_back(b);
    }
    double sum_sq = 0;
    for (double g : gamma) sum_sq += g * g;
    const std::string key = std::regex_replace(vector, kExpert, ".experts.");
    if (key != vector) want.expert_keys.insert(key);
    want.rms[key].push_back(std::sqrt(sum_sq / d));
  }
  return want;
}

void ExpectNear(const nlohmann::json& got, double want, const std::string& what) {
  ASSERT_TRUE(got.is_number()) << what << ": " << got.dump();
  EXPECT_NEAR(got.get<double>(), want, kTolerance * std::max(1.0, std::fabs(want))) << what;
}

// mean, min, max, std (population) of `values` against the object `got`.
void ExpectSummary(const nlohmann::json& got, const std::vector<double>& values,
                   const std::string& what) {
  double mean = 0;
  for (double v : values) mean += v / static_cast<double>(values.size());
  double var = 0;
  for (double v : values) var += (v - mean) * (v - mean) / static_cast<double>(values.size());
  ExpectNear(got["mean"], mean, what + " mean");
  ExpectNear(got["min"], *std::min_element(values.begin(), values.end()), what + " min");
  ExpectNear(got["max"], *std::max_element(values.begin(), values.end()), what + " max");
  ExpectNear(got["std"], std::sqrt(var), what + " std");
}

// The "sv" object of a record against the figures of `want`.
void ExpectFigures(const nlohmann::json& sv, const Expected& want) {
  std::set<std::string> got_keys, want_keys;
  for (const auto& [key, value] : sv.items()) got_keys.insert(key);
  for (const auto& [key, value] : want.rms) want_keys.insert(key);
  EXPECT_EQ(got_keys, want_keys);
  for (const auto& [key, rms] : want.rms) {
    if (!sv.contains(key)) continue;
    const nlohmann::json& entry = sv[key];
    const auto beta = want.beta.find(key);
    EXPECT_EQ(entry.contains("beta"), beta != want.beta.end()) << key;
    if (want.expert_keys.count(key) > 0) {
      EXPECT_EQ(entry["n"], rms.size()) << key;
      ExpectSummary(entry["rms"], rms, key + " rms");
      if (beta != want.beta.end()) ExpectSummary(entry["beta"], beta->second, key + " beta");
    } else {
      ASSERT_EQ(rms.size(), 1u) << key;
      ExpectNear(entry["rms"], rms[0], key + " rms");
      if (beta != want.beta.end()) ExpectNear(entry["beta"], beta->second[0], key + " beta");
    }
  }
}

std::string EventFiles(const fs::path& run_dir) {
  std::string events;
  for (const auto& e : fs::directory_iterator(run_dir)) {
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) != 0) continue;
    std::ifstream in(e.path(), std::ios::binary);
    events.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return events;
}

class ScaleVectorStatsTest : public testing::TinyDatasetSuite {
 protected:

  // Trains `cfg` into run `name`; returns its loss records.
  static std::vector<nlohmann::json> Train(const config::RunConfig& cfg, const std::string& name) {
    TrainOptions o;
    o.config = cfg;
    o.run_dir = (*root_ / name).string();
    o.quiet = true;
    StatusOr<TrainResult> r = scalemoe::Train(o);
    EXPECT_TRUE(r.ok()) << r.status();
    StatusOr<std::vector<nlohmann::json>> records =
        ReadMetricsFile((*root_ / name / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    std::vector<nlohmann::json> losses;
    for (auto& rec : records.value_or(std::vector<nlohmann::json>{})) {
      if (rec.contains("loss")) losses.push_back(std::move(rec));
    }
    return losses;
  }

  // The tiny model (8 steps), a record and a checkpoint every 2 steps.
  static config::RunConfig Config(const std::vector<std::string>& extra) {
    std::vector<std::string> all = {"logging.log_interval=2", "checkpoint.interval=2"};
    all.insert(all.end(), extra.begin(), extra.end());
    return testing::TinyTrainingConfig(*root_, all);
  }

  // Every logged step's figures against its checkpoint's parameters; returns
  // the records.
  static std::vector<nlohmann::json> ExpectFiguresOfCheckpoints(const config::RunConfig& cfg,
                                                                const std::string& name) {
    const std::vector<nlohmann::json> records = Train(cfg, name);
    EXPECT_EQ(records.size(), 4u);  // steps 2, 4, 6, 8
    const bool normalized =
        cfg.scale_vectors().reparam() == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED;
    for (const nlohmann::json& rec : records) {
      const int64_t step = rec["step"].get<int64_t>();
      SCOPED_TRACE(name + " step " + std::to_string(step));
      EXPECT_TRUE(rec.contains("sv")) << rec.dump();
      StatusOr<testing::WholeModel> whole = testing::LoadWholeModel(
          cfg, (*root_ / name / "checkpoints" / ("step_" + std::to_string(step))).string());
      EXPECT_TRUE(whole.ok()) << whole.status();
      if (!whole.ok() || !rec.contains("sv")) continue;
      ExpectFigures(rec["sv"], ExpectedFigures(*whole->registry, normalized));
    }
    return records;
  }

};

// tiny_cpu's unified strategy (HG + DNP + OR + IWD): per-branch γ_q/k/v,
// router and expert γ as β·α, the DNP head norms, u on v. TensorBoard gets
// the same figures.
TEST_F(ScaleVectorStatsTest, UnifiedStrategyFiguresAreThoseOfTheCheckpoints) {
  const config::RunConfig cfg = Config({});
  const std::vector<nlohmann::json> records = ExpectFiguresOfCheckpoints(cfg, "unified");
  ASSERT_FALSE(records.empty());
  // The figures moved away from the all-ones init, and experts differ.
  const nlohmann::json& sv = records.back()["sv"];
  const nlohmann::json& experts = sv["layers.0.moe.experts.gamma_gate"];
  EXPECT_EQ(experts["n"], cfg.moe().num_experts());
  EXPECT_GT(experts["rms"]["std"].get<double>(), 1e-4) << experts.dump();
  EXPECT_GT(std::fabs(sv["layers.0.attn.gamma_q"]["beta"].get<double>() - 1.0), 1e-4);
  const std::string events = EventFiles(*root_ / "unified");
  for (const char* tag :
       {"sv/layers.0.attn.gamma_q/rms", "sv/layers.0.attn.gamma_q/beta",
        "sv/layers.1.moe.experts.gamma_up/rms_mean", "sv/layers.1.moe.experts.gamma_up/rms_std",
        "sv/layers.1.moe.experts.gamma_up/beta_max"}) {
    EXPECT_NE(events.find(tag), std::string::npos) << tag;
  }
}

// Plain vectors with output-side u on routed experts' gate (split per expert)
// and the normalized OR form (rms = |β|) on dual placement.
TEST_F(ScaleVectorStatsTest, PlainAndNormalizedFormsAreThoseOfTheCheckpoints) {
  ExpectFiguresOfCheckpoints(Config({"scale_vectors.reparam=PLAIN", "scale_vectors.placement=DUAL",
                                     "scale_vectors.dual_projections=[Q, O, GATE]"}),
                             "plain_dual");
  ExpectFiguresOfCheckpoints(Config({"scale_vectors.reparam=MAGNITUDE_DIRECTION_NORMALIZED",
                                     "scale_vectors.placement=DUAL", "scale_vectors.mode=SHARED"}),
                             "normalized_shared");
}

// The same figures from device memory: the segment sums, the β copy and the
// one read run on the GPU (skipped without one; a failure under
// SCALEMOE_REQUIRE_GPU=1).
TEST_F(ScaleVectorStatsTest, OnTheGpuFiguresAreThoseOfTheCheckpoints) {
  if (ExecContext::CudaDeviceCount() == 0) {
    const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");
    if (require != nullptr && std::strcmp(require, "1") == 0) {
      FAIL() << "SCALEMOE_REQUIRE_GPU=1 but no CUDA device";
    }
    GTEST_SKIP() << "no CUDA device on this machine: gpu test skipped";
  }
  ExpectFiguresOfCheckpoints(Config({"train.device=CUDA"}), "gpu_unified");
  ExpectFiguresOfCheckpoints(
      Config({"train.device=CUDA", "train.precision=BF16", "scale_vectors.reparam=PLAIN",
              "scale_vectors.placement=DUAL", "scale_vectors.dual_projections=[Q, O, GATE]"}),
      "gpu_plain_dual_bf16");
}

TEST_F(ScaleVectorStatsTest, SwitchedOffOrWithoutVectorsNothingIsWritten) {
  for (const auto& [name, extra] : std::vector<std::pair<std::string, std::string>>{
           {"off", "logging.scale_vector_stats=false"},
           {"no_vectors", "scale_vectors.mode=NONE"}}) {
    const std::vector<nlohmann::json> records =
        Train(Config({extra, "train.train_steps=2", "train.eval_interval=0"}), name);
    ASSERT_EQ(records.size(), 1u) << name;
    EXPECT_FALSE(records[0].contains("sv")) << name << ": " << records[0].dump();
    EXPECT_EQ(EventFiles(*root_ / name).find("sv/"), std::string::npos) << name;
  }
}

}  // namespace
}  // namespace scalemoe
