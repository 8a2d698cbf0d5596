// GPT-2 pre-tokenisation: splits text into the pieces that BPE merges within,
// as GPT-2's regex does (JavaScript semantics, the `u` flag):
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Implemented by hand over UTF-8 bytes. \p{L}, \p{N} and \s are the sets of
// node v20's regex engine (tables generated from it, Unicode 17). Bytes that
// are not valid UTF-8 count as one "other" character each, so any byte string
// splits, and the pieces always concatenate back to the input.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace scalemoe {

// Disjoint classes the regex distinguishes: \p{L}, \p{N}, \s, and the rest.
enum class CharClass : unsigned char { kLetter, kNumber, kSpace, kOther };

CharClass ClassifyCodePoint(char32_t code_point);

// Byte offset one past the pre-token that starts at `begin`
// (precondition: begin < text.size()); always > begin.
size_t PretokenEnd(std::string_view text, size_t begin);

// All pre-tokens of `text`, in order; views into `text`.
std::vector<std::string_view> Pretokenize(std::string_view text);

}  // namespace scalemoe
