#include "data/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/philox.h"
#include "data/bpe_tokenizer.h"
#include "data/shard_format.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr uint64_t kValSplitStream = HashName("scalemoe/prepare/val_split");

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool IsBlank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v';
  });
}

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("corpus ", path,
                                            ": cannot open; run "
                                            "scripts/corpus.sh ",
                                            path, " to build the default one"));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("corpus ", path, ": read failed"));
  return std::move(buffer).str();
}

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

// Encodes every document with `threads` workers; result[i] is document i's
// ids followed by the end-of-text id.
std::vector<std::vector<int32_t>> EncodeDocuments(const BpeTokenizer& tokenizer,
                                                  const std::vector<std::string_view>& docs,
                                                  int threads) {
  std::vector<std::vector<int32_t>> encoded(docs.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next.fetch_add(1); i < docs.size(); i = next.fetch_add(1)) {
      encoded[i] = tokenizer.Encode(docs[i]);
      encoded[i].push_back(tokenizer.eot_id());
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  return encoded;
}

// Concatenates the documents of one split and writes them as shards named
// <prefix>_NNNNNN.bin.
StatusOr<SplitManifest> WriteSplit(const std::vector<std::vector<int32_t>>& encoded,
                                   const std::vector<bool>& in_split, const std::string& prefix,
                                   const PrepareOptions& options, int64_t vocab_size) {
  SplitManifest split;
  std::vector<int32_t> buffer;
  auto flush = [&]() -> Status {
    if (buffer.empty()) return absl::OkStatus();
    ShardEntry entry;
    entry.file = absl::StrFormat("%s_%06d.bin", prefix, split.shards.size());
    SM_ASSIGN_OR_RETURN(
        ShardInfo info,
        WriteShard((fs::path(options.out_dir) / entry.file).string(), buffer, vocab_size));
    entry.tokens = info.token_count;
    entry.crc32c = info.checksum;
    split.shards.push_back(std::move(entry));
    buffer.clear();
    return absl::OkStatus();
  };
  for (size_t i = 0; i < encoded.size(); ++i) {
    if (!in_split[i]) continue;
    ++split.documents;
    split.tokens += static_cast<int64_t>(encoded[i].size());
    size_t from = 0;
    while (from < encoded[i].size()) {
      const size_t room = static_cast<size_t>(options.shard_tokens) - buffer.size();
      const size_t take = std::min(room, encoded[i].size() - from);
      buffer.insert(buffer.end(), encoded[i].begin() + from, encoded[i].begin() + from + take);
      from += take;
      if (buffer.size() == static_cast<size_t>(options.shard_tokens)) SM_RETURN_IF_ERROR(flush());
    }
  }
  SM_RETURN_IF_ERROR(flush());
  return split;
}

Status CheckOptions(const PrepareOptions& o) {
  if (o.input.empty()) return absl::InvalidArgumentError("prepare: --input CORPUS is required");
  if (o.out_dir.empty()) return absl::InvalidArgumentError("prepare: --out DIR is required");
  if (o.tokenizer_dir.empty()) {
    return absl::InvalidArgumentError("prepare: --tokenizer DIR is required");
  }
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: --val-fraction ", o.val_fraction, " must be in [0, 1)"));
  }
  if (o.shard_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: --shard-tokens ", o.shard_tokens, " must be positive"));
  }
  if (o.train_tokenizer_vocab != 0 && o.train_tokenizer_vocab < 257) {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: --train-tokenizer ", o.train_tokenizer_vocab,
                     " must be at least 257 (256 bytes + end-of-text)"));
  }
  if (o.tokenizer_sample_bytes < 1) {
    return absl::InvalidArgumentError("prepare: --tokenizer-sample-bytes must be positive");
  }
  if (o.threads < 1) return absl::InvalidArgumentError("prepare: --threads must be >= 1");
  return absl::OkStatus();
}

// Tokenizer path as the manifest records it: relative to the dataset when it
// lies inside it (so the dataset can move), absolute otherwise.
std::string ManifestTokenizerDir(const std::string& tokenizer_dir, const std::string& out_dir) {
  const fs::path tok = fs::absolute(tokenizer_dir).lexically_normal();
  const fs::path out = fs::absolute(out_dir).lexically_normal();
  const fs::path rel = tok.lexically_relative(out);
  if (!rel.empty() && *rel.begin() != "..") return rel.string();
  return tok.string();
}

}  // namespace

std::vector<std::string_view> SplitCorpusDocuments(std::string_view corpus) {
  std::vector<std::string_view> docs;
  size_t doc_begin = 0;
  size_t line_begin = 0;
  while (line_begin < corpus.size()) {
    size_t line_end = corpus.find('\n', line_begin);
    if (line_end == std::string_view::npos) line_end = corpus.size();
    if (line_end - line_begin == 1 && corpus[line_begin] == kDocumentSeparator) {
      // The newline before the separator line belongs to the separator.
      const size_t end = line_begin > doc_begin ? line_begin - 1 : doc_begin;
      std::string_view doc = corpus.substr(doc_begin, end - doc_begin);
      if (!IsBlank(doc)) docs.push_back(doc);
      doc_begin = std::min(line_end + 1, corpus.size());
    }
    line_begin = line_end + 1;
  }
  std::string_view tail = corpus.substr(doc_begin);
  if (!IsBlank(tail)) docs.push_back(tail);
  return docs;
}

std::string SampleDocuments(const std::vector<std::string_view>& documents, int64_t budget_bytes) {
  int64_t total = 0;
  for (std::string_view d : documents) total += static_cast<int64_t>(d.size());
  std::string sample;
  const bool take_all = total + static_cast<int64_t>(documents.size()) <= budget_bytes;
  int64_t seen = 0;
  for (std::string_view d : documents) {
    seen += static_cast<int64_t>(d.size());
    // Keep the sample's size proportional to how far through the corpus we
    // are, so every part of the corpus contributes.
    const double quota = static_cast<double>(budget_bytes) * static_cast<double>(seen) /
                         static_cast<double>(std::max<int64_t>(total, 1));
    if (take_all || static_cast<double>(sample.size()) < quota) {
      sample.append(d.data(), d.size());
      sample.push_back('\n');
    }
  }
  return sample;
}

bool IsValidationDocument(uint64_t seed, int64_t index, double val_fraction) {
  return PhiloxUniform(seed, kValSplitStream, static_cast<uint64_t>(index)) < val_fraction;
}

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

StatusOr<PrepareSummary> PrepareDataset(const PrepareOptions& options) {
  SM_RETURN_IF_ERROR(CheckOptions(options));
  const auto start = std::chrono::steady_clock::now();
  PrepareSummary summary;

  SM_ASSIGN_OR_RETURN(const std::string corpus, ReadWholeFile(options.input));
  summary.corpus_bytes = static_cast<int64_t>(corpus.size());
  const std::vector<std::string_view> docs = SplitCorpusDocuments(corpus);
  if (docs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("corpus ", options.input, " holds no documents (only whitespace)"));
  }
  summary.documents = static_cast<int64_t>(docs.size());

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("prepare: cannot create --out ", options.out_dir, " (", ec.message(), ")"));
  }
  // A dataset is complete only once its manifest is written; drop an old one
  // first so a failed re-run never leaves a manifest over rewritten shards.
  fs::remove(fs::path(options.out_dir) / kManifestFile, ec);

  std::optional<BpeTokenizer> tokenizer;
  if (options.train_tokenizer_vocab > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string sample = SampleDocuments(docs, options.tokenizer_sample_bytes);
    SM_ASSIGN_OR_RETURN(BpeTokenizer trained,
                        BpeTokenizer::Train(sample, options.train_tokenizer_vocab));
    SM_RETURN_IF_ERROR(trained.Save(options.tokenizer_dir));
    tokenizer.emplace(std::move(trained));
    summary.tokenizer_train_seconds = SecondsSince(t0);
  } else {
    SM_ASSIGN_OR_RETURN(BpeTokenizer loaded, BpeTokenizer::Load(options.tokenizer_dir));
    tokenizer.emplace(std::move(loaded));
  }
  summary.vocab_size = tokenizer->vocab_size();

  // Validation documents: a pure function of (seed, index); with none drawn
  // (tiny corpora) the document with the smallest draw goes there instead, and
  // train always keeps at least one document.
  std::vector<bool> is_val(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) {
    is_val[i] = IsValidationDocument(options.seed, static_cast<int64_t>(i), options.val_fraction);
  }
  const int64_t val_count = std::count(is_val.begin(), is_val.end(), true);
  if (options.val_fraction > 0 && val_count == 0 && docs.size() >= 2) {
    size_t best = 0;
    double best_u = 2;
    for (size_t i = 0; i < docs.size(); ++i) {
      const double u = PhiloxUniform(options.seed, kValSplitStream, i);
      if (u < best_u) {
        best_u = u;
        best = i;
      }
    }
    is_val[best] = true;
  } else if (val_count == static_cast<int64_t>(docs.size())) {
    is_val[0] = false;
  }
  std::vector<bool> is_train(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) is_train[i] = !is_val[i];

  const auto t_encode = std::chrono::steady_clock::now();
  const std::vector<std::vector<int32_t>> encoded =
      EncodeDocuments(*tokenizer, docs, options.threads);
  summary.encode_seconds = SecondsSince(t_encode);

  DatasetManifest manifest;
  manifest.vocab_size = tokenizer->vocab_size();
  manifest.eot_id = tokenizer->eot_id();
  manifest.tokenizer_dir = ManifestTokenizerDir(options.tokenizer_dir, options.out_dir);
  manifest.source = options.input;
  manifest.seed = options.seed;
  manifest.val_fraction = options.val_fraction;
  SM_ASSIGN_OR_RETURN(manifest.train,
                      WriteSplit(encoded, is_train, "train", options, manifest.vocab_size));
  SM_ASSIGN_OR_RETURN(manifest.val,
                      WriteSplit(encoded, is_val, "val", options, manifest.vocab_size));
  SM_RETURN_IF_ERROR(manifest.Write(options.out_dir));

  summary.train_documents = manifest.train.documents;
  summary.val_documents = manifest.val.documents;
  summary.train_tokens = manifest.train.tokens;
  summary.val_tokens = manifest.val.tokens;
  summary.shards = static_cast<int64_t>(manifest.train.shards.size() + manifest.val.shards.size());
  summary.total_seconds = SecondsSince(start);
  return summary;
}

}  // namespace scalemoe
