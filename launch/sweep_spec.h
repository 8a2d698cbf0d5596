// The sweep spec of `scalemoe sweep` (configs/sweep.proto): parsing and the
// spec's own rules (axes well formed, names unique, zips consistent, the
// launcher sane). The points' configs are checked when the sweep is expanded
// (launch/sweep_points.h), through the one config validator.
#pragma once

#include <string>

#include "configs/sweep.pb.h"
#include "core/status.h"

namespace scalemoe {

// The axis field that is not a config field: splits every expert g-fold.
inline constexpr char kGranularityField[] = "granularity";

// Parses text-format `text`; errors read "source:line:column: message".
StatusOr<config::SweepSpec> ParseSweepSpecText(const std::string& text,
                                               const std::string& source_name);

// Reads and parses `path`; an empty `name` becomes the file's stem
// ("experts_tiny" for configs/sweeps/experts_tiny.textproto). Does not
// validate: call ValidateSweepSpec.
StatusOr<config::SweepSpec> LoadSweepSpec(const std::string& path);

// Checks the spec's own rules; one InvalidArgument lists every problem, one
// per line, each naming the field (axes[1].values, launcher.ranks, ...) and
// the fix.
Status ValidateSweepSpec(const config::SweepSpec& spec);

// The axis's column name: `name`, else the field's last component.
std::string AxisName(const config::SweepAxis& axis);

// The label of an axis value in point names: the bundle's name, or the value
// with every character outside [A-Za-z0-9.+-] replaced by '-'.
std::string ValueLabel(const std::string& value);

// The path of a "path.to.field=value" override (whitespace stripped).
std::string OverridePath(const std::string& assignment);

}  // namespace scalemoe
