#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <tuple>

#include "absl/strings/str_format.h"
#include "data/pretokenize.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

constexpr std::string_view kEndOfText = "<|endoftext|>";
// Words up to this many bytes are memoised; longer ones are rare and would
// bloat the cache. The cache is dropped when it reaches kMaxCacheEntries.
constexpr size_t kMaxCachedWordBytes = 64;
constexpr size_t kMaxCacheEntries = size_t{1} << 20;
// Words with more symbols than this use the O(n log n) heap merge.
constexpr size_t kMaxShortWordSymbols = 32;

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves,
// the other 68 bytes for U+0100.. in byte order. `order` lists the bytes in
// GPT-2's id order (ids 0..255 of its encoder.json).
struct ByteAlphabet {
  std::array<char32_t, 256> code_point{};
  std::array<int16_t, 0x144> byte{};  // code point -> byte, -1 if none
  std::array<unsigned char, 256> order{};
};

constexpr ByteAlphabet MakeByteAlphabet() {
  ByteAlphabet a;
  for (int16_t& b : a.byte) b = -1;
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    if (printable(b)) a.order[next++] = static_cast<unsigned char>(b), a.code_point[b] = b;
  }
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    if (!printable(b)) a.order[next++] = static_cast<unsigned char>(b), a.code_point[b] = 256 + extra++;
  }
  for (int b = 0; b < 256; ++b) a.byte[a.code_point[b]] = static_cast<int16_t>(b);
  return a;
}
constexpr ByteAlphabet kAlphabet = MakeByteAlphabet();

// Raw bytes -> GPT-2's printable spelling (UTF-8; code points < 0x800).
std::string ToByteLevel(std::string_view bytes) {
  std::string out;
  for (char c : bytes) {
    const char32_t cp = kAlphabet.code_point[static_cast<unsigned char>(c)];
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

// GPT-2's printable spelling -> raw bytes; fails on characters outside it.
StatusOr<std::string> FromByteLevel(const std::string& token, const std::string& file) {
  std::string bytes;
  for (size_t i = 0; i < token.size();) {
    const auto b0 = static_cast<unsigned char>(token[i]);
    char32_t cp = b0;
    size_t length = 1;
    if ((b0 & 0xE0) == 0xC0 && i + 1 < token.size() &&
        (static_cast<unsigned char>(token[i + 1]) & 0xC0) == 0x80) {
      cp = ((b0 & 0x1F) << 6) | (static_cast<unsigned char>(token[i + 1]) & 0x3F);
      length = 2;
    }
    if (cp >= kAlphabet.byte.size() || kAlphabet.byte[cp] < 0 || (length == 1 && b0 >= 0x80)) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": token '", token, "' has a character outside GPT-2's byte-level alphabet; "
          "tokens must spell bytes as GPT-2's bytes_to_unicode() does"));
    }
    bytes.push_back(static_cast<char>(kAlphabet.byte[cp]));
    i += length;
  }
  return bytes;
}

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
          ToByteLevel(id_to_bytes_[id]), "'; every token must be unique"));
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
