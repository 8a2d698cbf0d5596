// TokenLoader: the deterministic, resumable, data-parallel micro-batch source
// over one split of a prepared dataset (data/prepare.h).
//
// Windows: the split's shards form one token stream of N tokens; window w is
// tokens [w*T, w*T + T + 1), so there are W = (N - 1) / T windows, inputs are
// its first T tokens and targets its last T (inputs shifted by one).
//
// Order: epoch e serves the windows in a Philox-seeded permutation of
// [0, W) that depends only on (seed, split, e). A global micro-batch is the
// next G = dp_size * B windows of that permutation; DP rank r gets windows
// [r*B, (r+1)*B) of it, so ranks are disjoint and together they are exactly
// the single-rank global micro-batch. When fewer than G windows are left the
// epoch ends (the few left over are skipped this epoch; the next permutation
// differs) and the next one starts.
//
// State: {seed, epoch, position} where position counts the windows of the
// epoch's permutation already served to all ranks together. It does not
// depend on dp_size or B, so a run can resume with another layout.
//
// Not thread-safe (Next and At cache the current permutation). Move-only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "data/shard_format.h"

namespace scalemoe {

struct TokenLoaderOptions {
  std::string dataset_dir;       // written by `scalemoe prepare`
  std::string split = "train";   // "train" or "val"
  int64_t seq_length = 0;        // T
  int64_t micro_batch_size = 0;  // B, windows per rank per micro-batch
  int dp_rank = 0;
  int dp_size = 1;
  uint64_t seed = 42;
};

// What a checkpoint stores to resume the loader. seq_length and windows
// identify the window grid the position counts in (a different T or dataset
// would make it meaningless, so Restore refuses it).
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;
  int64_t seq_length = 0;
  int64_t windows = 0;

  // One-line JSON object, e.g. {"epoch":1,"position":96,...}.
  std::string ToJson() const;
  static StatusOr<LoaderState> FromJson(std::string_view json);
  bool operator==(const LoaderState&) const = default;
};

// One rank's micro-batch, row-major [B, T].
struct MicroBatch {
  int64_t batch = 0;  // B
  int64_t seq = 0;    // T
  int64_t epoch = 0;
  std::vector<int32_t> inputs;
  std::vector<int32_t> targets;
};

class TokenLoader {
 public:
  // Reads the manifest, opens and validates every shard of the split
  // (checksums, vocab size, token counts against the manifest) and checks
  // the layout (1 <= T, 1 <= B, 0 <= dp_rank < dp_size, at least one global
  // micro-batch of windows). Errors name the file or option and the fix.
  static StatusOr<TokenLoader> Open(const TokenLoaderOptions& options);

  // This rank's part of the next global micro-batch; advances the state.
  MicroBatch Next();
  // This rank's part of global micro-batch `index` counted from the start of
  // epoch 0 with this layout: a fresh loader's Next() returns At(0), At(1),
  // ... For step s and micro-step m with A micro-steps a step, index = s*A + m.
  // Does not touch the state.
  MicroBatch At(int64_t index);

  LoaderState state() const;
  // Resumes from `state`; refuses one from another seed, seq_length or
  // dataset, or a position beyond the epoch.
  Status Restore(const LoaderState& state);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_windows() const { return num_windows_; }
  // Global micro-batches in one epoch: W / (dp_size * B).
  int64_t micro_batches_per_epoch() const;
  int64_t vocab_size() const { return vocab_size_; }
  int32_t eot_id() const { return eot_id_; }

 private:
  TokenLoader() = default;
  // Windows of epoch `epoch` in serving order (cached for one epoch).
  const std::vector<int64_t>& Permutation(int64_t epoch);
  // Fills this rank's rows from the G windows at `position` of `epoch`.
  MicroBatch Gather(int64_t epoch, int64_t position);
  // Copies tokens [begin, begin + count) of the split's stream to `out`.
  void ReadStream(int64_t begin, int64_t count, int32_t* out) const;

  TokenLoaderOptions options_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> shard_begin_;  // stream offset of each shard's first token
  int64_t num_tokens_ = 0;
  int64_t num_windows_ = 0;
  int64_t vocab_size_ = 0;
  int32_t eot_id_ = -1;
  uint64_t stream_key_ = 0;  // Philox stream of this split's permutations
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> permutation_;
};

}  // namespace scalemoe
