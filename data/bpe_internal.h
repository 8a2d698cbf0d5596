// Internals shared by BpeTokenizer's source files (bpe_*.cc): GPT-2's
// byte-level alphabet, its spelling conversions and the end-of-text token.
// Not part of the public API; include only from data/bpe_*.cc.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace scalemoe::bpe_internal {

inline constexpr std::string_view kEndOfText = "<|endoftext|>";

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
inline constexpr ByteAlphabet kAlphabet = MakeByteAlphabet();

// Raw bytes -> GPT-2's printable spelling (UTF-8; code points < 0x800).
std::string ToByteLevel(std::string_view bytes);

// GPT-2's printable spelling -> raw bytes; fails on characters outside it.
StatusOr<std::string> FromByteLevel(const std::string& token, const std::string& file);

}  // namespace scalemoe::bpe_internal
