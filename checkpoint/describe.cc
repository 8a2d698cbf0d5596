// DescribeCheckpoint: the text behind `scalemoe inspect --checkpoint DIR`.
#include <filesystem>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/xxhash64.h"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string FileStatus(const std::string& dir, const FileEntry& f) {
  StatusOr<FileBytes> bytes = ReadWholeFile((fs::path(dir) / f.file()).string());
  if (!bytes.ok()) return "BAD (missing or unreadable)";
  if (static_cast<int64_t>(bytes->size) != f.bytes()) {
    return absl::StrCat("BAD (", bytes->size, " bytes, manifest says ", f.bytes(), ")");
  }
  if (ChecksumString(bytes->xxh64) != f.checksum()) {
    return absl::StrCat("BAD (checksum ", ChecksumString(bytes->xxh64), ")");
  }
  return "OK";
}

}  // namespace

StatusOr<std::string> CheckpointConfigText(const std::string& dir) {
  SM_ASSIGN_OR_RETURN(CheckpointManifest m, ReadVerifiedManifest(dir));
  return m.config_text();
}

StatusOr<std::string> DescribeCheckpoint(const std::string& dir, int* bad_files) {
  SM_ASSIGN_OR_RETURN(CheckpointManifest m, ReadVerifiedManifest(dir));
  const Layout& l = m.layout();
  std::string out = absl::StrCat("checkpoint ", dir, "\n", "step ", m.step(), "  format_version ",
                                 m.format_version(), "\n", "model fingerprint ",
                                 m.model_fingerprint(), "\n");
  absl::StrAppend(&out, absl::StrFormat(
      "layout tp=%d pp=%d dp=%d ep=%d etp=%d world_size=%d zero_stage=%d\n", l.tp(), l.pp(),
      l.dp(), l.ep(), l.etp(), l.world_size(), l.zero_stage()));

  int64_t total = 0;
  absl::StrAppend(&out, "tensors (", m.tensors_size(), "):\n");
  for (const TensorEntry& e : m.tensors()) {
    std::vector<std::string> slice;
    int64_t numel = 1;
    for (const Slice& s : e.slice()) {
      slice.push_back(absl::StrCat(s.start(), ":", s.start() + s.length()));
      numel *= s.length();
    }
    StatusOr<DType> dtype = ParseSafetensorsDType(e.dtype());
    int64_t bytes = dtype.ok() ? numel * static_cast<int64_t>(DTypeSize(*dtype)) : 0;
    total += bytes;
    absl::StrAppend(&out, absl::StrFormat(
        "  %-48s %-5s %-7s global [%s] slice [%s] %d bytes in %s\n", e.name(), e.dtype(),
        e.role() == TensorEntry::MODEL ? "model" : "state",
        absl::StrJoin(e.global_shape(), ", "), absl::StrJoin(slice, ", "), bytes, e.file()));
  }
  absl::StrAppend(&out, "tensor bytes total ", total, "\n", "files (", m.files_size(), "):\n");
  int bad = 0;
  for (const FileEntry& f : m.files()) {
    const std::string status = FileStatus(dir, f);
    bad += status != "OK";
    absl::StrAppend(&out, absl::StrFormat("  %-28s %12d bytes  %s  %s\n", f.file(), f.bytes(),
                                          f.checksum(), status));
  }
  if (bad_files != nullptr) *bad_files = bad;
  return out;
}

}  // namespace scalemoe::checkpoint
