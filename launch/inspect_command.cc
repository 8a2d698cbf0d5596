// `scalemoe inspect`: builds the model of a config on a ParamRegistry WITHOUT
// materializing it (nothing is allocated, so any size can be inspected) and
// prints every parameter (global name, global shape, the per-rank shape under
// tp/etp > 1, role, element count) and the
// totals: parameters, active parameters per token, training FLOPs per token,
// and the scale vectors' count and share.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/params.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "launch/memory_estimate.h"
#include "model/model.h"
#include "norm/scale_options.h"
#include "optim/param_groups.h"
#include "parallel/process_groups.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe inspect --config FILE [--set a.b=value]... [--world N]\n"
    "       scalemoe inspect --checkpoint DIR\n"
    "  Builds the model of FILE (after the overrides) without allocating it and\n"
    "  prints the parameter table (name, shape, role, count) and the totals.\n"
    "  --world N checks the layout for N ranks (default: the smallest that fits)\n"
    "  and prints every process group as lists of global ranks.\n"
    "  --checkpoint DIR prints a checkpoint's manifest: step, layout, tensors\n"
    "  (dtype, global shape, slice, bytes) and each file's checksum status.\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "scalemoe inspect: %s\n", message.c_str());
  return 2;
}

// "1,234,567": large counts stay readable.
std::string Grouped(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// The shape each rank holds of `spec` under `layout`: the global shape with
// the split dim divided by tp (or etp for an expert-TP split).
Shape PerRankShape(const ParamSpec& spec, const ParallelLayout& layout) {
  Shape shape = spec.shape;
  const int d = spec.layout.tp_split_dim;
  if (d >= 0 && d < static_cast<int>(shape.size())) {
    shape[d] /= spec.layout.tp_group == TpGroup::kExpert ? layout.etp : layout.tp;
  }
  return shape;
}

// How the (E)TP group holds `spec` (its ParamLayout): "split" (each rank a
// slice), "sum" (replicated; each rank's backward gives a share of the
// gradient, summed over the group) or "copy" (replicated, computed whole).
std::string TpTreatment(const ParamSpec& spec) {
  const char* group = spec.layout.tp_group == TpGroup::kExpert ? "etp" : "tp";
  if (spec.layout.tp_split_dim >= 0) return absl::StrCat("split/", group);
  if (spec.layout.tp_partial_grad) return absl::StrCat("sum/", group);
  return "copy";
}

// Shapes are global; with tp or etp > 1 a "per rank" column shows the slice
// every (E)TP rank holds (equal to the global shape when replicated) and a
// "tp" column how the group holds it (TpTreatment).
void PrintTable(const ParamRegistry& registry, DecayPolicy policy, const ParallelLayout& layout) {
  const bool split = layout.tp > 1 || layout.etp > 1;
  size_t name_width = 4, shape_width = 5, local_width = 8;
  for (const auto& p : registry.params()) {
    name_width = std::max(name_width, p->spec.name.size());
    shape_width = std::max(shape_width, ShapeString(p->spec.shape).size());
    local_width = std::max(local_width, ShapeString(PerRankShape(p->spec, layout)).size());
  }
  const int nw = static_cast<int>(name_width), sw = static_cast<int>(shape_width);
  const int lw = split ? static_cast<int>(local_width) : 0;
  if (split) {
    std::printf("shapes are global; 'per rank' is what each of the tp=%d (etp=%d for expert-TP "
                "splits) ranks holds; tp: split = sliced over the group, sum = replicated with "
                "its gradient shares summed over the group, copy = replicated and whole\n",
                layout.tp, layout.etp);
  }
  const int tw = split ? 9 : 0;
  std::printf("%-*s  %-*s  %-*s%s%-*s%s%-17s  %-5s  %13s\n", nw, "name", sw, "shape", lw,
              split ? "per rank" : "", split ? "  " : "", tw, split ? "tp" : "",
              split ? "  " : "", "role", "decay", "count");
  for (const auto& p : registry.params()) {
    const bool decays =
        Decays(p->spec.role, static_cast<int>(p->spec.shape.size()), policy);
    const std::string local = split ? ShapeString(PerRankShape(p->spec, layout)) : "";
    const std::string tp = split ? TpTreatment(p->spec) : "";
    std::printf("%-*s  %-*s  %-*s%s%-*s%s%-17s  %-5s  %13s\n", nw, p->spec.name.c_str(), sw,
                ShapeString(p->spec.shape).c_str(), lw, local.c_str(), split ? "  " : "", tw,
                tp.c_str(), split ? "  " : "", ParamRoleName(p->spec.role),
                decays ? "yes" : "no", Grouped(NumElements(p->spec.shape)).c_str());
  }
}

int RunInspect(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags =
      ParseFlags(args, {{"config", true, false},
                        {"set", true, true},
                        {"world", true, false},
                        {"checkpoint", true, false}});
  if (!flags.ok()) return Fail(std::string(flags.status().message()) + "\n" + kUsage);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  if (flags->Has("checkpoint")) {
    const std::string dir = flags->Get("checkpoint");
    int bad_files = 0;
    StatusOr<std::string> described = checkpoint::DescribeCheckpoint(dir, &bad_files);
    if (!described.ok()) {
      Fail(std::string(described.status().message()));
      return 1;  // a runtime failure, not bad usage
    }
    std::printf("%s", described->c_str());
    std::fflush(stdout);
    if (bad_files > 0) {  // listed, but the checkpoint cannot be loaded
      Fail(absl::StrCat("checkpoint ", dir, ": ", bad_files, " file(s) BAD (listed above); it "
                        "cannot be loaded: resume from an earlier checkpoint"));
      return 1;
    }
    return 0;
  }
  const std::string path = flags->Get("config");
  if (path.empty()) return Fail(std::string("--config is required\n") + kUsage);
  StatusOr<config::RunConfig> cfg = LoadConfig(path, flags->All("set"));
  if (!cfg.ok()) return Fail(std::string(cfg.status().message()));
  StatusOr<int64_t> world = flags->GetInt("world", MinimalWorldSize(*cfg));
  if (!world.ok()) return Fail(std::string(world.status().message()));
  if (*world < 1 || *world > (1 << 20)) {
    return Fail("--world " + std::to_string(*world) + " must be between 1 and 1048576");
  }
  if (Status s = ValidateConfig(*cfg, static_cast<int>(*world)); !s.ok()) {
    return Fail(path + ": " + std::string(s.message()));
  }
  StatusOr<ParallelLayout> layout = ResolveLayout(*cfg, static_cast<int>(*world));
  if (!layout.ok()) return Fail(std::string(layout.status().message()));
  ParamRegistry registry;
  MoeTransformer model(registry, *cfg);
  const DecayPolicy policy = ScaleOptions(cfg->scale_vectors()).decay_policy();
  PrintTable(registry, policy, *layout);
  const ModelCounts c = model.Counts();
  std::printf("\nparameters:            %s (%zu tensors)\n", Grouped(c.total_params).c_str(),
              registry.params().size());
  std::printf("active per token:      %s\n", Grouped(c.active_params_per_token).c_str());
  std::printf("scale vectors:         %s (%.4f%% of parameters)\n",
              Grouped(c.scale_vector_params).c_str(), 100.0 * c.scale_vector_share);
  std::printf("train FLOPs per token: %.4g\n", c.train_flops_per_token);
  std::printf("estimated memory:      %s, of train.device_memory_gib=%g\n",
              EstimateMemory(*cfg, *layout).Summary().c_str(), cfg->train().device_memory_gib());
  StatusOr<ParamGroups> groups = ParamGroups::Create(registry, cfg->optimizer(), policy);
  if (!groups.ok()) return Fail(std::string(groups.status().message()));
  std::printf("\noptimizer groups (decay policy %s):\n%s",
              config::ScaleVectorConfig::DecayPolicy_Name(policy).c_str(),
              groups->DescribeGroups().c_str());
  StatusOr<RankGrid> grid = RankGrid::Create(
      layout->world, {.tp = layout->tp, .dp = layout->dp, .pp = layout->pp,
                      .etp = layout->etp, .ep = layout->ep, .edp = layout->edp});
  if (!grid.ok()) return Fail(std::string(grid.status().message()));
  std::printf("\n%s", grid->Describe().c_str());
  return 0;
}

}  // namespace

Subcommand InspectCommand() {
  return {"inspect", "print a config's parameter table and counts (allocates nothing)",
          RunInspect};
}

}  // namespace scalemoe
