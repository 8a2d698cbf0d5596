// LoadCheckpoint: verify everything, stage everything, then write targets.
#include <deque>
#include <filesystem>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/rank_sync.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/slices.h"
#include "checkpoint/xxhash64.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;

Shape ToShape(const google::protobuf::RepeatedField<int64_t>& dims) {
  return Shape(dims.begin(), dims.end());
}

// Names the tensors whose presence or global shape differs between the
// checkpoint and the model, so a fingerprint mismatch says what to fix.
std::string FingerprintDiff(const CheckpointManifest& manifest,
                            const std::map<std::string, Shape>& model) {
  std::map<std::string, Shape> saved;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.role() == TensorEntry::MODEL) saved[e.name()] = ToShape(e.global_shape());
  }
  std::vector<std::string> diffs;
  for (const auto& [name, shape] : saved) {
    auto it = model.find(name);
    if (it == model.end()) {
      diffs.push_back(absl::StrCat("'", name, "' is in the checkpoint but not in the model"));
    } else if (it->second != shape) {
      diffs.push_back(absl::StrCat("'", name, "' has global shape ", ShapeString(shape),
                                   " in the checkpoint but ", ShapeString(it->second), " in the model"));
    }
  }
  for (const auto& [name, shape] : model) {
    if (!saved.count(name)) diffs.push_back(absl::StrCat("'", name, "' is in the model but not in the checkpoint"));
  }
  constexpr size_t kMaxShown = 8;
  std::string out;
  for (size_t i = 0; i < diffs.size() && i < kMaxShown; ++i) absl::StrAppend(&out, "; ", diffs[i]);
  if (diffs.size() > kMaxShown) absl::StrAppend(&out, "; and ", diffs.size() - kMaxShown, " more");
  return out;
}

StatusOr<std::map<std::string, std::string>> ParseBlobs(const std::string& path, const FileBytes& bytes) {
  std::map<std::string, std::string> blobs;
  try {
    const char* text = reinterpret_cast<const char*>(bytes.data.get());
    nlohmann::json j = nlohmann::json::parse(text, text + bytes.size);
    for (const auto& [name, value] : j.items()) {
      if (value.contains("text")) {
        blobs[name] = value["text"].get<std::string>();
      } else if (!absl::Base64Unescape(value.at("base64").get<std::string>(), &blobs[name])) {
        return absl::DataLossError(absl::StrCat("blob '", name, "' in ", path, " is not valid base64"));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("blobs file ", path, " is malformed: ", e.what()));
  }
  return blobs;
}

bool ConvertibleDType(DType from, DType to) {
  auto is_float = [](DType d) { return d == DType::kF32 || d == DType::kBF16; };
  return from == to || (is_float(from) && is_float(to));
}

// The stored shards a target is assembled from.
struct Piece {
  const TensorEntry* entry;
  Box box;  // intersection with the target, global coordinates
};
struct TargetPlan {
  const NamedTensor* target;
  Box box;  // the target's region of the global tensor
  std::vector<Piece> pieces;
};

// A verified source for one target.
struct Staged {
  Tensor source;  // CPU: a view into a staged file buffer or an assembled copy
  Tensor target;
};

// Which stored shards cover each target; errors when a target lies outside
// its tensor, the tensor is missing, or the shards leave part of it uncovered.
StatusOr<std::vector<TargetPlan>> PlanTargets(const std::string& dir, const CheckpointManifest& manifest,
                                              const std::vector<const NamedTensor*>& targets) {
  std::map<std::string, std::vector<const TensorEntry*>> by_name;
  for (const TensorEntry& e : manifest.tensors()) by_name[e.name()].push_back(&e);
  std::vector<TargetPlan> plans;
  for (const NamedTensor* t : targets) {
    const std::string& name = t->name;
    auto found = by_name.find(name);
    if (found == by_name.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in checkpoint ", dir,
                                              "; drop it from the load or resume from a checkpoint that has it"));
    }
    const Shape global = t->global_shape.empty() ? t->tensor.shape() : t->global_shape;
    const Shape stored = ToShape(found->second.front()->global_shape());
    if (stored != global) {
      const bool legacy_flat = stored.size() == 1 && stored[0] == NumElements(global);
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor '", name, "' has global shape ", ShapeString(stored), " in checkpoint ", dir, " but ",
          ShapeString(global), " in the model",
          legacy_flat ? "; this checkpoint stores optimizer state flattened (written before "
                        "2026-11-25): resume it once without tensor parallelism, save, then "
                        "change the layout"
                      : ""));
    }
    TargetPlan plan{t, {t->slice_start.empty() ? Shape(global.size(), 0) : t->slice_start, t->tensor.shape()}, {}};
    bool inside = plan.box.start.size() == global.size() && plan.box.size.size() == global.size();
    for (size_t d = 0; inside && d < global.size(); ++d) {
      inside = plan.box.start[d] >= 0 && plan.box.start[d] + plan.box.size[d] <= global[d];
    }
    if (!inside) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LoadCheckpoint: target '", name, "' asks for ", BoxString(plan.box), " (slice start ",
          ShapeString(plan.box.start), ", shape ", ShapeString(plan.box.size), ") outside global shape ",
          ShapeString(global)));
    }
    int64_t covered = 0;
    for (const TensorEntry* e : found->second) {
      SM_ASSIGN_OR_RETURN(DType stored_dtype, ParseSafetensorsDType(e->dtype()));
      if (!ConvertibleDType(stored_dtype, t->tensor.dtype())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", name, "' is stored as ", DTypeName(stored_dtype), " but the target is ",
            DTypeName(t->tensor.dtype()), "; only f32 <-> bf16 conversion is supported"));
      }
      if (Volume(plan.box) == 0) break;
      if (std::optional<Box> both = Intersect(EntryBox(*e), plan.box)) {
        covered += Volume(*both);
        plan.pieces.push_back({e, *both});
      }
    }
    if (covered != Volume(plan.box)) {
      return absl::DataLossError(absl::StrCat(
          "tensor '", name, "': the shards in checkpoint ", dir, " cover ", covered, " of the ",
          Volume(plan.box), " elements of ", BoxString(plan.box), "; the manifest is incomplete"));
    }
    plans.push_back(std::move(plan));
  }
  return plans;
}

// Reads and verifies (size, checksum, format) the listed files.
Status ReadFiles(const std::string& dir, const CheckpointManifest& manifest, const std::set<std::string>& wanted,
                 std::map<std::string, SafetensorsFile>* files, std::optional<FileBytes>* blobs_bytes) {
  for (const FileEntry& f : manifest.files()) {
    if (!wanted.count(f.file())) continue;
    const std::string path = (fs::path(dir) / f.file()).string();
    StatusOr<FileBytes> bytes = ReadWholeFile(path);
    if (!bytes.ok()) {
      return absl::DataLossError(absl::StrCat("checkpoint file ", path, " listed in the manifest is missing or unreadable: ",
                                              bytes.status().message()));
    }
    if (static_cast<int64_t>(bytes->size) != f.bytes()) {
      return absl::DataLossError(absl::StrCat("checkpoint file ", path, " has ", bytes->size,
                                              " bytes but the manifest records ", f.bytes(),
                                              " (truncated or overwritten)"));
    }
    if (ChecksumString(bytes->xxh64) != f.checksum()) {
      return absl::DataLossError(absl::StrCat("checkpoint file ", path, " fails its checksum (",
                                              ChecksumString(bytes->xxh64), ", manifest records ",
                                              f.checksum(), "): the file is corrupt"));
    }
    if (f.file() == manifest.blobs_file()) {
      *blobs_bytes = *bytes;
    } else {
      SM_ASSIGN_OR_RETURN(SafetensorsFile st, SafetensorsFile::Parse(path, bytes->data, bytes->size, bytes->xxh64));
      files->emplace(f.file(), std::move(st));
    }
  }
  for (const std::string& name : wanted) {
    if (name != manifest.blobs_file() && !files->count(name)) {
      return absl::DataLossError(absl::StrCat("a tensor names file ", name, " which the manifest of ", dir,
                                              " does not list"));
    }
  }
  return absl::OkStatus();
}

// A target's data from its pieces: the stored view itself when one shard is
// exactly the target, else an assembled CPU copy.
StatusOr<Tensor> Assemble(const TargetPlan& plan, const std::map<std::string, SafetensorsFile>& files) {
  const std::string& name = plan.target->name;
  Tensor staging;
  for (const Piece& p : plan.pieces) {
    const SafetensorsFile& file = files.at(p.entry->file());
    SM_ASSIGN_OR_RETURN(Tensor source, file.Get(EntryKey(*p.entry)));
    const Box stored = EntryBox(*p.entry);
    if (source.shape() != stored.size || SafetensorsDTypeName(source.dtype()) != p.entry->dtype()) {
      return absl::DataLossError(absl::StrCat(
          "tensor '", name, "' in ", file.path(), " is ", SafetensorsDTypeName(source.dtype()),
          ShapeString(source.shape()), " but the manifest says ", p.entry->dtype(), ShapeString(stored.size)));
    }
    if (plan.pieces.size() == 1 && stored.start == plan.box.start && stored.size == plan.box.size) {
      return source;
    }
    if (!staging.defined()) staging = Tensor::Empty(plan.box.size, plan.target->tensor.dtype());
    CopyBox(source, stored.start, staging, plan.box.start, p.box);
  }
  if (!staging.defined()) staging = Tensor::Empty(plan.box.size, plan.target->tensor.dtype());
  return staging;
}

// "name\tdim,dim\n" per kModel target, and back.
std::string EncodeModel(const std::map<std::string, Shape>& model) {
  std::string out;
  for (const auto& [name, shape] : model) absl::StrAppend(&out, name, "\t", absl::StrJoin(shape, ","), "\n");
  return out;
}
void DecodeModelInto(const std::string& text, std::map<std::string, Shape>* model) {
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> parts = absl::StrSplit(line, '\t');
    Shape shape;
    for (absl::string_view d : absl::StrSplit(parts.back(), ',', absl::SkipEmpty())) {
      int64_t v = 0;
      (void)absl::SimpleAtoi(d, &v);
      shape.push_back(v);
    }
    (*model)[std::string(parts.front())] = shape;
  }
}

// Verified sources for every target, and the file buffers they view.
struct StagedLoad {
  std::map<std::string, SafetensorsFile> files;
  std::vector<Staged> staged;
};

// Checkpoints written before optimizer state took its parameter's shape
// (2026-11-25) store it flattened, global shape [numel]. A state target box
// that is one contiguous run of the row-major global tensor (always so
// without tensor parallelism) reads the same elements from that flat tensor:
// returns the equivalent 1-D target (kept in `owned`), or nullptr when `t`
// is not such a case.
const NamedTensor* FlatLegacyTarget(const CheckpointManifest& manifest, const NamedTensor& t,
                                    std::deque<NamedTensor>* owned) {
  if (t.role != TensorRole::kState || t.global_shape.size() < 2) return nullptr;
  const TensorEntry* stored = nullptr;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.name() == t.name) {
      stored = &e;
      break;
    }
  }
  if (stored == nullptr || stored->global_shape_size() != 1 ||
      stored->global_shape(0) != NumElements(t.global_shape) || !t.tensor.is_contiguous()) {
    return nullptr;
  }
  const Shape& g = t.global_shape;
  const Shape start = t.slice_start.empty() ? Shape(g.size(), 0) : t.slice_start;
  const Shape& size = t.tensor.shape();
  // Contiguous: below the first dim holding more than one index, every dim is
  // whole.
  size_t d = 0;
  while (d < g.size() && size[d] == 1) ++d;
  for (size_t k = d + 1; k < g.size(); ++k) {
    if (start[k] != 0 || size[k] != g[k]) return nullptr;
  }
  int64_t flat = 0;
  for (size_t k = 0; k < g.size(); ++k) flat = flat * g[k] + start[k];
  owned->push_back({t.name, t.tensor.View({t.tensor.numel()}), {NumElements(g)}, {flat}, t.role});
  return &owned->back();
}

// Everything one rank checks and stages alone (no collectives).
StatusOr<StagedLoad> StageLocally(const std::string& dir, const CheckpointManifest& manifest,
                                           const std::vector<const NamedTensor*>& targets,
                                           const std::map<std::string, Shape>& model,
                                           std::optional<FileBytes>* blobs_bytes) {
  const std::string fingerprint =
      ModelFingerprint(std::vector<std::pair<std::string, Shape>>(model.begin(), model.end()));
  if (fingerprint != manifest.model_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " is from a different model (fingerprint ", manifest.model_fingerprint(),
        ", current model ", fingerprint, ")", FingerprintDiff(manifest, model),
        "; resume from a checkpoint of this model or change the model config to match"));
  }
  std::deque<NamedTensor> legacy;
  std::vector<const NamedTensor*> planned = targets;
  for (const NamedTensor*& t : planned) {
    if (const NamedTensor* flat = FlatLegacyTarget(manifest, *t, &legacy)) t = flat;
  }
  SM_ASSIGN_OR_RETURN(std::vector<TargetPlan> plans, PlanTargets(dir, manifest, planned));
  std::set<std::string> wanted;
  if (!manifest.blobs_file().empty()) wanted.insert(manifest.blobs_file());
  for (const TargetPlan& plan : plans) {
    for (const Piece& p : plan.pieces) wanted.insert(p.entry->file());
  }
  StagedLoad out;
  SM_RETURN_IF_ERROR(ReadFiles(dir, manifest, wanted, &out.files, blobs_bytes));
  for (const TargetPlan& plan : plans) {
    SM_ASSIGN_OR_RETURN(Tensor source, Assemble(plan, out.files));
    out.staged.push_back({source, plan.target->tensor});
  }
  return out;
}

}  // namespace

StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request) {
  return LoadCheckpoint(dir, request, nullptr);
}

StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request,
                                          Communicator* world) {
  // Local checks first; collectives run on every rank whatever the outcome.
  Status local = absl::OkStatus();
  std::map<std::string, Shape> model;
  std::vector<const NamedTensor*> targets;
  std::set<std::pair<std::string, Shape>> boxes;  // a tensor may have several target boxes
  for (const NamedTensor& t : request.targets) {
    if (!t.tensor.defined()) {
      local = absl::InvalidArgumentError(absl::StrCat("LoadCheckpoint: target '", t.name, "' is undefined"));
      break;
    }
    if (!boxes.insert({t.name, t.slice_start}).second) {
      local = absl::InvalidArgumentError(absl::StrCat("LoadCheckpoint: target '", t.name, "' listed twice"));
      break;
    }
    targets.push_back(&t);
    if (t.role == TensorRole::kModel) model[t.name] = t.global_shape.empty() ? t.tensor.shape() : t.global_shape;
  }
  // 1. Model identity over the union of every rank's model targets.
  SM_ASSIGN_OR_RETURN(std::vector<std::string> all_models, AllGatherStrings(world, EncodeModel(model)));
  for (const std::string& m : all_models) DecodeModelInto(m, &model);

  // 2. Manifest, files, shards of every target: verified and staged.
  StatusOr<CheckpointManifest> manifest = local.ok() ? ReadVerifiedManifest(dir) : local;
  std::optional<FileBytes> blobs_bytes;
  StatusOr<StagedLoad> staged = manifest.ok() ? StageLocally(dir, *manifest, targets, model, &blobs_bytes)
                                              : StatusOr<StagedLoad>(manifest.status());

  LoadedCheckpoint out;
  local = staged.status();
  if (local.ok()) {
    out.step = manifest->step();
    out.config_text = manifest->config_text();
    out.layout = FromProto(manifest->layout());
    if (!manifest->blobs_file().empty()) {
      const std::string blobs_path = (fs::path(dir) / manifest->blobs_file()).string();
      if (!blobs_bytes.has_value()) {
        local = absl::DataLossError(absl::StrCat("manifest of ", dir, " names blobs file ", blobs_path,
                                                 " but does not list it with a checksum"));
      } else {
        StatusOr<std::map<std::string, std::string>> blobs = ParseBlobs(blobs_path, *blobs_bytes);
        if (blobs.ok()) out.blobs = *std::move(blobs);
        local = blobs.status();
      }
    }
  }
  SM_RETURN_IF_ERROR(AgreeOnStatus(world, local, absl::StrCat("load of ", dir)));

  // 3. Everything checked on every rank: write the targets.
  for (Staged& s : staged->staged) {
    Tensor target = s.target;
    if (target.device() != Device::kCPU && s.source.dtype() != target.dtype()) {
      Tensor converted = Tensor::Empty(target.shape(), target.dtype(), Device::kCPU);
      converted.CopyFrom(s.source);
      target.CopyFrom(converted);
    } else {
      target.CopyFrom(s.source);
    }
  }
  return out;
}

}  // namespace scalemoe::checkpoint
