// SaveCheckpoint, LatestCheckpoint and ModelFingerprint; LoadCheckpoint is in
// load.cc, DescribeCheckpoint in describe.cc.
#include "checkpoint/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/rank_sync.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/slices.h"
#include "checkpoint/xxhash64.h"
#include "core/logging.h"
#include "google/protobuf/text_format.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;

Status BadRequest(int64_t step, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("SaveCheckpoint(step ", step, "): ", problem));
}

// Fills default global shapes / slice starts and checks every slice lies
// inside its global shape.
StatusOr<std::vector<NamedTensor>> Normalize(const SaveRequest& request) {
  std::vector<NamedTensor> out;
  std::set<std::pair<std::string, Shape>> boxes;
  for (NamedTensor t : request.tensors) {
    if (t.name.empty()) return BadRequest(request.step, "a tensor has an empty name");
    if (!t.tensor.defined()) return BadRequest(request.step, absl::StrCat("tensor '", t.name, "' is undefined"));
    if (t.global_shape.empty()) t.global_shape = t.tensor.shape();
    if (t.slice_start.empty()) t.slice_start.assign(t.global_shape.size(), 0);
    // One rank may list several boxes of a tensor (the tiling check catches
    // overlaps), but not the same one twice.
    if (!boxes.insert({t.name, t.slice_start}).second) {
      return BadRequest(request.step, absl::StrCat("tensor name '", t.name, "' appears twice at slice start ",
                                                   ShapeString(t.slice_start)));
    }
    const Shape& local = t.tensor.shape();
    bool ok = t.global_shape.size() == local.size() && t.slice_start.size() == local.size();
    for (size_t d = 0; ok && d < local.size(); ++d) {
      ok = t.slice_start[d] >= 0 && t.slice_start[d] + local[d] <= t.global_shape[d];
    }
    if (!ok) {
      return BadRequest(request.step, absl::StrCat(
          "tensor '", t.name, "': local shape ", ShapeString(local), " at slice start ",
          ShapeString(t.slice_start), " does not fit global shape ", ShapeString(t.global_shape)));
    }
    out.push_back(std::move(t));
  }
  return out;
}

// Blobs are arbitrary bytes; UTF-8 text stays readable, anything else is
// stored base64.
StatusOr<std::string> BlobsJson(const std::map<std::string, std::string>& blobs) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, value] : blobs) {
    try {
      (void)nlohmann::json(value).dump();
      j[name] = {{"text", value}};
    } catch (const nlohmann::json::exception&) {
      j[name] = {{"base64", absl::Base64Escape(value)}};
    }
  }
  try {
    return j.dump(2);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("blob names must be UTF-8: ", e.what()));
  }
}

// Removes .tmp-* dirs and step dirs without COMPLETE: debris of interrupted
// saves (or of a previous prune). Called before writing, never on failure.
Status RemoveLeftovers(const std::string& checkpoints_dir) {
  std::error_code ec;
  std::vector<fs::path> doomed;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    if (absl::StartsWith(entry.path().filename().string(), kTmpPrefix)) doomed.push_back(entry.path());
  }
  SM_ASSIGN_OR_RETURN(std::vector<StepDir> steps, ListStepDirs(checkpoints_dir));
  for (const StepDir& s : steps) {
    if (!s.complete) doomed.emplace_back(s.path);
  }
  for (const fs::path& p : doomed) {
    SM_LOG(kInfo, "removing leftover of an interrupted checkpoint save: ", p.string());
    fs::remove_all(p, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot remove leftover ", p.string(), ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// Keeps the newest `keep_last` complete checkpoints plus `just_written`, and
// step_0 (the initial weights, saved only when asked for: a reference point
// for other implementations, not counted). A doomed dir is first renamed to
// .tmp-* (atomic), so a crash mid-delete never leaves a step dir with
// COMPLETE but missing files.
Status Prune(const std::string& checkpoints_dir, int keep_last, int64_t just_written) {
  if (keep_last <= 0) return absl::OkStatus();
  SM_ASSIGN_OR_RETURN(std::vector<StepDir> steps, ListStepDirs(checkpoints_dir));
  std::erase_if(steps, [](const StepDir& s) { return !s.complete || s.step == 0; });
  const size_t keep = static_cast<size_t>(keep_last);
  for (size_t i = 0; i + keep < steps.size(); ++i) {
    if (steps[i].step == just_written) continue;
    fs::path doomed = fs::path(checkpoints_dir) /
                      absl::StrCat(kTmpPrefix, "prune-", kStepPrefix, steps[i].step, "-", ::getpid());
    std::error_code ec;
    fs::rename(steps[i].path, doomed, ec);
    if (!ec) fs::remove_all(doomed, ec);
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot prune old checkpoint ", steps[i].path, ": ", ec.message()));
    }
    SM_LOG(kInfo, "pruned checkpoint ", steps[i].path, " (keep_last ", keep_last, ")");
  }
  return FsyncDirectory(checkpoints_dir);
}

std::string FragmentFileName(int rank) { return absl::StrFormat("rank_%05d.fragment.pb", rank); }

void RemoveQuietly(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

StatusOr<std::vector<NamedTensor>> CheckRequest(const SaveRequest& request, int rank, int size) {
  const int64_t step = request.step;
  if (request.root.empty()) return BadRequest(step, "root is empty; set the run directory");
  if (step < 0) return BadRequest(step, "step must be >= 0");
  if (request.keep_last < 0) return BadRequest(step, "keep_last must be >= 0 (0 keeps all)");
  if (request.layout.world_size != size || request.rank != rank) {
    return BadRequest(step, absl::StrCat(
        "request says rank ", request.rank, " of world_size ", request.layout.world_size,
        " but the communicator is rank ", rank, " of ", size,
        "; pass the world communicator (nullptr only for a world of one)"));
  }
  return Normalize(request);
}

// Rank 0, before anything is written.
Status PrepareDirs(const fs::path& checkpoints_dir, const fs::path& final_dir, int64_t step) {
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create ", checkpoints_dir.string(), ": ", ec.message(), "; check the run directory"));
  }
  if (fs::exists(final_dir / kCompleteFile, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "checkpoint ", final_dir.string(), " already exists; delete it or resume from it "
        "instead of saving step ", step, " again"));
  }
  SM_RETURN_IF_ERROR(RemoveLeftovers(checkpoints_dir.string()));
  const fs::path tmp_dir = checkpoints_dir / absl::StrCat(kTmpPrefix, kStepPrefix, step, "-", ::getpid());
  fs::create_directory(tmp_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp_dir.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

void AddFile(CheckpointManifest* manifest, const std::string& name, const FileDigest& digest) {
  FileEntry* f = manifest->add_files();
  f->set_file(name);
  f->set_bytes(digest.bytes);
  f->set_checksum(ChecksumString(digest.xxh64));
}

// This rank's safetensors file (when it has tensors), rank 0's blobs, and a
// manifest fragment listing both, all fsynced.
Status WriteRankFiles(const fs::path& tmp_dir, const SaveRequest& request,
                      const std::vector<NamedTensor>& tensors, int rank) {
  CheckpointManifest fragment;
  const std::string rank_file = RankFileName(rank);
  std::vector<std::pair<std::string, Tensor>> pairs;
  std::map<std::string, int> seen;  // boxes of each name so far in this file
  for (const NamedTensor& t : tensors) {
    const int nth = seen[t.name]++;
    const std::string key = nth == 0 ? t.name : absl::StrCat(t.name, "#", nth);
    pairs.emplace_back(key, t.tensor);
    TensorEntry* e = fragment.add_tensors();
    e->set_name(t.name);
    if (nth > 0) e->set_key(key);
    for (int64_t d : t.global_shape) e->add_global_shape(d);
    e->set_dtype(SafetensorsDTypeName(t.tensor.dtype()));
    e->set_file(rank_file);
    for (size_t d = 0; d < t.global_shape.size(); ++d) {
      Slice* s = e->add_slice();
      s->set_start(t.slice_start[d]);
      s->set_length(t.tensor.shape()[d]);
    }
    e->set_role(t.role == TensorRole::kModel ? TensorEntry::MODEL : TensorEntry::STATE);
  }
  if (!pairs.empty()) {
    const std::map<std::string, std::string> metadata = {
        {"format", "pt"}, {"scalemoe.step", absl::StrCat(request.step)},
        {"scalemoe.rank", absl::StrCat(rank)}};
    SM_ASSIGN_OR_RETURN(FileDigest digest, WriteSafetensors((tmp_dir / rank_file).string(), pairs, metadata));
    AddFile(&fragment, rank_file, digest);
  }
  if (rank == 0) {
    SM_ASSIGN_OR_RETURN(std::string blobs_json, BlobsJson(request.blobs));
    SM_ASSIGN_OR_RETURN(FileDigest digest, WriteWholeFile((tmp_dir / kBlobsFile).string(), blobs_json));
    AddFile(&fragment, kBlobsFile, digest);
  }
  std::string bytes;
  if (!fragment.SerializeToString(&bytes)) {
    return absl::InternalError(absl::StrCat("cannot serialize rank ", rank, "'s manifest fragment"));
  }
  return WriteWholeFile((tmp_dir / FragmentFileName(rank)).string(), bytes).status();
}

// Rank 0, after every rank wrote: merge, validate, write the manifest, commit.
Status Commit(const SaveRequest& request, int size, const fs::path& checkpoints_dir,
              const fs::path& tmp_dir, const fs::path& final_dir) {
  const int64_t step = request.step;
  CheckpointManifest manifest;
  manifest.set_format_version(kFormatVersion);
  manifest.set_step(step);
  manifest.set_config_text(request.config_text);
  *manifest.mutable_layout() = ToProto(request.layout);
  manifest.set_blobs_file(kBlobsFile);
  for (int r = 0; r < size; ++r) {
    const fs::path path = tmp_dir / FragmentFileName(r);
    SM_ASSIGN_OR_RETURN(FileBytes bytes, ReadWholeFile(path.string()));
    CheckpointManifest fragment;
    if (!fragment.ParseFromArray(bytes.data.get(), static_cast<int>(bytes.size))) {
      return absl::DataLossError(absl::StrCat("manifest fragment ", path.string(), " is malformed"));
    }
    manifest.MergeFrom(fragment);
    std::error_code ec;
    fs::remove(path, ec);
  }
  SM_RETURN_IF_ERROR(ValidateTiling(manifest));
  std::map<std::string, Shape> model_shapes;
  int64_t total_bytes = 0;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.role() == TensorEntry::MODEL) {
      model_shapes[e.name()] = Shape(e.global_shape().begin(), e.global_shape().end());
    }
  }
  for (const FileEntry& f : manifest.files()) total_bytes += f.bytes();
  manifest.set_model_fingerprint(ModelFingerprint(
      std::vector<std::pair<std::string, Shape>>(model_shapes.begin(), model_shapes.end())));

  std::string manifest_bytes;
  std::string manifest_text;
  if (!manifest.SerializeToString(&manifest_bytes) ||
      !google::protobuf::TextFormat::PrintToString(manifest, &manifest_text)) {
    return absl::InternalError(absl::StrCat("cannot serialize the manifest of step ", step));
  }
  SM_ASSIGN_OR_RETURN(FileDigest manifest_digest,
                      WriteWholeFile((tmp_dir / kManifestFile).string(), manifest_bytes));
  SM_RETURN_IF_ERROR(WriteWholeFile((tmp_dir / kManifestTextFile).string(), manifest_text).status());
  SM_RETURN_IF_ERROR(FsyncDirectory(tmp_dir.string()));

  // Commit: atomic rename, then the marker that makes it visible.
  std::error_code ec;
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot rename ", tmp_dir.string(), " to ",
                                                    final_dir.string(), ": ", ec.message()));
  }
  SM_RETURN_IF_ERROR(FsyncDirectory(checkpoints_dir.string()));
  SM_RETURN_IF_ERROR(WriteWholeFile((final_dir / kCompleteFile).string(),
                                    CompleteMarkerText(step, ChecksumString(manifest_digest.xxh64)))
                         .status());
  SM_RETURN_IF_ERROR(FsyncDirectory(final_dir.string()));
  SM_LOG(kInfo, "saved checkpoint ", final_dir.string(), " (", size, " rank file(s), ", total_bytes,
         " bytes)");
  return absl::OkStatus();
}

}  // namespace

std::string ModelFingerprint(std::vector<std::pair<std::string, Shape>> tensors) {
  std::sort(tensors.begin(), tensors.end());
  XxHash64 hasher;
  for (const auto& [name, shape] : tensors) {
    std::string line = absl::StrCat(name, ShapeString(shape), "\n");
    hasher.Update(line.data(), line.size());
  }
  return ChecksumString(hasher.Digest());
}

Status SaveCheckpoint(const SaveRequest& request) { return SaveCheckpoint(request, nullptr); }

Status SaveCheckpoint(const SaveRequest& request, Communicator* world) {
  const int64_t step = request.step;
  const int rank = world == nullptr ? 0 : world->rank();
  const int size = world == nullptr ? 1 : world->size();
  const fs::path checkpoints_dir = fs::path(request.root) / kCheckpointsDir;
  const fs::path final_dir = checkpoints_dir / absl::StrCat(kStepPrefix, step);

  // Phase 1: every rank checks its request; rank 0 prepares the directories
  // and picks the tmp dir (named by its pid, broadcast with the outcome).
  StatusOr<std::vector<NamedTensor>> tensors = CheckRequest(request, rank, size);
  Status local = tensors.status();
  if (local.ok() && rank == 0) local = PrepareDirs(checkpoints_dir, final_dir, step);
  double tmp_id = static_cast<double>(::getpid());
  SM_RETURN_IF_ERROR(AgreeOnStatus(world, local, absl::StrCat("save of step ", step), &tmp_id));
  const fs::path tmp_dir = checkpoints_dir / absl::StrCat(kTmpPrefix, kStepPrefix, step, "-",
                                                          static_cast<int64_t>(tmp_id));

  // Phase 2: every rank writes and fsyncs its own files.
  local = WriteRankFiles(tmp_dir, request, *tensors, rank);
  Status written = AgreeOnStatus(world, local, absl::StrCat("save of step ", step));
  if (!written.ok()) {
    if (rank == 0) RemoveQuietly(tmp_dir);
    return written;
  }

  // Phase 3: rank 0 merges the fragments, validates and commits; the final
  // agreement keeps every rank from returning before the commit.
  local = absl::OkStatus();
  if (rank == 0) {
    local = Commit(request, size, checkpoints_dir, tmp_dir, final_dir);
    if (!local.ok()) RemoveQuietly(tmp_dir);
  }
  SM_RETURN_IF_ERROR(AgreeOnStatus(world, local, absl::StrCat("commit of step ", step)));
  if (rank == 0) {
    // The checkpoint is durable now; a failed prune only leaves extra copies.
    Status pruned = Prune(checkpoints_dir.string(), request.keep_last, step);
    if (!pruned.ok()) SM_LOG(kWarning, "checkpoint saved, but pruning failed: ", pruned.message());
  }
  return absl::OkStatus();
}

StatusOr<std::string> LatestCheckpoint(const std::string& root) {
  const std::string checkpoints_dir = (fs::path(root) / kCheckpointsDir).string();
  SM_ASSIGN_OR_RETURN(std::vector<StepDir> steps, ListStepDirs(checkpoints_dir));
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    if (it->complete) return it->path;
  }
  return absl::NotFoundError(absl::StrCat("no complete checkpoint under ", checkpoints_dir,
                                          "; start from scratch or point at another run directory"));
}

}  // namespace scalemoe::checkpoint
