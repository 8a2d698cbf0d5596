#include "checkpoint/hf_tokenizer.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint_files.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

constexpr char kEndOfText[] = "<|endoftext|>";

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("export: cannot read ", path,
                                            "; --tokenizer takes a directory with GPT-2's "
                                            "encoder.json and vocab.bpe (as `scalemoe prepare` writes)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Status Write(const std::string& path, const std::string& content) {
  return WriteWholeFile(path, content).status();
}

// The merges of vocab.bpe as "left right" lines, in rank order (the
// "#version" header and blank lines dropped).
StatusOr<std::vector<std::string>> Merges(const std::string& path, const std::string& text) {
  std::istringstream lines(text);
  std::string line;
  if (!std::getline(lines, line) || line.rfind("#version", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("export: ", path, " does not start with \"#version\""));
  }
  std::vector<std::string> merges;
  while (std::getline(lines, line)) {
    if (line.find_first_not_of(" \r") == std::string::npos) continue;
    merges.push_back(line);
  }
  return merges;
}

}  // namespace

StatusOr<int64_t> WriteHfTokenizer(const std::string& gpt2_dir, const std::string& out_dir,
                                   int64_t model_max_length) {
  SM_ASSIGN_OR_RETURN(const std::string encoder_text, ReadText(gpt2_dir + "/encoder.json"));
  SM_ASSIGN_OR_RETURN(const std::string merges_text, ReadText(gpt2_dir + "/vocab.bpe"));
  nlohmann::json vocab = nlohmann::json::parse(encoder_text, nullptr, /*allow_exceptions=*/false);
  if (!vocab.is_object() || !vocab.contains(kEndOfText) || !vocab[kEndOfText].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("export: ", gpt2_dir,
                                                   "/encoder.json is not a GPT-2 vocabulary with \"",
                                                   kEndOfText, "\""));
  }
  SM_ASSIGN_OR_RETURN(const std::vector<std::string> merges,
                      Merges(gpt2_dir + "/vocab.bpe", merges_text));
  const int64_t eot = vocab[kEndOfText].get<int64_t>();

  const nlohmann::json special = {{"id", eot},          {"content", kEndOfText}, {"single_word", false},
                                  {"lstrip", false},    {"rstrip", false},       {"normalized", false},
                                  {"special", true}};
  // GPT-2's ByteLevel settings: the pre-tokenizer adds no prefix space and
  // uses GPT-2's regex; the decoder maps byte-level symbols back to bytes.
  const nlohmann::json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", {special}},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", nullptr},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}},
  };
  nlohmann::json added_decoder = nlohmann::json::object();
  added_decoder[std::to_string(eot)] = {{"content", kEndOfText}, {"single_word", false},
                                        {"lstrip", false},       {"rstrip", false},
                                        {"normalized", false},   {"special", true}};
  const nlohmann::json config = {
      {"tokenizer_class", "GPT2Tokenizer"},
      {"bos_token", kEndOfText},
      {"eos_token", kEndOfText},
      {"unk_token", kEndOfText},
      {"add_bos_token", false},
      {"add_eos_token", false},
      {"add_prefix_space", false},
      {"clean_up_tokenization_spaces", false},
      {"errors", "replace"},
      {"model_max_length", model_max_length},
      {"added_tokens_decoder", added_decoder},
  };
  const nlohmann::json special_map = {
      {"bos_token", kEndOfText}, {"eos_token", kEndOfText}, {"unk_token", kEndOfText}};

  std::string merges_txt = "#version: 0.2\n";
  for (const std::string& m : merges) absl::StrAppend(&merges_txt, m, "\n");
  const std::string dir = out_dir + "/";
  SM_RETURN_IF_ERROR(Write(dir + "encoder.json", encoder_text));
  SM_RETURN_IF_ERROR(Write(dir + "vocab.bpe", merges_text));
  SM_RETURN_IF_ERROR(Write(dir + "vocab.json", vocab.dump()));
  SM_RETURN_IF_ERROR(Write(dir + "merges.txt", merges_txt));
  SM_RETURN_IF_ERROR(Write(dir + "tokenizer.json", tokenizer.dump(1)));
  SM_RETURN_IF_ERROR(Write(dir + "tokenizer_config.json", config.dump(2) + "\n"));
  SM_RETURN_IF_ERROR(Write(dir + "special_tokens_map.json", special_map.dump(2) + "\n"));
  return eot;
}

}  // namespace scalemoe::checkpoint
