// BpeTokenizer: GPT-2 style byte-level BPE. Owns the vocabulary (id -> raw
// bytes), the merge ranks, and a bounded word -> ids cache.
//
// Text is split by GPT-2's pre-tokenisation regex (data/pretokenize.h), each
// piece is BPE-merged over its UTF-8 bytes, exactly like GPT-2's encoder: the
// lowest-rank adjacent pair is merged everywhere (left to right) until no
// ranked pair is left. Files use GPT-2's format (encoder.json + vocab.bpe,
// bytes spelled in GPT-2's printable "byte-level unicode" alphabet).
//
// Thread-safety: all const methods may be called concurrently (the cache is
// guarded internally). Move-only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/status.h"

namespace scalemoe {

class BpeTokenizer {
 public:
  // Loads GPT-2 format: <dir>/encoder.json (token string -> id, byte-level
  // unicode alphabet) and <dir>/vocab.bpe (merges, first line "#version...").
  // Errors name the file (and line) that is missing or malformed.
  static StatusOr<BpeTokenizer> Load(const std::string& dir);
  // Trains byte-level BPE on `text` (documents separated however the caller
  // likes) to `vocab_size` ids (256 byte tokens + merges + the special
  // end-of-text token "<|endoftext|>" as the last id). Fewer ids result only
  // when the text runs out of pairs to merge. Needs vocab_size >= 257.
  static StatusOr<BpeTokenizer> Train(std::string_view text, int vocab_size);
  // Writes encoder.json + vocab.bpe, loadable by Load and by GPT-2 tools.
  // Creates `dir` if needed.
  Status Save(const std::string& dir) const;

  // No special tokens are parsed from text: "<|endoftext|>" in the input is
  // encoded as ordinary text. Never fails: every byte has a token.
  std::vector<int32_t> Encode(std::string_view text) const;
  // Precondition: every id is in [0, vocab_size()) (SM_CHECK otherwise).
  std::string Decode(const std::vector<int32_t>& ids) const;
  int vocab_size() const;
  // Id of "<|endoftext|>" (50256 for GPT-2's own files).
  int32_t eot_id() const;

  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;
  ~BpeTokenizer();

 private:
  struct Merge {
    int32_t rank;    // position in vocab.bpe; lower merges first
    int32_t result;  // id of left + right
  };
  struct WordCache;  // mutex-guarded word -> ids map (bpe_tokenizer.cc)

  BpeTokenizer();
  // Builds byte_to_id_, token_to_id_ and checks that all 256 bytes have ids.
  Status Index(const std::string& source);
  // Appends the ids of one pre-tokenised word to `out`.
  void EncodeWord(std::string_view word, std::vector<int32_t>& out) const;
  // BPE-merges `symbols` (ids) in place, GPT-2 semantics.
  void MergeSymbols(std::vector<int32_t>& symbols) const;
  void MergeSymbolsLong(std::vector<int32_t>& symbols) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  std::vector<std::string> id_to_bytes_;  // raw bytes of each token
  absl::flat_hash_map<std::string, int32_t> bytes_to_id_;
  int32_t byte_to_id_[256] = {};          // single-byte tokens
  std::vector<std::pair<int32_t, int32_t>> merges_;  // in rank order
  absl::flat_hash_map<uint64_t, Merge> merge_of_pair_;  // PairKey -> merge
  int32_t eot_id_ = -1;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace scalemoe
