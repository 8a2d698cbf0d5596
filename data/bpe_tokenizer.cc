// BpeTokenizer's core: vocabulary indexing, the word cache and GPT-2's merge
// loop behind Encode, and Decode. Training is in bpe_trainer.cc, GPT-2 file
// I/O in bpe_gpt2_files.cc, the byte-level alphabet in bpe_byte_level.cc.
#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <functional>
#include <mutex>
#include <queue>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "data/bpe_internal.h"
#include "data/pretokenize.h"

namespace scalemoe {
namespace {

// Words up to this many bytes are memoised; longer ones are rare and would
// bloat the cache. The cache is dropped when it reaches kMaxCacheEntries.
constexpr size_t kMaxCachedWordBytes = 64;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;
// Words with more symbols than this use the O(n log n) heap merge.
constexpr size_t kMaxShortWordSymbols = 32;

}  // namespace

// std::mutex, not absl::Mutex: Debian's Abseil runs deadlock detection on
// every lock, which costs more than the lookup. Ids live in one pool so that a
// hit reads one contiguous range.
struct BpeTokenizer::WordCache {
  struct Range {
    uint32_t offset;
    uint32_t length;
  };
  std::mutex mu;
  absl::flat_hash_map<std::string, Range> ranges;  // guarded by mu
  std::vector<int32_t> pool;                       // guarded by mu
};

BpeTokenizer::BpeTokenizer() : cache_(std::make_unique<WordCache>()) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

int BpeTokenizer::vocab_size() const { return static_cast<int>(id_to_bytes_.size()); }
int32_t BpeTokenizer::eot_id() const { return eot_id_; }

Status BpeTokenizer::Index(const std::string& source) {
  bytes_to_id_.clear();
  for (int32_t id = 0; id < vocab_size(); ++id) {
    const auto [it, inserted] = bytes_to_id_.emplace(id_to_bytes_[id], id);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": ids ", it->second, " and ", id, " spell the same token '",
          bpe_internal::ToByteLevel(id_to_bytes_[id]), "'; every token must be unique"));
    }
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    if (it == bytes_to_id_.end()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: no token for byte 0x%02X; byte-level BPE needs all 256 single-byte tokens",
          source, b));
    }
    byte_to_id_[b] = it->second;
  }
  return absl::OkStatus();
}

const BpeTokenizer::Merge* BpeTokenizer::FindMerge(int32_t left, int32_t right) const {
  const auto it = merge_of_pair_.find(PairKey(left, right));
  return it == merge_of_pair_.end() ? nullptr : &it->second;
}

// GPT-2's bpe(): merge the lowest-ranked adjacent pair everywhere (left to
// right, non-overlapping), repeat until no adjacent pair has a rank.
void BpeTokenizer::MergeSymbols(std::vector<int32_t>& symbols) const {
  if (symbols.size() > kMaxShortWordSymbols) return MergeSymbolsLong(symbols);
  size_t size = symbols.size();
  std::array<const Merge*, kMaxShortWordSymbols> pair_merge;  // of (i, i + 1)
  for (size_t i = 0; i + 1 < size; ++i) pair_merge[i] = FindMerge(symbols[i], symbols[i + 1]);
  while (size > 1) {
    const Merge* best = nullptr;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < size; ++i) {
      const Merge* m = pair_merge[i];
      if (m != nullptr && (best == nullptr || m->rank < best->rank)) best = m, best_at = i;
    }
    if (best == nullptr) break;
    const int32_t left = symbols[best_at];
    const int32_t right = symbols[best_at + 1];
    size_t out = best_at;
    for (size_t i = best_at; i < size; ++out) {
      const bool hit = i + 1 < size && symbols[i] == left && symbols[i + 1] == right;
      symbols[out] = hit ? best->result : symbols[i];
      i += hit ? 2 : 1;
    }
    size = out;
    // Pairs left of best_at - 1 are unchanged.
    for (size_t i = best_at > 0 ? best_at - 1 : 0; i + 1 < size; ++i) {
      pair_merge[i] = FindMerge(symbols[i], symbols[i + 1]);
    }
  }
  symbols.resize(size);
}

// Same result as MergeSymbols in O(n log n): symbols form a linked list and a
// min-heap holds (rank, position) candidates, validated when popped. All
// candidates of one rank are applied as one round, left to right, and the
// pairs they create are queued only after the round, as GPT-2 does.
void BpeTokenizer::MergeSymbolsLong(std::vector<int32_t>& symbols) const {
  struct Candidate {
    int32_t rank, position, left, right, result;
    bool operator>(const Candidate& o) const {
      return std::tie(rank, position) > std::tie(o.rank, o.position);
    }
  };
  const auto n = static_cast<int32_t>(symbols.size());
  std::vector<int32_t> next(n), prev(n);
  std::vector<bool> alive(n, true);
  for (int32_t i = 0; i < n; ++i) next[i] = i + 1 < n ? i + 1 : -1, prev[i] = i - 1;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t p) {
    if (p < 0 || next[p] < 0) return;
    const Merge* m = FindMerge(symbols[p], symbols[next[p]]);
    if (m != nullptr) heap.push({m->rank, p, symbols[p], symbols[next[p]], m->result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<int32_t> merged;
  while (!heap.empty()) {
    const int32_t rank = heap.top().rank;
    merged.clear();
    while (!heap.empty() && heap.top().rank == rank) {
      const Candidate c = heap.top();
      heap.pop();
      const int32_t q = next[c.position];
      if (!alive[c.position] || symbols[c.position] != c.left || q < 0 || symbols[q] != c.right) {
        continue;  // stale: this pair is no longer there
      }
      symbols[c.position] = c.result;
      alive[q] = false;
      next[c.position] = next[q];
      if (next[q] >= 0) prev[next[q]] = c.position;
      merged.push_back(c.position);
    }
    for (int32_t p : merged) push(prev[p]), push(p);
  }
  int32_t out = 0;
  for (int32_t p = 0; p >= 0; p = next[p]) symbols[out++] = symbols[p];
  symbols.resize(out);
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() == 1) {
    out.push_back(byte_to_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  const absl::string_view key(word.data(), word.size());
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mu);
    const auto it = cache_->ranges.find(key);
    if (it != cache_->ranges.end()) {
      const int32_t* ids = cache_->pool.data() + it->second.offset;
      out.insert(out.end(), ids, ids + it->second.length);
      return;
    }
  }
  std::vector<int32_t> symbols(word.size());
  for (size_t i = 0; i < word.size(); ++i) symbols[i] = byte_to_id_[static_cast<unsigned char>(word[i])];
  MergeSymbols(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mu);
    if (cache_->ranges.size() >= kMaxCacheEntries) cache_->ranges.clear(), cache_->pool.clear();
    const auto offset = static_cast<uint32_t>(cache_->pool.size());
    if (cache_->ranges.try_emplace(key, WordCache::Range{offset, static_cast<uint32_t>(symbols.size())}).second) {
      cache_->pool.insert(cache_->pool.end(), symbols.begin(), symbols.end());
    }
  }
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = PretokenEnd(text, pos);
    EncodeWord(text.substr(pos, end - pos), ids);
    pos = end;
  }
  return ids;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (int32_t id : ids) {
    SM_CHECK_MSG(id >= 0 && id < vocab_size(), "token id ", id, " is outside [0, ", vocab_size(), ")");
    text += id_to_bytes_[id];
  }
  return text;
}

}  // namespace scalemoe
