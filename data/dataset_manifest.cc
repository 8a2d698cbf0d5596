// DatasetManifest (data/prepare.h): reads, validates and writes a dataset's
// manifest.json.
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "data/prepare.h"
#include "data/shard_format.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

Json SplitToJson(const SplitManifest& split) {
  Json shards = Json::array();
  for (const ShardEntry& s : split.shards) {
    shards.push_back({{"file", s.file}, {"tokens", s.tokens}, {"crc32c", s.crc32c}});
  }
  return {{"documents", split.documents}, {"tokens", split.tokens}, {"shards", shards}};
}

// Reads `key` of `object` into `out`, or explains which field of `path` is bad.
template <typename T>
Status GetField(const Json& object, const char* key, const std::string& path, T& out) {
  if (!object.is_object() || !object.contains(key)) {
    return absl::DataLossError(absl::StrCat("dataset manifest ", path, ": field '", key,
                                            "' is missing; re-run `scalemoe prepare`"));
  }
  try {
    out = object.at(key).get<T>();
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat("dataset manifest ", path, ": field '", key,
                                            "' has the wrong type (", e.what(), ")"));
  }
  return absl::OkStatus();
}

Status SplitFromJson(const Json& j, const std::string& path, SplitManifest& split) {
  SM_RETURN_IF_ERROR(GetField(j, "documents", path, split.documents));
  SM_RETURN_IF_ERROR(GetField(j, "tokens", path, split.tokens));
  Json shards;
  SM_RETURN_IF_ERROR(GetField(j, "shards", path, shards));
  int64_t total = 0;
  for (const Json& s : shards) {
    ShardEntry entry;
    SM_RETURN_IF_ERROR(GetField(s, "file", path, entry.file));
    // The manifest is data from outside: a shard must be a file of the
    // dataset directory itself, refused here before anything opens it.
    const fs::path file(entry.file);
    if (entry.file.empty() || file.has_parent_path() || file.is_absolute() ||
        entry.file == "." || entry.file == "..") {
      return absl::DataLossError(absl::StrCat(
          "dataset manifest ", path, ": shard file '", entry.file,
          "' is not a file name inside the dataset directory (no '/', not '..'); re-run "
          "`scalemoe prepare` rather than pointing a manifest at other files"));
    }
    SM_RETURN_IF_ERROR(GetField(s, "tokens", path, entry.tokens));
    SM_RETURN_IF_ERROR(GetField(s, "crc32c", path, entry.crc32c));
    total += entry.tokens;
    split.shards.push_back(std::move(entry));
  }
  if (total != split.tokens) {
    return absl::DataLossError(absl::StrCat("dataset manifest ", path, ": shards hold ", total,
                                            " tokens but the split says ", split.tokens));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<DatasetManifest> DatasetManifest::Read(const std::string& dataset_dir) {
  const std::string path = (fs::path(dataset_dir) / kManifestFile).string();
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("dataset manifest ", path, " not found; is '",
                                            dataset_dir,
                                            "' a dataset written by `scalemoe "
                                            "prepare`? Run prepare first"));
  }
  Json j;
  try {
    in >> j;
  } catch (const Json::exception& e) {
    return absl::DataLossError(
        absl::StrCat("dataset manifest ", path, ": not valid JSON (", e.what(), ")"));
  }
  int version = 0;
  SM_RETURN_IF_ERROR(GetField(j, "version", path, version));
  if (version != kManifestVersion) {
    return absl::FailedPreconditionError(absl::StrCat("dataset manifest ", path, ": version ",
                                                      version, " is not supported (expected ",
                                                      kManifestVersion, ")"));
  }
  DatasetManifest m;
  SM_RETURN_IF_ERROR(GetField(j, "vocab_size", path, m.vocab_size));
  SM_RETURN_IF_ERROR(GetField(j, "eot_id", path, m.eot_id));
  SM_RETURN_IF_ERROR(GetField(j, "tokenizer_dir", path, m.tokenizer_dir));
  SM_RETURN_IF_ERROR(GetField(j, "source", path, m.source));
  SM_RETURN_IF_ERROR(GetField(j, "seed", path, m.seed));
  SM_RETURN_IF_ERROR(GetField(j, "val_fraction", path, m.val_fraction));
  Json splits;
  SM_RETURN_IF_ERROR(GetField(j, "splits", path, splits));
  Json train, val;
  SM_RETURN_IF_ERROR(GetField(splits, "train", path, train));
  SM_RETURN_IF_ERROR(GetField(splits, "val", path, val));
  SM_RETURN_IF_ERROR(SplitFromJson(train, path, m.train));
  SM_RETURN_IF_ERROR(SplitFromJson(val, path, m.val));
  if (m.vocab_size <= 0 || m.eot_id < 0 || m.eot_id >= m.vocab_size) {
    return absl::DataLossError(absl::StrCat("dataset manifest ", path, ": vocab_size ",
                                            m.vocab_size, " / eot_id ", m.eot_id,
                                            " are inconsistent"));
  }
  return m;
}

Status DatasetManifest::Write(const std::string& dataset_dir) const {
  Json j = {
      {"version", kManifestVersion},
      {"format", "scalemoe token shards (data/shard_format.h)"},
      {"token_dtype", TokenDtypeForVocab(vocab_size) == TokenDtype::kUint16 ? "uint16" : "uint32"},
      {"vocab_size", vocab_size},
      {"eot_id", eot_id},
      {"tokenizer_dir", tokenizer_dir},
      {"source", source},
      {"seed", seed},
      {"val_fraction", val_fraction},
      {"splits", {{"train", SplitToJson(train)}, {"val", SplitToJson(val)}}}};
  const std::string path = (fs::path(dataset_dir) / kManifestFile).string();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out)
      return absl::UnavailableError(absl::StrCat("dataset manifest ", tmp, ": write failed"));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("dataset manifest ", path, ": rename failed (", ec.message(), ")"));
  }
  return absl::OkStatus();
}

StatusOr<const SplitManifest*> DatasetManifest::Split(const std::string& name) const {
  if (name == "train") return &train;
  if (name == "val") return &val;
  return absl::InvalidArgumentError(
      absl::StrCat("dataset split '", name, "' does not exist; use \"train\" or \"val\""));
}

}  // namespace scalemoe
