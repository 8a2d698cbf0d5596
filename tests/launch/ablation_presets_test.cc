// The scale-vector ablation's presets (configs/ablation/): every variant of
// variants.txt on every base config passes `scalemoe check-config`; each
// variant sets the fields the paper's name means (HG: mode PER_BRANCH, ...)
// and differs from the baseline in exactly those; the bases differ from each
// other only in the model kind and the optimizer; scripts/ablation_variants.py
// prints the same variants as the file holds.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/sweep_points.h"
#include "launch/sweep_spec.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

using Sv = config::ScaleVectorConfig;

constexpr char kVariants[] = "configs/ablation/variants.txt";
const char* const kBases[] = {
    "configs/ablation/moe_adamw.textproto", "configs/ablation/moe_muon.textproto",
    "configs/ablation/dense_adamw.textproto", "configs/ablation/dense_muon.textproto"};

// NAME OVERRIDE... per line, '#' comments (the file's own description).
std::map<std::string, std::vector<std::string>> ReadVariants() {
  std::ifstream in(kVariants);
  EXPECT_TRUE(in) << kVariants;
  std::map<std::string, std::vector<std::string>> variants;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line.substr(0, line.find('#')));
    std::string name, word;
    if (!(words >> name)) continue;
    EXPECT_EQ(variants.count(name), 0u) << name << " twice";
    while (words >> word) variants[name].push_back(word);
  }
  return variants;
}

// What each paper name means (SCALE_VECTORS.md): mode, placement, reparam,
// decay policy. Each single improvement is the baseline plus its one change.
struct Meaning {
  Sv::Mode mode;
  Sv::Placement placement;
  Sv::Reparam reparam;
  Sv::DecayPolicy decay;
};
const std::map<std::string, Meaning>& PaperVariants() {
  static const auto* m = new std::map<std::string, Meaning>{
      {"baseline", {Sv::SHARED, Sv::INPUT_ONLY, Sv::PLAIN, Sv::NONE_1D}},
      {"no_gamma", {Sv::NONE, Sv::INPUT_ONLY, Sv::PLAIN, Sv::NONE_1D}},
      {"iwd", {Sv::SHARED, Sv::INPUT_ONLY, Sv::PLAIN, Sv::IWD}},
      {"hg", {Sv::PER_BRANCH, Sv::INPUT_ONLY, Sv::PLAIN, Sv::NONE_1D}},
      {"dnp", {Sv::SHARED, Sv::DUAL_NORMALIZED, Sv::PLAIN, Sv::NONE_1D}},
      {"or", {Sv::SHARED, Sv::INPUT_ONLY, Sv::MAGNITUDE_DIRECTION, Sv::NONE_1D}},
      {"unified", {Sv::PER_BRANCH, Sv::DUAL_NORMALIZED, Sv::MAGNITUDE_DIRECTION, Sv::IWD}},
  };
  return *m;
}

// The fields claimed to differ from the baseline.
const std::map<std::string, std::set<std::string>>& ClaimedChanges() {
  static const auto* m = new std::map<std::string, std::set<std::string>>{
      {"baseline", {}},
      {"no_gamma", {"mode"}},
      {"iwd", {"decay_policy"}},
      {"hg", {"mode"}},
      {"dnp", {"placement"}},
      {"or", {"reparam"}},
      {"unified", {"mode", "placement", "reparam", "decay_policy"}},
  };
  return *m;
}

// Names of the top-level fields whose values differ between a and b
// (messages of one type; a field set to its default equals an unset one).
std::set<std::string> DifferingFields(const google::protobuf::Message& a,
                                      const google::protobuf::Message& b) {
  std::set<std::string> out;
  const google::protobuf::Descriptor* d = a.GetDescriptor();
  const google::protobuf::Reflection* ra = a.GetReflection();
  const google::protobuf::Reflection* rb = b.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    bool same = false;
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_ENUM && f->is_repeated()) {
      same = ra->FieldSize(a, f) == rb->FieldSize(b, f);
      for (int j = 0; same && j < ra->FieldSize(a, f); ++j) {
        same = ra->GetRepeatedEnumValue(a, f, j) == rb->GetRepeatedEnumValue(b, f, j);
      }
    } else if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_ENUM) {
      same = ra->GetEnumValue(a, f) == rb->GetEnumValue(b, f);
    } else if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_BOOL &&
               !f->is_repeated()) {
      same = ra->GetBool(a, f) == rb->GetBool(b, f);
    } else {
      ADD_FAILURE() << "no comparison for " << f->full_name() << ": extend DifferingFields";
    }
    if (!same) out.insert(f->name());
  }
  return out;
}

config::RunConfig Load(const std::string& base, const std::vector<std::string>& overrides) {
  StatusOr<config::RunConfig> c = LoadConfig(base, overrides);
  EXPECT_TRUE(c.ok()) << base << ": " << c.status();
  return c.ok() ? *c : config::RunConfig();
}

TEST(AblationPresetsTest, TheFileHoldsThePapersVariants) {
  const auto variants = ReadVariants();
  std::set<std::string> names, want;
  for (const auto& [name, overrides] : variants) names.insert(name);
  for (const auto& [name, meaning] : PaperVariants()) want.insert(name);
  EXPECT_EQ(names, want);
}

TEST(AblationPresetsTest, EveryVariantOnEveryBasePassesCheckConfig) {
  for (const char* base : kBases) {
    for (const auto& [name, overrides] : ReadVariants()) {
      std::vector<std::string> args = {"--config", base};
      for (const std::string& o : overrides) args.insert(args.end(), {"--set", o});
      ::testing::internal::CaptureStdout();
      ::testing::internal::CaptureStderr();
      const int rc = CheckConfigCommand().run(args);
      const std::string out = ::testing::internal::GetCapturedStdout();
      const std::string err = ::testing::internal::GetCapturedStderr();
      EXPECT_EQ(rc, 0) << base << " + " << name << ": " << err;
      EXPECT_THAT(out, ::testing::HasSubstr("is valid for world size 1")) << base << " + " << name;
    }
  }
}

TEST(AblationPresetsTest, EachVariantSetsWhatItsPaperNameMeansAndDiffersOnlyThere) {
  const auto variants = ReadVariants();
  for (const char* base : kBases) {
    const config::RunConfig baseline = Load(base, variants.at("baseline"));
    std::set<std::string> distinct;
    for (const auto& [name, overrides] : variants) {
      SCOPED_TRACE(std::string(base) + " + " + name);
      const config::RunConfig c = Load(base, overrides);
      const Meaning& m = PaperVariants().at(name);
      EXPECT_EQ(c.scale_vectors().mode(), m.mode);
      EXPECT_EQ(c.scale_vectors().placement(), m.placement);
      EXPECT_EQ(c.scale_vectors().reparam(), m.reparam);
      EXPECT_EQ(c.scale_vectors().decay_policy(), m.decay);
      EXPECT_EQ(DifferingFields(c.scale_vectors(), baseline.scale_vectors()),
                ClaimedChanges().at(name));
      // Nothing outside scale_vectors moves.
      config::RunConfig rest = c, base_rest = baseline;
      rest.clear_scale_vectors();
      base_rest.clear_scale_vectors();
      EXPECT_EQ(rest.SerializeAsString(), base_rest.SerializeAsString());
      distinct.insert(c.scale_vectors().SerializeAsString());
    }
    EXPECT_EQ(distinct.size(), variants.size()) << base << ": two variants are the same config";
  }
}

// The variants rely on the schema's defaults for what they leave unset.
TEST(AblationPresetsTest, BasesKeepTheDefaultsTheVariantsRelyOn) {
  for (const char* base : kBases) {
    SCOPED_TRACE(base);
    const config::RunConfig c = Load(base, {});
    EXPECT_EQ(DifferingFields(c.scale_vectors(), Sv()),
              (std::set<std::string>{"decay_policy"}))  // the baseline's NONE_1D
        << "the bases must be the baseline with every other scale_vectors field at its default";
    EXPECT_EQ(c.scale_vectors().decay_policy(), Sv::NONE_1D);
    EXPECT_EQ(c.train().device(), config::TrainConfig::CUDA);
    EXPECT_EQ(c.train().precision(), config::TrainConfig::BF16);
    EXPECT_EQ(c.name(), std::filesystem::path(base).stem().string());
  }
}

// moe_* and dense_* are one model each, *_adamw and *_muon one recipe each.
TEST(AblationPresetsTest, BasesDifferOnlyInModelKindAndOptimizer) {
  auto without_optimizer = [](config::RunConfig c) {
    c.clear_name();
    c.mutable_optimizer()->clear_type();
    c.mutable_optimizer()->clear_muon_lr();
    c.mutable_optimizer()->clear_muon_momentum();
    return c.SerializeAsString();
  };
  auto without_model_kind = [](config::RunConfig c) {
    c.clear_name();
    c.clear_moe();
    c.mutable_model()->clear_ffn_hidden_size();
    return c.SerializeAsString();
  };
  const config::RunConfig moe_adamw = Load(kBases[0], {}), moe_muon = Load(kBases[1], {});
  const config::RunConfig dense_adamw = Load(kBases[2], {}), dense_muon = Load(kBases[3], {});
  EXPECT_EQ(moe_adamw.optimizer().type(), config::OptimizerConfig::ADAMW);
  EXPECT_EQ(moe_muon.optimizer().type(), config::OptimizerConfig::MUON);
  EXPECT_EQ(dense_muon.optimizer().type(), config::OptimizerConfig::MUON);
  EXPECT_GT(moe_adamw.moe().num_experts(), 0);
  EXPECT_EQ(dense_adamw.moe().num_experts(), 0);
  EXPECT_EQ(without_optimizer(moe_adamw), without_optimizer(moe_muon));
  EXPECT_EQ(without_optimizer(dense_adamw), without_optimizer(dense_muon));
  EXPECT_EQ(without_model_kind(moe_adamw), without_model_kind(dense_adamw));
  // The dense MLP is as wide as the MoE's active experts.
  EXPECT_EQ(dense_adamw.model().ffn_hidden_size(),
            moe_adamw.moe().top_k() * moe_adamw.moe().expert_ffn_hidden_size());
}

// The stdout of `command` (a failed command fails the test).
std::string Stdout(const std::string& command) {
  std::FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return "";
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  EXPECT_EQ(::pclose(pipe), 0) << command << ": " << out;
  return out;
}

TEST(AblationPresetsTest, TheScriptPrintsTheFilesVariants) {
  if (std::system("python3 --version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no python3 here: scripts/ablation_variants.py not checked";
  }
  const std::string out = Stdout("python3 scripts/ablation_variants.py --json");
  const nlohmann::json printed = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(printed.is_object()) << out;
  const auto variants = ReadVariants();
  EXPECT_EQ(printed.size(), variants.size());
  for (const auto& [name, overrides] : variants) {
    ASSERT_TRUE(printed.contains(name)) << name;
    EXPECT_EQ(printed[name].get<std::vector<std::string>>(), overrides) << name;
  }
}

// --sweep-spec prints a spec that `scalemoe sweep` takes: every variant x
// seed, each point the variant's overrides and its seed on the base config.
TEST(AblationPresetsTest, TheScriptPrintsASweepOfEveryVariantAndSeed) {
  if (std::system("python3 --version > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "no python3 here: scripts/ablation_variants.py not checked";
  }
  const std::string text =
      Stdout(std::string("python3 scripts/ablation_variants.py --sweep-spec ") + kBases[0] +
             " --seeds 1234,1235");
  StatusOr<config::SweepSpec> spec = ParseSweepSpecText(text, "ablation sweep");
  ASSERT_TRUE(spec.ok()) << spec.status() << "\n" << text;
  ASSERT_TRUE(ValidateSweepSpec(*spec).ok()) << ValidateSweepSpec(*spec);
  StatusOr<std::vector<SweepPoint>> points = ExpandSweep(*spec);
  ASSERT_TRUE(points.ok()) << points.status();
  const auto variants = ReadVariants();
  ASSERT_EQ(points->size(), 2 * variants.size());
  std::set<std::pair<std::string, std::string>> seen;
  for (const SweepPoint& p : *points) {
    ASSERT_EQ(p.values.size(), 2u) << p.name;
    std::string variant = p.values[0].second;  // no_gamma is labelled no-gamma
    std::replace(variant.begin(), variant.end(), '-', '_');
    const std::string& seed = p.values[1].second;
    seen.insert({variant, seed});
    ASSERT_TRUE(variants.count(variant)) << p.name;
    for (const std::string& o : variants.at(variant)) {
      EXPECT_THAT(p.overrides, ::testing::Contains(o)) << p.name;
    }
    EXPECT_EQ(std::to_string(p.config.train().seed()), seed) << p.name;
  }
  EXPECT_EQ(seen.size(), 2 * variants.size());
}

}  // namespace
}  // namespace scalemoe
