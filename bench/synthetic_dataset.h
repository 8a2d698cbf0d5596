// A dataset of uniformly random token ids in the layout `scalemoe prepare`
// writes (manifest + one shard per split), so that a benchmark drives the
// real trainer and loader without a corpus or tokenizer.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"

namespace scalemoe::bench {

// Writes <dir>/manifest.json, train_000000.bin (train_tokens ids) and
// val_000000.bin (val_tokens ids), each id uniform in [0, vocab_size) from a
// generator seeded with `seed`. Creates `dir`; overwrites what is there.
Status WriteSyntheticDataset(const std::string& dir, int64_t vocab_size, int64_t train_tokens,
                             int64_t val_tokens, uint64_t seed);

}  // namespace scalemoe::bench
