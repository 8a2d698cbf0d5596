// Counter-based RNG (Philox 4x32-10, Salmon et al. 2011). A value depends only
// on (seed, stream key, counter), so a parameter's init is a pure function of
// (seed, global name, global element index): any shard of a tensor draws
// exactly its slice of the single-rank tensor, on the CPU or the GPU (every
// function here is host+device).
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "core/dtype.h"  // SM_HOST_DEVICE

namespace scalemoe {

struct Philox4x32 {
  uint32_t v[4];
};

// Philox4x32-10 on counter c with key k (reference constants).
SM_HOST_DEVICE inline Philox4x32 Philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * c.v[0];
    uint64_t p1 = static_cast<uint64_t>(kM1) * c.v[2];
    Philox4x32 n;
    n.v[0] = static_cast<uint32_t>(p1 >> 32) ^ c.v[1] ^ k0;
    n.v[1] = static_cast<uint32_t>(p1);
    n.v[2] = static_cast<uint32_t>(p0 >> 32) ^ c.v[3] ^ k1;
    n.v[3] = static_cast<uint32_t>(p0);
    c = n;
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// 64-bit FNV-1a of a name: the stream key of a parameter. Stable across
// platforms and builds (unlike std::hash).
constexpr uint64_t HashName(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : name) {
    h ^= static_cast<uint8_t>(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

// The four raw 32-bit words for element `index` of stream `stream` under `seed`.
SM_HOST_DEVICE inline Philox4x32 PhiloxWords(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4x32 c{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}};
  return Philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Uniform in (0, 1), 53 bits from two words.
SM_HOST_DEVICE inline double WordsToUniform(uint32_t hi, uint32_t lo) {
  uint64_t bits = (static_cast<uint64_t>(hi) << 21) ^ (lo >> 11);  // 53 bits
  return (static_cast<double>(bits & ((1ull << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
}

SM_HOST_DEVICE inline double PhiloxUniform(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4x32 w = PhiloxWords(seed, stream, index);
  return WordsToUniform(w.v[0], w.v[1]);
}

// Standard normal via Box-Muller on the element's own four words (one value
// per element, so no neighbour dependence across shard boundaries).
SM_HOST_DEVICE inline double PhiloxNormal(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4x32 w = PhiloxWords(seed, stream, index);
  double u1 = WordsToUniform(w.v[0], w.v[1]);
  double u2 = WordsToUniform(w.v[2], w.v[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace scalemoe
