#include "bench/synthetic_dataset.h"

#include <filesystem>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "data/prepare.h"
#include "data/shard_format.h"

namespace scalemoe::bench {

Status WriteSyntheticDataset(const std::string& dir, int64_t vocab_size, int64_t train_tokens,
                             int64_t val_tokens, uint64_t seed) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create the synthetic dataset dir ", dir, ": ", ec.message()));
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab_size - 1));
  DatasetManifest manifest;
  manifest.vocab_size = vocab_size;
  manifest.eot_id = 0;
  manifest.tokenizer_dir = "none (synthetic: uniform random ids)";
  manifest.source = "bench/synthetic_dataset";
  manifest.seed = seed;
  manifest.val_fraction = static_cast<double>(val_tokens) / (train_tokens + val_tokens);
  for (auto [name, count, split] : {std::tuple{"train", train_tokens, &manifest.train},
                                    std::tuple{"val", val_tokens, &manifest.val}}) {
    std::vector<int32_t> tokens(count);
    for (int32_t& t : tokens) t = id(rng);
    const std::string file = absl::StrCat(name, "_000000.bin");
    SM_ASSIGN_OR_RETURN(
        const ShardInfo info,
        WriteShard((std::filesystem::path(dir) / file).string(), tokens, vocab_size));
    split->documents = 1;
    split->tokens = count;
    split->shards = {{file, count, info.checksum}};
  }
  return manifest.Write(dir);
}

}  // namespace scalemoe::bench
