// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0 by default): the file
// checksum of the checkpoint manifest and the model fingerprint. Chosen over
// CRC32C because it runs at memory speed in portable C++ (no SSE4.2 flag).
// Streaming: Update() any number of times, then Digest(); equal to the
// one-shot Hash() of the concatenated bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace scalemoe::checkpoint {

class XxHash64 {
 public:
  explicit XxHash64(uint64_t seed = 0);
  void Update(const void* data, size_t size);
  uint64_t Digest() const;

  static uint64_t Hash(const void* data, size_t size, uint64_t seed = 0);

 private:
  uint64_t seed_;
  uint64_t acc_[4];
  uint64_t total_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

// "xxh64:" followed by 16 lower-case hex digits.
std::string ChecksumString(uint64_t hash);

}  // namespace scalemoe::checkpoint
