// Internal to checkpoint/: reading a step directory's COMPLETE marker and
// manifest, layout conversion, and the scan of checkpoints/ for step dirs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/manifest.pb.h"
#include "core/status.h"

namespace scalemoe::checkpoint {

// Contents of COMPLETE: "step N\nmanifest xxh64:...\n".
std::string CompleteMarkerText(int64_t step, const std::string& manifest_checksum);

// Reads <dir>/COMPLETE and <dir>/manifest.pb, checking the manifest's
// checksum against the marker and the format version.
StatusOr<CheckpointManifest> ReadVerifiedManifest(const std::string& dir);

Layout ToProto(const CheckpointLayout& layout);
CheckpointLayout FromProto(const Layout& layout);

// A step_N directory under checkpoints/.
struct StepDir {
  int64_t step = 0;
  std::string path;
  bool complete = false;
};
// step_N dirs (N all digits) of `checkpoints_dir`, ascending by step; empty
// when the directory does not exist.
StatusOr<std::vector<StepDir>> ListStepDirs(const std::string& checkpoints_dir);

}  // namespace scalemoe::checkpoint
