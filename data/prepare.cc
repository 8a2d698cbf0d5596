// PrepareDataset (data/prepare.h): checks options, gets the tokenizer, encodes
// the documents and writes each split's shards and the manifest. Corpus
// reading is in prepare_corpus.cc, the manifest format in dataset_manifest.cc.
#include "data/prepare.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"
#include "core/philox.h"
#include "data/bpe_tokenizer.h"
#include "data/prepare_internal.h"
#include "data/shard_format.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

using prepare_internal::kValSplitStream;
using prepare_internal::ReadWholeFile;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
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
  // Train and validation take whole documents: asked for a validation split,
  // one document cannot give both (an empty split fails only at train time).
  if (options.val_fraction > 0 && docs.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus ", options.input, " holds 1 document, but --val-fraction ", options.val_fraction,
        " needs a whole document for the validation split besides one for training: add "
        "documents (each ended by a line holding only the byte 0x1E)"));
  }

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
