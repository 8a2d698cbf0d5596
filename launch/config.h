// Config loading, overriding and validation: the one place where a
// RunConfig (configs/scalemoe.proto) comes into being and is checked.
//
// LoadConfig parses a text-format preset and applies `--set a.b.c=value`
// overrides; ValidateConfig then checks every rule up front (sizes, ranges,
// divisibility, the parallel layout against the world size) and reports all
// problems at once, each naming the field and the fix. It is the one
// validation path: it runs each module's validator (model/model_config.h,
// moe/moe_config.h, norm/scale_options.h, optim/optimizer_config.h) and then
// launch's own rules (launch/memory_estimate.h for the sizes). Nothing
// downstream re-checks these rules: code that receives a validated config
// may rely on them. Implementation: config.cc (load, override, print) and
// config_validate.cc (rules, layout).
#pragma once

#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/status.h"

namespace scalemoe {

// Parses text-format `text`; `source_name` (usually the file path) prefixes
// every error as "source:line:column". Unknown fields and bad values are
// InvalidArgument errors naming the field.
StatusOr<config::RunConfig> ParseConfigText(const std::string& text,
                                            const std::string& source_name);

// Applies one override "a.b.c=value" by reflection. Scalars of every type,
// enums by name, bools as true/false, strings quoted or bare, messages as
// `{...}` text format; a repeated field takes `[x, y]` and the list is
// replaced, not appended to. An unknown path is an error naming it and
// listing the valid field names at that level.
Status ApplyOverride(const std::string& assignment, config::RunConfig* config);

// Reads `path` (NotFound if missing, InvalidArgument if it is a directory or
// anything but a regular file), parses it and applies `overrides` in order. Does not validate: call ValidateConfig once the world size is known.
StatusOr<config::RunConfig> LoadConfig(const std::string& path,
                                       const std::vector<std::string>& overrides);

// The ranks of one run: dense layers use TP x DP x PP, expert layers fold the
// same world into ETP x EP x EDP x PP (DESIGN.md, "Rank grid").
struct ParallelLayout {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  int ep = 1;
  int etp = 1;
  int edp = 1;
  int world = 1;
};

// Derives dp (when parallel.dp = 0) and edp from `world_size` and checks that
// both grids tile the world exactly.
StatusOr<ParallelLayout> ResolveLayout(const config::RunConfig& config, int world_size);

// The smallest world the layout fits: tp*dp*pp when dp is set, else the least
// common multiple of tp*pp and etp*ep*pp. Used when no world size is given.
int MinimalWorldSize(const config::RunConfig& config);

// Checks every rule; on failure one InvalidArgument lists all problems, one
// per line, each as "field=value ...: fix".
Status ValidateConfig(const config::RunConfig& config, int world_size);

// Text format with every field written out, defaults included, so the run
// directory's config.textproto still means the same run if a default changes.
std::string ConfigToText(const config::RunConfig& config);

}  // namespace scalemoe
