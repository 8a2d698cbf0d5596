// Corpus -> token-shard preparation (`scalemoe prepare`) and the dataset
// manifest it writes. Owns the corpus record format, the train/validation
// document split and the on-disk dataset layout:
//
//   <out>/manifest.json        DatasetManifest (written last: its presence
//                              means the dataset is complete)
//   <out>/train_NNNNNN.bin     token shards of the train split
//   <out>/val_NNNNNN.bin       token shards of the validation split
//
// A split's token stream is its documents in corpus order, each followed by
// the tokenizer's end-of-text id, cut into shards of at most shard_tokens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace scalemoe {

// Corpus files (scripts/corpus.sh) end every document with a line holding
// only this byte (ASCII record separator).
inline constexpr char kDocumentSeparator = '\x1e';

inline constexpr int kManifestVersion = 1;
inline constexpr char kManifestFile[] = "manifest.json";

struct ShardEntry {
  std::string file;  // a file name in the dataset directory (no '/', not '..')
  int64_t tokens = 0;
  uint32_t crc32c = 0;
};

struct SplitManifest {
  int64_t documents = 0;
  int64_t tokens = 0;
  std::vector<ShardEntry> shards;
};

struct DatasetManifest {
  int64_t vocab_size = 0;
  int32_t eot_id = -1;
  // As given to prepare; relative paths are relative to the dataset directory.
  std::string tokenizer_dir;
  std::string source;  // the corpus file
  uint64_t seed = 0;
  double val_fraction = 0;
  SplitManifest train;
  SplitManifest val;

  // Reads and validates <dataset_dir>/manifest.json. Errors name the file
  // and the field.
  static StatusOr<DatasetManifest> Read(const std::string& dataset_dir);
  Status Write(const std::string& dataset_dir) const;
  // The split called `name` ("train" or "val"), or an error naming the choices.
  StatusOr<const SplitManifest*> Split(const std::string& name) const;
};

struct PrepareOptions {
  std::string input;          // corpus file (record format above)
  std::string tokenizer_dir;  // load from here, or save here when training
  std::string out_dir;
  // > 0: train a BPE of this many ids on a sample of the corpus first.
  int train_tokenizer_vocab = 0;
  // Size of that sample, drawn evenly over the whole corpus. Training time
  // grows with it; the default takes all of the 25 MB default corpus (about
  // 3 s for 4096 ids; a 2 MB sample takes 0.1 s and compresses 2% worse).
  int64_t tokenizer_sample_bytes = int64_t{32} << 20;
  double val_fraction = 0.01;  // fraction of documents, in [0, 1)
  int64_t shard_tokens = int64_t{1} << 24;
  uint64_t seed = 42;  // picks the validation documents
  int threads = 2;     // encoder threads
};

struct PrepareSummary {
  int64_t documents = 0;
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  int64_t shards = 0;
  int64_t corpus_bytes = 0;
  int vocab_size = 0;
  double tokenizer_train_seconds = 0;
  double encode_seconds = 0;
  double total_seconds = 0;
};

// Splits a corpus into its documents (views into `corpus`). Text after the
// last separator is a document too; documents of only whitespace are dropped.
std::vector<std::string_view> SplitCorpusDocuments(std::string_view corpus);

// Whole documents, in order, chosen evenly over `documents` so that their
// total is about `budget_bytes`; joined by newlines. All of them if the
// corpus is smaller.
std::string SampleDocuments(const std::vector<std::string_view>& documents, int64_t budget_bytes);

// True when document `index` belongs to the validation split for `seed`.
// Independent of the other documents: a pure function of (seed, index).
bool IsValidationDocument(uint64_t seed, int64_t index, double val_fraction);

// Runs the whole preparation. Overwrites an existing dataset in out_dir.
// With val_fraction > 0 both splits get at least one whole document; a
// corpus of one document is refused (InvalidArgument) before anything is
// written.
StatusOr<PrepareSummary> PrepareDataset(const PrepareOptions& options);

}  // namespace scalemoe
