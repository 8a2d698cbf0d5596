#include "checkpoint/export.h"

#include <filesystem>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/folded_model.h"
#include "checkpoint/hf_architecture.h"
#include "checkpoint/hf_tokenizer.h"
#include "checkpoint/hf_writer.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/model_features.h"
#include "checkpoint/safetensors.h"
#include "configs/scalemoe.pb.h"
#include "google/protobuf/text_format.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;

// Global shape of every MODEL tensor the checkpoint holds.
std::map<std::string, Shape> ModelShapes(const CheckpointManifest& manifest) {
  std::map<std::string, Shape> shapes;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.role() != TensorEntry::MODEL) continue;
    shapes.emplace(e.name(), Shape(e.global_shape().begin(), e.global_shape().end()));
  }
  return shapes;
}

StatusOr<std::map<std::string, Tensor>> LoadWholeModel(const std::string& dir,
                                                       const CheckpointManifest& manifest) {
  std::map<std::string, Tensor> tensors;
  LoadRequest request;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.role() != TensorEntry::MODEL || tensors.count(e.name())) continue;
    if (e.dtype() != "F32" && e.dtype() != "BF16") {
      return absl::UnimplementedError(absl::StrCat("export: model tensor '", e.name(), "' is ",
                                                   e.dtype(), "; only F32/BF16 model tensors can be exported"));
    }
    tensors[e.name()] = Tensor::Empty(Shape(e.global_shape().begin(), e.global_shape().end()), DType::kF32);
    request.targets.push_back({e.name(), tensors[e.name()], {}, {}, TensorRole::kModel});
  }
  SM_RETURN_IF_ERROR(LoadCheckpoint(dir, request).status());
  return tensors;
}

Status WriteJson(const fs::path& path, const nlohmann::json& j) {
  return WriteWholeFile(path.string(), j.dump(2) + "\n").status();
}

Status CreateOutDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("export: cannot create ", dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

// Every model tensor under its trainer name, nothing folded.
StatusOr<ExportResult> ExportUnfolded(const ExportOptions& options,
                                      const CheckpointManifest& manifest) {
  SM_ASSIGN_OR_RETURN(auto whole, LoadWholeModel(options.checkpoint_dir, manifest));
  SM_RETURN_IF_ERROR(CreateOutDir(options.out_dir));
  const fs::path out(options.out_dir);
  std::vector<std::pair<std::string, Tensor>> pairs;
  bool has_head = false;  // tied embeddings keep no lm_head of their own
  for (auto& [name, value] : whole) {
    has_head = has_head || name == "lm_head.weight";
    Tensor converted = Tensor::Empty(value.shape(), options.dtype);
    converted.CopyFrom(value);
    pairs.emplace_back(name, converted);
  }
  SM_RETURN_IF_ERROR(WriteSafetensors((out / "model.safetensors").string(), pairs,
                                      {{"format", "scalemoe-unfolded"},
                                       {"scalemoe.step", absl::StrCat(manifest.step())}})
                         .status());
  SM_RETURN_IF_ERROR(
      WriteWholeFile((out / "config.textproto").string(), manifest.config_text()).status());
  const nlohmann::json provenance = {
      {"checkpoint", options.checkpoint_dir},
      {"step", manifest.step()},
      {"architecture", "unfolded"},
      {"folded", "nothing: every model tensor under its trainer name and global shape"},
  };
  SM_RETURN_IF_ERROR(WriteJson(out / "scalemoe_export.json", provenance));
  return ExportResult{"unfolded", !has_head};
}

}  // namespace

StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("export: --dtype must be fp32 or bf16");
  }
  SM_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadVerifiedManifest(options.checkpoint_dir));
  config::RunConfig cfg;
  if (!google::protobuf::TextFormat::ParseFromString(manifest.config_text(), &cfg)) {
    return absl::DataLossError(absl::StrCat("export: the config stored in ", options.checkpoint_dir,
                                            " does not parse as a RunConfig"));
  }
  if (options.unfolded) return ExportUnfolded(options, manifest);
  // Choose (or refuse) before reading any weight.
  SM_ASSIGN_OR_RETURN(const ModelFeatures features, ModelFeaturesOf(cfg, ModelShapes(manifest)));
  SM_ASSIGN_OR_RETURN(const HfArchitecture* arch, SelectHfArchitecture(features));
  SM_ASSIGN_OR_RETURN(auto whole, LoadWholeModel(options.checkpoint_dir, manifest));
  SM_CHECK_MSG(options.model_specs != nullptr, "ExportOptions.model_specs is required");
  SM_ASSIGN_OR_RETURN(const FoldedModel model,
                      FoldModel(std::move(whole), cfg, features, options.model_specs(cfg)));

  SM_RETURN_IF_ERROR(CreateOutDir(options.out_dir));
  const fs::path out(options.out_dir);
  SpecialTokens tokens;
  if (!options.tokenizer_dir.empty()) {
    SM_ASSIGN_OR_RETURN(const int64_t eot,
                        WriteHfTokenizer(options.tokenizer_dir, options.out_dir, cfg.model().seq_length()));
    tokens.bos = tokens.eos = eot;
  }

  std::vector<std::pair<std::string, Tensor>> pairs;
  for (const HfTensor& t : HfTensors(model, *arch)) {
    Tensor converted = Tensor::Empty(t.value.shape(), t.keep_f32 ? DType::kF32 : options.dtype);
    converted.CopyFrom(t.value);
    pairs.emplace_back(t.name, converted);
  }
  SM_RETURN_IF_ERROR(WriteSafetensors((out / "model.safetensors").string(), pairs,
                                      {{"format", "pt"}, {"scalemoe.step", absl::StrCat(manifest.step())}})
                         .status());
  const std::string dtype_name = options.dtype == DType::kF32 ? "float32" : "bfloat16";
  SM_RETURN_IF_ERROR(WriteJson(out / "config.json", HfConfig(model, cfg, *arch, dtype_name, tokens)));

  std::string sv_text;
  google::protobuf::TextFormat::PrintToString(cfg.scale_vectors(), &sv_text);
  const nlohmann::json provenance = {
      {"checkpoint", options.checkpoint_dir},
      {"step", manifest.step()},
      {"architecture", arch->class_name},
      {"scale_vectors", sv_text},
      {"folded",
       "every Input-Norm gamma into W columns, every output-side u into W rows; the per-head "
       "q/k norm scales and the final norm's gamma kept as norm weights"},
  };
  SM_RETURN_IF_ERROR(WriteJson(out / "scalemoe_export.json", provenance));
  return ExportResult{arch->class_name, !model.head.defined()};
}

}  // namespace scalemoe::checkpoint
