// Token shard files: the on-disk unit of a prepared dataset. Owns the binary
// layout, its writer, and a read-only memory-mapped reader that validates a
// shard before anything reads a token from it.
//
// Layout (all integers little-endian; 64-byte header, then the payload):
//   offset  size  field
//        0     8  magic "SMTOKSHD"
//        8     4  format version (kShardFormatVersion)
//       12     4  token dtype: 1 = uint16, 2 = uint32 (TokenDtype)
//       16     8  token count
//       24     8  vocab size (every token id is < vocab size)
//       32     4  CRC-32C (Castagnoli) of the payload bytes
//       36    28  reserved, zero
//       64     -  payload: token count tokens of the dtype's width
// uint16 is used when every id fits (vocab size <= 65536), else uint32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"

namespace scalemoe {

inline constexpr char kShardMagic[8] = {'S', 'M', 'T', 'O', 'K', 'S', 'H', 'D'};
inline constexpr uint32_t kShardFormatVersion = 1;
inline constexpr size_t kShardHeaderBytes = 64;

enum class TokenDtype : uint32_t { kUint16 = 1, kUint32 = 2 };

// Width of one token of `dtype` in bytes.
size_t TokenDtypeBytes(TokenDtype dtype);
// The narrowest dtype holding every id below `vocab_size`.
TokenDtype TokenDtypeForVocab(int64_t vocab_size);

// CRC-32C of `size` bytes, continuing from `crc` (0 to start).
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

struct ShardInfo {
  TokenDtype dtype = TokenDtype::kUint16;
  int64_t token_count = 0;
  int64_t vocab_size = 0;
  uint32_t checksum = 0;  // CRC-32C of the payload
};

// Writes `tokens` as a shard at `path` (via `path`.tmp + rename, so a reader
// never sees half a file). Fails if a token is outside [0, vocab_size) or the
// file cannot be written. Returns what the header records.
StatusOr<ShardInfo> WriteShard(const std::string& path, std::span<const int32_t> tokens,
                               int64_t vocab_size);

// A validated, read-only, memory-mapped shard. Move-only; unmaps on
// destruction. Const methods are thread-safe.
class TokenShard {
 public:
  // Maps `path` and checks magic, version, dtype, vocab size (against
  // `expected_vocab_size`; pass 0 to accept any), file size against the
  // token count (truncated or trailing bytes), the payload checksum and
  // every token id against the vocab size (once, here: readers may then
  // index by id). Every error names the file and what is wrong with it (a
  // bad id: its position).
  static StatusOr<TokenShard> Open(const std::string& path, int64_t expected_vocab_size);

  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;
  ~TokenShard();

  const ShardInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  int64_t size() const { return info_.token_count; }
  // Copies tokens [begin, begin + count) into `out` as int32.
  // Precondition: the range lies inside the shard (SM_CHECK).
  void Read(int64_t begin, int64_t count, int32_t* out) const;

 private:
  TokenShard() = default;
  void Unmap();

  std::string path_;
  ShardInfo info_;
  void* map_ = nullptr;  // whole file, PROT_READ
  size_t map_bytes_ = 0;
  const unsigned char* payload_ = nullptr;  // map_ + kShardHeaderBytes
};

}  // namespace scalemoe
