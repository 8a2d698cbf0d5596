// BpeTokenizer::Train: learns byte-level BPE merges from text
// (data/bpe_tokenizer.h).
#include <algorithm>
#include <queue>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "data/bpe_internal.h"
#include "data/bpe_tokenizer.h"
#include "data/pretokenize.h"

namespace scalemoe {

using bpe_internal::kAlphabet;
using bpe_internal::kEndOfText;

// Classic BPE training over distinct pre-tokenised words: pair counts are
// kept incrementally; the most frequent pair (ties: smallest ids) is merged
// next. A max-heap holds (count, pair) entries that may be stale; a stale one
// is re-queued with its current count when it surfaces.
StatusOr<BpeTokenizer> BpeTokenizer::Train(std::string_view text, int vocab_size) {
  if (vocab_size < 257) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size ", vocab_size, " is too small: byte-level BPE needs 256 byte tokens plus "
        "<|endoftext|>, so at least 257"));
  }
  BpeTokenizer tokenizer;
  for (unsigned char b : kAlphabet.order) {
    tokenizer.id_to_bytes_.emplace_back(1, static_cast<char>(b));
    tokenizer.bytes_to_id_.emplace(tokenizer.id_to_bytes_.back(), tokenizer.vocab_size() - 1);
  }
  absl::flat_hash_map<absl::string_view, int64_t> word_counts;
  for (std::string_view piece : Pretokenize(text)) ++word_counts[absl::string_view(piece.data(), piece.size())];
  struct Word {
    std::vector<int32_t> symbols;
    int64_t count;
  };
  std::vector<Word> words;
  absl::flat_hash_map<uint64_t, int64_t> pair_counts;
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> pair_words;  // may hold stale words
  for (const auto& [piece, count] : word_counts) {
    Word word{{}, count};
    for (char c : piece) word.symbols.push_back(tokenizer.bytes_to_id_.at(std::string(1, c)));
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      const uint64_t key = PairKey(word.symbols[i], word.symbols[i + 1]);
      pair_counts[key] += count;
      pair_words[key].push_back(static_cast<int32_t>(words.size()));
    }
    words.push_back(std::move(word));
  }
  using Entry = std::pair<int64_t, uint64_t>;  // (count, pair key)
  auto lower_priority = [](const Entry& a, const Entry& b) {
    return a.first != b.first ? a.first < b.first : a.second > b.second;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower_priority)> queue(lower_priority);
  for (const auto& [key, count] : pair_counts) queue.emplace(count, key);

  std::vector<int32_t> last_visit(words.size(), -1);
  std::vector<uint64_t> new_pairs;
  while (tokenizer.vocab_size() < vocab_size - 1 && !queue.empty()) {
    const auto [count, key] = queue.top();
    queue.pop();
    const auto counted = pair_counts.find(key);
    const int64_t current = counted == pair_counts.end() ? 0 : counted->second;
    if (current != count) {
      if (current > 0) queue.emplace(current, key);
      continue;
    }
    const auto left = static_cast<int32_t>(key >> 32);
    const auto right = static_cast<int32_t>(key & 0xFFFFFFFFu);
    std::string merged = tokenizer.id_to_bytes_[left] + tokenizer.id_to_bytes_[right];
    // Different merges can spell the same bytes ("ab"+"c", "a"+"bc"): one id.
    const auto [spelled, is_new] = tokenizer.bytes_to_id_.emplace(merged, tokenizer.vocab_size());
    const int32_t result = spelled->second;
    if (is_new) tokenizer.id_to_bytes_.push_back(std::move(merged));
    const auto merge_number = static_cast<int32_t>(tokenizer.merges_.size());
    tokenizer.merge_of_pair_.emplace(key, Merge{merge_number, result});
    tokenizer.merges_.emplace_back(left, right);

    const std::vector<int32_t> affected = std::move(pair_words[key]);
    pair_words.erase(key);
    new_pairs.clear();
    for (int32_t w : affected) {
      if (last_visit[w] == merge_number) continue;
      last_visit[w] = merge_number;
      Word& word = words[w];
      std::vector<int32_t>& s = word.symbols;
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_counts[PairKey(s[i], s[i + 1])] -= word.count;
      size_t out = 0;
      for (size_t i = 0; i < s.size(); ++out) {
        const bool hit = i + 1 < s.size() && s[i] == left && s[i + 1] == right;
        s[out] = hit ? result : s[i];
        i += hit ? 2 : 1;
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t pair = PairKey(s[i], s[i + 1]);
        pair_counts[pair] += word.count;
        if (s[i] == result || s[i + 1] == result) {
          pair_words[pair].push_back(w);
          new_pairs.push_back(pair);
        }
      }
    }
    pair_counts.erase(key);
    std::sort(new_pairs.begin(), new_pairs.end());
    new_pairs.erase(std::unique(new_pairs.begin(), new_pairs.end()), new_pairs.end());
    for (uint64_t pair : new_pairs) queue.emplace(pair_counts[pair], pair);
  }
  tokenizer.id_to_bytes_.emplace_back(kEndOfText);
  tokenizer.eot_id_ = tokenizer.vocab_size() - 1;
  SM_RETURN_IF_ERROR(tokenizer.Index("trained tokenizer"));
  return tokenizer;
}

}  // namespace scalemoe
