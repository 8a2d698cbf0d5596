// GPT-2's byte-level spelling of tokens: raw bytes <-> the printable
// "bytes_to_unicode()" alphabet used in encoder.json and vocab.bpe.
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "data/bpe_internal.h"

namespace scalemoe::bpe_internal {

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

}  // namespace scalemoe::bpe_internal
