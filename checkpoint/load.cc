// LoadCheckpoint: verify everything, stage everything, then write targets.
#include <filesystem>
#include <optional>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/safetensors.h"
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

// A verified source for one target.
struct Staged {
  Tensor source;  // CPU view into a staged file buffer
  Tensor target;
};

}  // namespace

StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request) {
  SM_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadVerifiedManifest(dir));

  // 1. Model identity.
  std::map<std::string, Shape> model;
  std::map<std::string, const NamedTensor*> targets;
  for (const NamedTensor& t : request.targets) {
    if (!t.tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("LoadCheckpoint: target '", t.name, "' is undefined"));
    }
    if (!targets.emplace(t.name, &t).second) {
      return absl::InvalidArgumentError(absl::StrCat("LoadCheckpoint: target '", t.name, "' listed twice"));
    }
    if (t.role == TensorRole::kModel) model[t.name] = t.global_shape.empty() ? t.tensor.shape() : t.global_shape;
  }
  const std::string fingerprint =
      ModelFingerprint(std::vector<std::pair<std::string, Shape>>(model.begin(), model.end()));
  if (fingerprint != manifest.model_fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", dir, " is from a different model (fingerprint ", manifest.model_fingerprint(),
        ", current model ", fingerprint, ")", FingerprintDiff(manifest, model),
        "; resume from a checkpoint of this model or change the model config to match"));
  }

  // 2. Every file: present, right size, right checksum, well-formed.
  std::map<std::string, SafetensorsFile> files;
  std::optional<FileBytes> blobs_bytes;
  for (const FileEntry& f : manifest.files()) {
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
      blobs_bytes = *bytes;
    } else {
      SM_ASSIGN_OR_RETURN(SafetensorsFile st,
                          SafetensorsFile::Parse(path, bytes->data, bytes->size, bytes->xxh64));
      files.emplace(f.file(), std::move(st));
    }
  }

  // 3. Every target: a stored slice of the same region, compatible dtype.
  std::vector<Staged> staged;
  for (const auto& [name, t] : targets) {
    const Shape global = t->global_shape.empty() ? t->tensor.shape() : t->global_shape;
    const Shape start = t->slice_start.empty() ? Shape(global.size(), 0) : t->slice_start;
    const TensorEntry* match = nullptr;
    bool name_found = false;
    for (const TensorEntry& e : manifest.tensors()) {
      if (e.name() != name) continue;
      name_found = true;
      if (ToShape(e.global_shape()) != global) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor '", name, "' has global shape ", ShapeString(ToShape(e.global_shape())),
            " in checkpoint ", dir, " but ", ShapeString(global), " in the model"));
      }
      bool same = e.slice_size() == static_cast<int>(start.size());
      for (int d = 0; same && d < e.slice_size(); ++d) {
        same = e.slice(d).start() == start[d] && e.slice(d).length() == t->tensor.shape()[d];
      }
      if (same) match = &e;
    }
    if (!name_found) {
      return absl::NotFoundError(absl::StrCat("tensor '", name, "' is not in checkpoint ", dir,
                                              "; drop it from the load or resume from a checkpoint that has it"));
    }
    if (match == nullptr) {
      return absl::UnimplementedError(absl::StrCat(
          "tensor '", name, "': no shard in checkpoint ", dir, " covers slice start ", ShapeString(start),
          " shape ", ShapeString(t->tensor.shape()),
          "; the checkpoint was written by another layout and resharding is not implemented yet"));
    }
    auto file = files.find(match->file());
    if (file == files.end()) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "' names file ", match->file(),
                                              " which the manifest of ", dir, " does not list"));
    }
    SM_ASSIGN_OR_RETURN(Tensor source, file->second.Get(name));
    const Shape local(t->tensor.shape());
    if (source.shape() != local || SafetensorsDTypeName(source.dtype()) != match->dtype()) {
      return absl::DataLossError(absl::StrCat(
          "tensor '", name, "' in ", file->second.path(), " is ", SafetensorsDTypeName(source.dtype()),
          ShapeString(source.shape()), " but the manifest says ", match->dtype(), ShapeString(local)));
    }
    if (!ConvertibleDType(source.dtype(), t->tensor.dtype())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' is stored as ", DTypeName(source.dtype()), " but the target is ",
          DTypeName(t->tensor.dtype()), "; only f32 <-> bf16 conversion is supported"));
    }
    staged.push_back({source, t->tensor});
  }

  LoadedCheckpoint out;
  out.step = manifest.step();
  out.config_text = manifest.config_text();
  out.layout = FromProto(manifest.layout());
  if (!manifest.blobs_file().empty()) {
    const std::string blobs_path = (fs::path(dir) / manifest.blobs_file()).string();
    if (!blobs_bytes.has_value()) {
      return absl::DataLossError(absl::StrCat("manifest of ", dir, " names blobs file ", blobs_path,
                                              " but does not list it with a checksum"));
    }
    SM_ASSIGN_OR_RETURN(out.blobs, ParseBlobs(blobs_path, *blobs_bytes));
  }

  // 4. Everything checked: write the targets.
  for (Staged& s : staged) {
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
