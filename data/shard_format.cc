#include "data/shard_format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"

namespace scalemoe {

// The header and payload are written in host order; every target we build for
// is little-endian, which is what the format specifies.
static_assert(std::endian::native == std::endian::little,
              "shard_format assumes a little-endian host");

namespace {

constexpr uint32_t kCrc32cPoly = 0x82F63B78u;  // reflected Castagnoli

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zeros.
constexpr std::array<std::array<uint32_t, 256>, 8> MakeCrcTables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c & 1) ? (c >> 1) ^ kCrc32cPoly : c >> 1;
    t[0][b] = c;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  }
  return t;
}
constexpr auto kCrcTables = MakeCrcTables();

struct RawHeader {
  char magic[8];
  uint32_t version;
  uint32_t dtype;
  uint64_t token_count;
  uint64_t vocab_size;
  uint32_t checksum;
  unsigned char reserved[28];
};
static_assert(sizeof(RawHeader) == kShardHeaderBytes, "header must be 64 bytes");

std::string ErrnoText() { return std::strerror(errno); }

Status ShardError(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat("token shard ", path, ": ", what,
                                          "; re-run `scalemoe prepare` to rebuild the dataset"));
}

// Index of the first of `count` tokens of `payload` whose id is not below
// `vocab_size` (its id in *id), or -1 when every id is inside.
template <typename T>
int64_t FirstIdOutside(const unsigned char* payload, int64_t count, uint64_t vocab_size,
                       uint64_t* id) {
  for (int64_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, payload + i * sizeof(T), sizeof(T));
    if (v >= vocab_size) {
      *id = v;
      return i;
    }
  }
  return -1;
}

}  // namespace

size_t TokenDtypeBytes(TokenDtype dtype) { return dtype == TokenDtype::kUint16 ? 2 : 4; }

TokenDtype TokenDtypeForVocab(int64_t vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::kUint16 : TokenDtype::kUint32;
}

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  while (size >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= crc;
    crc = kCrcTables[7][word & 0xFF] ^ kCrcTables[6][(word >> 8) & 0xFF] ^
          kCrcTables[5][(word >> 16) & 0xFF] ^ kCrcTables[4][(word >> 24) & 0xFF] ^
          kCrcTables[3][(word >> 32) & 0xFF] ^ kCrcTables[2][(word >> 40) & 0xFF] ^
          kCrcTables[1][(word >> 48) & 0xFF] ^ kCrcTables[0][word >> 56];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = (crc >> 8) ^ kCrcTables[0][(crc ^ *p++) & 0xFF];
  return ~crc;
}

StatusOr<ShardInfo> WriteShard(const std::string& path, std::span<const int32_t> tokens,
                               int64_t vocab_size) {
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(
        absl::StrCat("token shard ", path, ": vocab size ", vocab_size, " is outside [1, 2^31]"));
  }
  ShardInfo info;
  info.dtype = TokenDtypeForVocab(vocab_size);
  info.token_count = static_cast<int64_t>(tokens.size());
  info.vocab_size = vocab_size;

  const size_t width = TokenDtypeBytes(info.dtype);
  std::vector<unsigned char> payload(tokens.size() * width);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t t = tokens[i];
    if (t < 0 || t >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token shard ", path, ": token ", i,
                                                     " has id ", t, ", outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
    if (width == 2) {
      const uint16_t v = static_cast<uint16_t>(t);
      std::memcpy(&payload[i * 2], &v, 2);
    } else {
      const uint32_t v = static_cast<uint32_t>(t);
      std::memcpy(&payload[i * 4], &v, 4);
    }
  }
  info.checksum = Crc32c(payload.data(), payload.size());

  RawHeader header{};
  std::memcpy(header.magic, kShardMagic, sizeof(kShardMagic));
  header.version = kShardFormatVersion;
  header.dtype = static_cast<uint32_t>(info.dtype);
  header.token_count = static_cast<uint64_t>(info.token_count);
  header.vocab_size = static_cast<uint64_t>(vocab_size);
  header.checksum = info.checksum;

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("token shard ", tmp, ": cannot create (", ErrnoText(), ")"));
  }
  bool ok = std::fwrite(&header, sizeof(header), 1, f) == 1;
  if (ok && !payload.empty()) ok = std::fwrite(payload.data(), payload.size(), 1, f) == 1;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("token shard ", tmp, ": write failed (", ErrnoText(), "); is the disk full?"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("token shard ", path, ": cannot rename from ", tmp, " (", ec.message(), ")"));
  }
  return info;
}

StatusOr<TokenShard> TokenShard::Open(const std::string& path, int64_t expected_vocab_size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("token shard ", path, ": cannot open (", ErrnoText(),
                                            "); run `scalemoe prepare` to create the dataset"));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const std::string why = ErrnoText();
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("token shard ", path, ": cannot stat (", why, ")"));
  }
  const size_t file_bytes = static_cast<size_t>(st.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    return ShardError(path, absl::StrCat("file is ", file_bytes, " bytes, shorter than the ",
                                         kShardHeaderBytes, "-byte header (truncated)"));
  }
  void* map = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  const std::string mmap_error = map == MAP_FAILED ? ErrnoText() : "";
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return absl::UnavailableError(
        absl::StrCat("token shard ", path, ": mmap failed (", mmap_error, ")"));
  }

  TokenShard shard;
  shard.path_ = path;
  shard.map_ = map;
  shard.map_bytes_ = file_bytes;
  shard.payload_ = static_cast<const unsigned char*>(map) + kShardHeaderBytes;

  RawHeader header;
  std::memcpy(&header, map, sizeof(header));
  if (std::memcmp(header.magic, kShardMagic, sizeof(kShardMagic)) != 0) {
    return ShardError(path, "wrong magic (expected \"SMTOKSHD\"); not a scalemoe token shard");
  }
  if (header.version != kShardFormatVersion) {
    return ShardError(path, absl::StrCat("format version ", header.version,
                                         " is not supported (this build reads version ",
                                         kShardFormatVersion, ")"));
  }
  if (header.dtype != static_cast<uint32_t>(TokenDtype::kUint16) &&
      header.dtype != static_cast<uint32_t>(TokenDtype::kUint32)) {
    return ShardError(
        path, absl::StrCat("unknown token dtype code ", header.dtype, " (1 = uint16, 2 = uint32)"));
  }
  ShardInfo& info = shard.info_;
  info.dtype = static_cast<TokenDtype>(header.dtype);
  info.vocab_size = static_cast<int64_t>(header.vocab_size);
  info.checksum = header.checksum;
  if (expected_vocab_size > 0 && info.vocab_size != expected_vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("token shard ", path, ": vocab size ", info.vocab_size,
                     " does not match the expected ", expected_vocab_size,
                     "; the shard was made with another tokenizer, re-run "
                     "`scalemoe prepare` with the tokenizer you train with"));
  }
  const size_t width = TokenDtypeBytes(info.dtype);
  const size_t payload_bytes = file_bytes - kShardHeaderBytes;
  if (header.token_count > payload_bytes / width) {
    return ShardError(path, absl::StrCat("header says ", header.token_count, " tokens (",
                                         header.token_count * width, " bytes) but the payload has ",
                                         payload_bytes, " bytes (truncated)"));
  }
  if (header.token_count * width != payload_bytes) {
    return ShardError(path, absl::StrCat("header says ", header.token_count, " tokens but ",
                                         payload_bytes - header.token_count * width,
                                         " trailing bytes follow them"));
  }
  info.token_count = static_cast<int64_t>(header.token_count);
  const uint32_t actual = Crc32c(shard.payload_, payload_bytes);
  if (actual != info.checksum) {
    return ShardError(path, absl::StrFormat("payload checksum mismatch (header CRC-32C %08x, "
                                            "payload %08x): the file is corrupt",
                                            info.checksum, actual));
  }
  // Shards are data from outside and a right checksum says nothing about
  // the ids: one at or past the vocabulary would index past the embedding
  // (or any per-id table) far from here. Check every id once, now.
  uint64_t bad_id = 0;
  const int64_t bad_at =
      info.dtype == TokenDtype::kUint16
          ? FirstIdOutside<uint16_t>(shard.payload_, info.token_count, header.vocab_size, &bad_id)
          : FirstIdOutside<uint32_t>(shard.payload_, info.token_count, header.vocab_size, &bad_id);
  if (bad_at >= 0) {
    return ShardError(path, absl::StrCat("token ", bad_at, " (byte ", kShardHeaderBytes +
                                         bad_at * width, ") has id ", bad_id,
                                         ", outside the vocabulary [0, ", header.vocab_size,
                                         ") the header records"));
  }
  return shard;
}

TokenShard::TokenShard(TokenShard&& other) noexcept
    : path_(std::move(other.path_)),
      info_(other.info_),
      map_(std::exchange(other.map_, nullptr)),
      map_bytes_(std::exchange(other.map_bytes_, 0)),
      payload_(std::exchange(other.payload_, nullptr)) {}

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    Unmap();
    path_ = std::move(other.path_);
    info_ = other.info_;
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    payload_ = std::exchange(other.payload_, nullptr);
  }
  return *this;
}

TokenShard::~TokenShard() { Unmap(); }

void TokenShard::Unmap() {
  if (map_ != nullptr) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  payload_ = nullptr;
}

void TokenShard::Read(int64_t begin, int64_t count, int32_t* out) const {
  SM_CHECK_MSG(begin >= 0 && count >= 0 && begin + count <= info_.token_count, path_, ": read [",
               begin, ", ", begin + count, ") outside ", info_.token_count, " tokens");
  if (info_.dtype == TokenDtype::kUint16) {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, payload_ + (begin + i) * 2, 2);
      out[i] = v;
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      uint32_t v;
      std::memcpy(&v, payload_ + (begin + i) * 4, 4);
      out[i] = static_cast<int32_t>(v);
    }
  }
}

}  // namespace scalemoe
