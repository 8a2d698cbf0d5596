#include "checkpoint/manifest_io.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/xxhash64.h"

namespace scalemoe::checkpoint {

namespace fs = std::filesystem;

namespace {

// The N of a directory named step_N (any trailing '/' ignored), or -1 when
// the name carries no step (a copy under another name is fine).
int64_t StepOfDirName(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  // Own the file name: a view into filename()'s temporary dangles (ASan:
  // stack-use-after-scope).
  const std::string base = fs::path(dir).filename().string();
  absl::string_view name = base;
  int64_t step = -1;
  if (!absl::ConsumePrefix(&name, kStepPrefix) || name.empty() ||
      !std::all_of(name.begin(), name.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(name, &step)) {
    return -1;
  }
  return step;
}

}  // namespace

std::string CompleteMarkerText(int64_t step, const std::string& manifest_checksum) {
  return absl::StrCat("step ", step, "\nmanifest ", manifest_checksum, "\n");
}

StatusOr<CheckpointManifest> ReadVerifiedManifest(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir,
                                            " does not exist; check the path (checkpoints/step_N)"));
  }
  const std::string complete_path = (fs::path(dir) / kCompleteFile).string();
  StatusOr<FileBytes> marker = ReadWholeFile(complete_path);
  if (!marker.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " is incomplete (no readable ", kCompleteFile,
        " marker: the save was interrupted); load an earlier checkpoint, e.g. the one "
        "LatestCheckpoint picks"));
  }
  std::string marker_text(reinterpret_cast<const char*>(marker->data.get()), marker->size);
  std::string expected_checksum;
  int64_t marker_step = -1;
  for (absl::string_view line : absl::StrSplit(marker_text, '\n')) {
    if (absl::ConsumePrefix(&line, "manifest ")) expected_checksum = std::string(line);
    if (absl::ConsumePrefix(&line, "step ") && !absl::SimpleAtoi(line, &marker_step)) {
      marker_step = -2;  // unreadable: disagrees with any manifest step
    }
  }

  const std::string manifest_path = (fs::path(dir) / kManifestFile).string();
  StatusOr<FileBytes> bytes = ReadWholeFile(manifest_path);
  if (!bytes.ok()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", dir, " has ", kCompleteFile,
                                            " but its manifest is unreadable: ",
                                            bytes.status().message()));
  }
  if (ChecksumString(bytes->xxh64) != expected_checksum) {
    return absl::DataLossError(absl::StrCat(
        "manifest ", manifest_path, " has checksum ", ChecksumString(bytes->xxh64), " but ",
        kCompleteFile, " records '", expected_checksum, "': the manifest is corrupt"));
  }
  CheckpointManifest manifest;
  if (!manifest.ParseFromArray(bytes->data.get(), static_cast<int>(bytes->size))) {
    return absl::DataLossError(absl::StrCat("manifest ", manifest_path, " does not parse"));
  }
  if (manifest.format_version() != kFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " has format_version ", manifest.format_version(),
        " but this build reads version ", kFormatVersion, "; use a matching scalemoe build"));
  }
  // A step directory renamed or copied over another name would be loaded as
  // that step and clash with the next save (e.g. step_5 holding step 3: the
  // resumed run saves step_4, then finds step_5 taken). Refuse it up front.
  if (marker_step != manifest.step()) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint ", dir, ": ", kCompleteFile, " records step ", marker_step,
        " but the manifest step ", manifest.step(), ": the directory is corrupt"));
  }
  const int64_t named = StepOfDirName(dir);
  if (named >= 0 && named != manifest.step()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint directory ", dir, " is named ", kStepPrefix, named, " but holds step ",
        manifest.step(), " (renamed or copied?): rename it to ", kStepPrefix, manifest.step(),
        " (or move it out of checkpoints/) before loading it"));
  }
  return manifest;
}

Layout ToProto(const CheckpointLayout& l) {
  Layout p;
  p.set_tp(l.tp);
  p.set_pp(l.pp);
  p.set_dp(l.dp);
  p.set_ep(l.ep);
  p.set_etp(l.etp);
  p.set_world_size(l.world_size);
  p.set_zero_stage(l.zero_stage);
  return p;
}

CheckpointLayout FromProto(const Layout& p) {
  CheckpointLayout l;
  l.tp = p.tp();
  l.pp = p.pp();
  l.dp = p.dp();
  l.ep = p.ep();
  l.etp = p.etp();
  l.world_size = p.world_size();
  l.zero_stage = p.zero_stage();
  return l;
}

StatusOr<std::vector<StepDir>> ListStepDirs(const std::string& checkpoints_dir) {
  std::vector<StepDir> out;
  std::error_code ec;
  if (!fs::exists(checkpoints_dir, ec)) return out;
  fs::directory_iterator it(checkpoints_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot list ", checkpoints_dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& entry : it) {
    StepDir dir;
    dir.step = StepOfDirName(entry.path().string());
    if (dir.step < 0 || !entry.is_directory(ec)) continue;
    dir.path = entry.path().string();
    dir.complete = fs::is_regular_file(entry.path() / kCompleteFile, ec);
    out.push_back(dir);
  }
  std::sort(out.begin(), out.end(),
            [](const StepDir& a, const StepDir& b) { return a.step < b.step; });
  return out;
}

}  // namespace scalemoe::checkpoint
