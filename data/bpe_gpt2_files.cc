// BpeTokenizer's GPT-2 file I/O: Load reads encoder.json + vocab.bpe, Save
// writes them (data/bpe_tokenizer.h).
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/bpe_internal.h"
#include "data/bpe_tokenizer.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

using bpe_internal::FromByteLevel;
using bpe_internal::kEndOfText;
using bpe_internal::ToByteLevel;

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        "cannot open ", path, "; a GPT-2 tokenizer directory holds encoder.json and vocab.bpe "
        "(scripts/fetch_gpt2_tokenizer.sh fetches GPT-2's)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path, "; check the directory is writable"));
  return absl::OkStatus();
}

}  // namespace

StatusOr<BpeTokenizer> BpeTokenizer::Load(const std::string& dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(
        "tokenizer directory '", dir, "' does not exist; pass a directory holding GPT-2's "
        "encoder.json and vocab.bpe (scripts/fetch_gpt2_tokenizer.sh fetches them)"));
  }
  const std::string encoder_path = dir + "/encoder.json";
  SM_ASSIGN_OR_RETURN(const std::string encoder_text, ReadFile(encoder_path));
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(encoder_text);
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        encoder_path, ": not valid JSON (", e.what(), "); expected {\"token\": id, ...}"));
  }
  if (!encoder.is_object() || encoder.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        encoder_path, ": expected a non-empty JSON object {\"token\": id, ...}"));
  }
  BpeTokenizer tokenizer;
  const int64_t size = static_cast<int64_t>(encoder.size());
  tokenizer.id_to_bytes_.resize(size);
  std::vector<bool> seen(size, false);
  for (const auto& [token, value] : encoder.items()) {
    const int64_t id = value.is_number_integer() ? value.get<int64_t>() : -1;
    if (id < 0 || id >= size || seen[id]) {
      return absl::InvalidArgumentError(absl::StrCat(
          encoder_path, ": token '", token, "' has id ", value.dump(), "; ids must be distinct "
          "integers 0..", size - 1));
    }
    seen[id] = true;
    SM_ASSIGN_OR_RETURN(tokenizer.id_to_bytes_[id], FromByteLevel(token, encoder_path));
  }
  const auto eot = encoder.find(std::string(kEndOfText));
  if (eot == encoder.end()) {
    return absl::InvalidArgumentError(absl::StrCat(encoder_path, ": lacks the \"<|endoftext|>\" token"));
  }
  tokenizer.eot_id_ = eot->get<int32_t>();
  SM_RETURN_IF_ERROR(tokenizer.Index(encoder_path));

  const std::string merges_path = dir + "/vocab.bpe";
  SM_ASSIGN_OR_RETURN(const std::string merges_text, ReadFile(merges_path));
  std::istringstream lines(merges_text);
  std::string line;
  if (!std::getline(lines, line) || line.rfind("#version", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        merges_path, ": first line must be the header \"#version: 0.2\" (GPT-2 tools skip it)"));
  }
  for (int line_number = 2; std::getline(lines, line); ++line_number) {
    std::istringstream fields(line);
    std::string left, right, extra;
    if (!(fields >> left)) continue;  // blank line (the file ends with one)
    if (!(fields >> right) || (fields >> extra)) {
      return absl::InvalidArgumentError(absl::StrCat(
          merges_path, " line ", line_number, ": expected two tokens \"left right\", got '", line, "'"));
    }
    int32_t ids[2];
    for (int k = 0; k < 2; ++k) {
      const std::string& token = k == 0 ? left : right;
      SM_ASSIGN_OR_RETURN(const std::string bytes, FromByteLevel(token, merges_path));
      const auto it = tokenizer.bytes_to_id_.find(bytes);
      if (it == tokenizer.bytes_to_id_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            merges_path, " line ", line_number, ": merge uses token '", token,
            "' which is not in encoder.json; the two files do not belong together"));
      }
      ids[k] = it->second;
    }
    const auto result = tokenizer.bytes_to_id_.find(
        tokenizer.id_to_bytes_[ids[0]] + tokenizer.id_to_bytes_[ids[1]]);
    if (result == tokenizer.bytes_to_id_.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          merges_path, " line ", line_number, ": merged token '", left, right,
          "' is not in encoder.json; the two files do not belong together"));
    }
    // A repeated pair keeps its last rank, as GPT-2's dict(zip(merges, ranks)) does.
    tokenizer.merge_of_pair_.insert_or_assign(
        PairKey(ids[0], ids[1]), Merge{static_cast<int32_t>(tokenizer.merges_.size()), result->second});
    tokenizer.merges_.emplace_back(ids[0], ids[1]);
  }
  return tokenizer;
}

Status BpeTokenizer::Save(const std::string& dir) const {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create tokenizer directory '", dir, "': ",
                                            error.message()));
  }
  nlohmann::ordered_json encoder = nlohmann::ordered_json::object();
  for (int32_t id = 0; id < vocab_size(); ++id) encoder[ToByteLevel(id_to_bytes_[id])] = id;
  SM_RETURN_IF_ERROR(WriteFile(dir + "/encoder.json", encoder.dump()));
  std::string merges = "#version: 0.2\n";
  for (const auto& [left, right] : merges_) {
    absl::StrAppend(&merges, ToByteLevel(id_to_bytes_[left]), " ", ToByteLevel(id_to_bytes_[right]), "\n");
  }
  return WriteFile(dir + "/vocab.bpe", merges);
}

}  // namespace scalemoe
