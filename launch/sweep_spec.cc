// Sweep spec parsing and the spec's own rules (launch/sweep_spec.h).
#include "launch/sweep_spec.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "launch/config.h"

namespace scalemoe {
namespace {

// Collects parser errors as "source:line:col: message" (1-based).
class SpecErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit SpecErrors(std::string source) : source_(std::move(source)) {}
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors_.push_back(absl::StrCat(source_, ":", line + 1, ":", column + 1, ": ", message));
  }
  std::string Joined() const { return absl::StrJoin(errors_, "\n"); }

 private:
  std::string source_;
  std::vector<std::string> errors_;
};

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '_'; }

// Checks "path=value" against the config schema (path and value type), on a
// scratch config: the error of ApplyOverride, or OK.
Status CheckOverride(const std::string& assignment) {
  config::RunConfig scratch;
  return ApplyOverride(assignment, &scratch);
}

// The problems of axis `i` (its field or bundles, values, name), appended
// to `problems`.
void CheckAxis(const config::SweepSpec& spec, int i, std::vector<std::string>* problems) {
  const config::SweepAxis& axis = spec.axes(i);
  const std::string where = absl::StrCat("axes[", i, "]");
  const bool has_field = !axis.field().empty();
  const bool has_bundles = axis.bundles_size() > 0;
  if (has_field == has_bundles) {
    problems->push_back(
        absl::StrCat(where,
                     ": give either field with values (field: \"moe.num_experts\" values: [\"4\", "
                     "\"8\"]) or bundles (bundles { name: \"baseline\" set: [...] }), ",
                     has_field ? "not both" : "one of them"));
    return;
  }
  const std::string name = AxisName(axis);
  if (name.empty()) {
    problems->push_back(absl::StrCat(where,
                                     ".name: a bundle axis needs a name (the results.csv "
                                     "column), e.g. name: \"strategy\""));
  } else if (!std::all_of(name.begin(), name.end(), IsNameChar)) {
    problems->push_back(absl::StrCat(where, ".name '", name,
                                     "': use letters, digits and '_' only (it is a CSV column "
                                     "and part of every point name)"));
  }
  // A zipped axis may repeat a label (granularity [1, 1, 2] beside experts
  // [4, 8, 16]): ExpandSweep checks that the point names differ.
  const bool zipped =
      !axis.zip_with().empty() ||
      std::any_of(spec.axes().begin(), spec.axes().end(),
                  [&](const config::SweepAxis& a) { return a.zip_with() == AxisName(axis); });
  std::set<std::string> labels;
  auto check_label = [&](const std::string& label, const std::string& field) {
    if (!labels.insert(label).second && !zipped) {
      problems->push_back(absl::StrCat(where, ".", field, ": two values have the label '", label,
                                       "' in point names; make the values distinct"));
    }
  };
  if (has_bundles) {
    if (axis.values_size() > 0) {
      problems->push_back(absl::StrCat(where,
                                       ".values: a bundle axis takes its values from "
                                       "bundles; remove values"));
    }
    for (int b = 0; b < axis.bundles_size(); ++b) {
      const config::SweepBundle& bundle = axis.bundles(b);
      const std::string bw = absl::StrCat("bundles[", b, "]");
      if (bundle.name().empty() || ValueLabel(bundle.name()) != bundle.name()) {
        problems->push_back(absl::StrCat(where, ".", bw, ".name '", bundle.name(),
                                         "': give each bundle a name of letters, digits, '.', "
                                         "'+' and '-' (it labels the point), e.g. \"unified\""));
      }
      check_label(bundle.name(), bw + ".name");
      for (int s = 0; s < bundle.set_size(); ++s) {
        if (Status st = CheckOverride(bundle.set(s)); !st.ok()) {
          problems->push_back(absl::StrCat(where, ".", bw, ".set[", s, "]: ", st.message()));
        }
      }
    }
    return;
  }
  if (axis.values_size() == 0) {
    problems->push_back(absl::StrCat(where, ".values: empty; list the values of ", axis.field(),
                                     ", e.g. values: [\"4\", \"8\"]"));
  }
  for (int v = 0; v < axis.values_size(); ++v) {
    const std::string& value = axis.values(v);
    const std::string vw = absl::StrCat(where, ".values[", v, "]");
    if (axis.field() == kGranularityField) {
      int g = 0;
      if (!absl::SimpleAtoi(value, &g) || g < 1) {
        problems->push_back(absl::StrCat(vw, " '", value,
                                         "': granularity splits each expert g-fold; give a "
                                         "positive integer"));
      }
    } else if (Status st = CheckOverride(axis.field() + "=" + value); !st.ok()) {
      problems->push_back(absl::StrCat(vw, " (field ", axis.field(), "): ", st.message()));
    }
    check_label(ValueLabel(value), absl::StrCat("values[", v, "]"));
  }
  const bool derived_ffn =
      spec.hold_fixed() != config::SweepSpec::NONE && axis.field() == "moe.expert_ffn_hidden_size";
  if (derived_ffn) {
    problems->push_back(absl::StrCat(
        where, ".field: hold_fixed ", config::SweepSpec::HoldFixed_Name(spec.hold_fixed()),
        " derives moe.expert_ffn_hidden_size; vary num_experts, top_k or granularity instead, "
        "or set hold_fixed: NONE"));
  }
  if (spec.tokens_per_point() > 0 && axis.field() == "train.train_steps") {
    problems->push_back(absl::StrCat(where,
                                     ".field: tokens_per_point derives train.train_steps; "
                                     "remove the axis or set tokens_per_point: 0"));
  }
}

// zip_with: names another axis with as many values; no cycles.
void CheckZips(const config::SweepSpec& spec, std::vector<std::string>* problems) {
  std::map<std::string, int> by_name;
  for (int i = 0; i < spec.axes_size(); ++i) {
    if (!AxisName(spec.axes(i)).empty()) by_name.emplace(AxisName(spec.axes(i)), i);
  }
  auto count = [&](int i) {
    const config::SweepAxis& a = spec.axes(i);
    return a.bundles_size() > 0 ? a.bundles_size() : a.values_size();
  };
  for (int i = 0; i < spec.axes_size(); ++i) {
    const std::string& target = spec.axes(i).zip_with();
    if (target.empty()) continue;
    const std::string where = absl::StrCat("axes[", i, "].zip_with '", target, "'");
    auto it = by_name.find(target);
    if (it == by_name.end() || it->second == i) {
      std::vector<std::string> names;
      for (const auto& [n, j] : by_name) {
        if (j != i && !n.empty()) names.push_back(n);
      }
      problems->push_back(absl::StrCat(where, ": name another axis (",
                                       names.empty() ? "there is none" : absl::StrJoin(names, ", "),
                                       ")"));
      continue;
    }
    if (count(i) != count(it->second)) {
      problems->push_back(absl::StrCat(where, ": the axes have ", count(i), " and ",
                                       count(it->second),
                                       " values; zipped axes need as many values each"));
    }
    // Follow the chain: it must end at an axis that zips with nothing.
    int hop = it->second, steps = 0;
    while (!spec.axes(hop).zip_with().empty() && steps++ <= spec.axes_size()) {
      auto next = by_name.find(spec.axes(hop).zip_with());
      if (next == by_name.end()) break;  // reported at that axis
      hop = next->second;
    }
    if (steps > spec.axes_size()) {
      problems->push_back(absl::StrCat(where,
                                       ": zip_with goes round in a cycle; let one axis of "
                                       "the group zip with nothing"));
    }
  }
}

}  // namespace

std::string AxisName(const config::SweepAxis& axis) {
  if (!axis.name().empty() || axis.field().empty()) return axis.name();
  const size_t dot = axis.field().rfind('.');
  return dot == std::string::npos ? axis.field() : axis.field().substr(dot + 1);
}

std::string ValueLabel(const std::string& value) {
  std::string label = value;
  for (char& c : label) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '+' && c != '-') c = '-';
  }
  return label;
}

std::string OverridePath(const std::string& assignment) {
  return std::string(absl::StripAsciiWhitespace(assignment.substr(0, assignment.find('='))));
}

StatusOr<config::SweepSpec> ParseSweepSpecText(const std::string& text,
                                               const std::string& source_name) {
  config::SweepSpec spec;
  SpecErrors errors(source_name);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &spec)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot parse sweep spec ", source_name,
                                                   " (fields are listed in configs/sweep.proto):\n",
                                                   errors.Joined()));
  }
  return spec;
}

StatusOr<config::SweepSpec> LoadSweepSpec(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("cannot read sweep spec ", path,
                                            ": not a file; pass one such as "
                                            "configs/sweeps/experts_tiny.textproto"));
  }
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  SM_ASSIGN_OR_RETURN(config::SweepSpec spec, ParseSweepSpecText(buffer.str(), path));
  if (spec.name().empty()) spec.set_name(std::filesystem::path(path).stem().string());
  return spec;
}

Status ValidateSweepSpec(const config::SweepSpec& spec) {
  std::vector<std::string> problems;
  if (spec.base_config().empty()) {
    problems.push_back(
        "base_config: required; the preset every point starts from, e.g. "
        "base_config: \"configs/tiny_cpu.textproto\"");
  }
  if (spec.axes_size() == 0) {
    problems.push_back(
        "axes: none; add at least one, e.g. axes { field: \"moe.num_experts\" "
        "values: [\"4\", \"8\"] }");
  }
  std::map<std::string, int> names, fields;
  for (int i = 0; i < spec.axes_size(); ++i) {
    CheckAxis(spec, i, &problems);
    const std::string name = AxisName(spec.axes(i));
    if (!name.empty() && !names.emplace(name, i).second) {
      problems.push_back(absl::StrCat("axes[", i, "]: the name '", name, "' is also axes[",
                                      names[name], "]'s; give one of them another name"));
    }
    const std::string& field = spec.axes(i).field();
    if (!field.empty() && !fields.emplace(field, i).second) {
      problems.push_back(absl::StrCat("axes[", i, "].field ", field, ": axes[", fields[field],
                                      "] varies it too; merge their values into one axis"));
    }
  }
  CheckZips(spec, &problems);
  if (spec.tokens_per_point() < 0) {
    problems.push_back(absl::StrCat("tokens_per_point=", spec.tokens_per_point(),
                                    ": give a positive token count, or 0 to keep "
                                    "train.train_steps"));
  }
  const config::SweepLauncher& launcher = spec.launcher();
  if (launcher.ranks() < 1) {
    problems.push_back(absl::StrCat("launcher.ranks=", launcher.ranks(),
                                    ": give the number of processes per point (>= 1)"));
  }
  if (launcher.kind() == config::SweepLauncher::LOCAL && launcher.ranks() > 1 &&
      launcher.mpirun().empty()) {
    problems.push_back("launcher.mpirun: empty; name the mpirun executable for ranks > 1");
  }
  if (spec.peak_tflops_per_rank() < 0) {
    problems.push_back(absl::StrCat("peak_tflops_per_rank=", spec.peak_tflops_per_rank(),
                                    ": give the device's peak TFLOP/s, or 0 for no MFU"));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("invalid sweep spec (configs/sweep.proto):\n  ",
                                                 absl::StrJoin(problems, "\n  ")));
}

}  // namespace scalemoe
