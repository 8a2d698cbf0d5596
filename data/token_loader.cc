#include "data/token_loader.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "core/philox.h"
#include "data/prepare.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

using Json = nlohmann::json;

// Separates the epochs' Philox streams within one split's key.
constexpr uint64_t kEpochStride = 0x9E3779B97F4A7C15ull;

Status LayoutError(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("token loader: ", what));
}

}  // namespace

std::string LoaderState::ToJson() const {
  return Json{{"seed", seed},
              {"epoch", epoch},
              {"position", position},
              {"seq_length", seq_length},
              {"windows", windows}}
      .dump();
}

StatusOr<LoaderState> LoaderState::FromJson(std::string_view json) {
  LoaderState s;
  try {
    const Json j = Json::parse(json.begin(), json.end());
    s.seed = j.at("seed").get<uint64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.position = j.at("position").get<int64_t>();
    s.seq_length = j.at("seq_length").get<int64_t>();
    s.windows = j.at("windows").get<int64_t>();
  } catch (const Json::exception& e) {
    return absl::DataLossError(absl::StrCat("token loader state '", std::string(json),
                                            "' is not a loader state (", e.what(), ")"));
  }
  return s;
}

StatusOr<TokenLoader> TokenLoader::Open(const TokenLoaderOptions& options) {
  if (options.seq_length < 1) {
    return LayoutError(absl::StrCat("seq_length ", options.seq_length, " must be >= 1"));
  }
  if (options.micro_batch_size < 1) {
    return LayoutError(
        absl::StrCat("micro_batch_size ", options.micro_batch_size, " must be >= 1"));
  }
  if (options.dp_size < 1 || options.dp_rank < 0 || options.dp_rank >= options.dp_size) {
    return LayoutError(absl::StrCat("dp_rank ", options.dp_rank, " must be in [0, dp_size ",
                                    options.dp_size, ")"));
  }
  SM_ASSIGN_OR_RETURN(const DatasetManifest manifest, DatasetManifest::Read(options.dataset_dir));
  SM_ASSIGN_OR_RETURN(const SplitManifest* split, manifest.Split(options.split));

  TokenLoader loader;
  loader.options_ = options;
  loader.vocab_size_ = manifest.vocab_size;
  loader.eot_id_ = manifest.eot_id;
  loader.stream_key_ = HashName(absl::StrCat("scalemoe/token_loader/", options.split));
  for (const ShardEntry& entry : split->shards) {
    const std::string path = (std::filesystem::path(options.dataset_dir) / entry.file).string();
    SM_ASSIGN_OR_RETURN(TokenShard shard, TokenShard::Open(path, manifest.vocab_size));
    if (shard.size() != entry.tokens || shard.info().checksum != entry.crc32c) {
      return absl::DataLossError(absl::StrCat(
          "token shard ", path, ": holds ", shard.size(), " tokens (CRC-32C ",
          shard.info().checksum, ") but the manifest lists ", entry.tokens, " (", entry.crc32c,
          "); the shard belongs to another preparation, re-run `scalemoe prepare`"));
    }
    loader.shard_begin_.push_back(loader.num_tokens_);
    loader.num_tokens_ += shard.size();
    loader.shards_.push_back(std::move(shard));
  }
  const int64_t global_windows = options.dp_size * options.micro_batch_size;
  loader.num_windows_ = loader.num_tokens_ > 0 ? (loader.num_tokens_ - 1) / options.seq_length : 0;
  if (loader.num_windows_ < global_windows) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token loader: split '", options.split, "' of ", options.dataset_dir, " has ",
        loader.num_tokens_, " tokens, i.e. ", loader.num_windows_, " windows of seq_length ",
        options.seq_length,
        " + 1, but one global micro-batch needs dp_size * micro_batch_size = ", global_windows,
        "; use a larger corpus (or val fraction), or a smaller seq_length or "
        "batch"));
  }
  return loader;
}

int64_t TokenLoader::micro_batches_per_epoch() const {
  return num_windows_ / (options_.dp_size * options_.micro_batch_size);
}

const std::vector<int64_t>& TokenLoader::Permutation(int64_t epoch) {
  if (cached_epoch_ == epoch) return permutation_;
  const uint64_t stream = stream_key_ ^ (static_cast<uint64_t>(epoch) * kEpochStride);
  permutation_.resize(static_cast<size_t>(num_windows_));
  for (int64_t i = 0; i < num_windows_; ++i) permutation_[i] = i;
  // Fisher-Yates from the back; draw i decides the window placed at slot i.
  for (int64_t i = num_windows_ - 1; i > 0; --i) {
    const double u = PhiloxUniform(options_.seed, stream, static_cast<uint64_t>(i));
    const int64_t j = std::min<int64_t>(i, static_cast<int64_t>(u * static_cast<double>(i + 1)));
    std::swap(permutation_[i], permutation_[j]);
  }
  cached_epoch_ = epoch;
  return permutation_;
}

void TokenLoader::ReadStream(int64_t begin, int64_t count, int32_t* out) const {
  // The last shard starting at or before `begin`.
  size_t s = static_cast<size_t>(std::upper_bound(shard_begin_.begin(), shard_begin_.end(), begin) -
                                 shard_begin_.begin() - 1);
  while (count > 0) {
    const int64_t local = begin - shard_begin_[s];
    const int64_t take = std::min(count, shards_[s].size() - local);
    shards_[s].Read(local, take, out);
    out += take;
    begin += take;
    count -= take;
    ++s;
  }
}

MicroBatch TokenLoader::Gather(int64_t epoch, int64_t position) {
  const int64_t b_size = options_.micro_batch_size;
  const int64_t t_size = options_.seq_length;
  const std::vector<int64_t>& order = Permutation(epoch);
  MicroBatch batch;
  batch.batch = b_size;
  batch.seq = t_size;
  batch.epoch = epoch;
  batch.inputs.resize(static_cast<size_t>(b_size * t_size));
  batch.targets.resize(static_cast<size_t>(b_size * t_size));
  std::vector<int32_t> window(static_cast<size_t>(t_size + 1));
  for (int64_t b = 0; b < b_size; ++b) {
    const int64_t w = order[position + options_.dp_rank * b_size + b];
    ReadStream(w * t_size, t_size + 1, window.data());
    std::copy(window.begin(), window.end() - 1, batch.inputs.begin() + b * t_size);
    std::copy(window.begin() + 1, window.end(), batch.targets.begin() + b * t_size);
  }
  return batch;
}

MicroBatch TokenLoader::Next() {
  const int64_t global_windows = options_.dp_size * options_.micro_batch_size;
  if (position_ + global_windows > num_windows_) {
    ++epoch_;
    position_ = 0;
  }
  MicroBatch batch = Gather(epoch_, position_);
  position_ += global_windows;
  return batch;
}

MicroBatch TokenLoader::At(int64_t index) {
  SM_CHECK_MSG(index >= 0, "micro-batch index ", index, " must be >= 0");
  const int64_t per_epoch = micro_batches_per_epoch();
  const int64_t global_windows = options_.dp_size * options_.micro_batch_size;
  return Gather(index / per_epoch, (index % per_epoch) * global_windows);
}

LoaderState TokenLoader::state() const {
  return LoaderState{options_.seed, epoch_, position_, options_.seq_length, num_windows_};
}

Status TokenLoader::Restore(const LoaderState& state) {
  if (state.seed != options_.seed) {
    return absl::FailedPreconditionError(
        absl::StrCat("token loader: the saved state was made with shuffle seed ", state.seed,
                     " but this loader uses ", options_.seed,
                     "; set data.shuffle_seed=", state.seed, " to resume that run"));
  }
  if (state.seq_length != options_.seq_length || state.windows != num_windows_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token loader: the saved state counts ", state.windows, " windows of seq_length ",
        state.seq_length, " but split '", options_.split, "' of ", options_.dataset_dir,
        " now has ", num_windows_, " windows of seq_length ", options_.seq_length,
        "; resume with the same dataset and seq_length"));
  }
  if (state.epoch < 0 || state.position < 0 || state.position > num_windows_) {
    return absl::DataLossError(absl::StrCat("token loader: saved state epoch ", state.epoch,
                                            " position ", state.position,
                                            " is outside the epoch of ", num_windows_, " windows"));
  }
  epoch_ = state.epoch;
  position_ = state.position;
  return absl::OkStatus();
}

}  // namespace scalemoe
