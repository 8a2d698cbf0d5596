// Hugging Face tokenizer files for a GPT-2 format tokenizer directory
// (encoder.json + vocab.bpe, as `scalemoe prepare` writes; data/bpe_tokenizer.h),
// so that AutoTokenizer.from_pretrained(OUT) encodes like `scalemoe tokenize`:
//   vocab.json, merges.txt   GPT2Tokenizer's own files (the same content)
//   tokenizer.json           the tokenizers pipeline spelled out: ByteLevel
//                            pre-tokenizer (GPT-2's regex, no prefix space),
//                            BPE over byte-level symbols (merges in rank
//                            order; no unk, dropout or merge skipping),
//                            ByteLevel decoder, no normalizer, no post-processing
//   tokenizer_config.json, special_tokens_map.json
//                            "<|endoftext|>" as bos, eos and unk (GPT-2's
//                            convention); nothing added on encode
//   encoder.json, vocab.bpe  copied, for `scalemoe tokenize --tokenizer OUT`
// One difference stays: transformers splits the literal text "<|endoftext|>"
// into the special token, `scalemoe tokenize` encodes it as plain text.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace scalemoe::checkpoint {

// Writes the files above into `out_dir` (which must exist); returns the id of
// "<|endoftext|>".
StatusOr<int64_t> WriteHfTokenizer(const std::string& gpt2_dir, const std::string& out_dir,
                                   int64_t model_max_length);

}  // namespace scalemoe::checkpoint
