// Sharded checkpoints: save, find, load and describe checkpoints/step_N/.
//
// Directory layout (one run root):
//   <root>/checkpoints/step_N/
//     rank_00000.safetensors  one file per writing rank: that rank's slices,
//                             stored under the tensors' global names
//     blobs.json              small opaque states (loader, RNG, schedule)
//     manifest.pb             CheckpointManifest (checkpoint/manifest.proto)
//     manifest.txt            the same in text format, for humans
//     COMPLETE                written last: a step dir without it is ignored
//
// Commit protocol: everything is written into checkpoints/.tmp-step_N-<pid>/,
// each file fsynced, the directory fsynced, then renamed to step_N (atomic)
// and COMPLETE written and fsynced. A crash at any point leaves earlier
// checkpoints untouched; leftovers (.tmp-* dirs, step dirs without COMPLETE)
// are ignored by LatestCheckpoint and removed by the next save.
//
// Today one process writes the whole checkpoint (world_size 1). The format is
// already per rank: each rank's tensors carry their global shape and slice,
// each rank file is listed with its size and checksum, so the multi-rank path
// only adds "every rank writes its file, rank 0 writes the manifest".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::checkpoint {

// What a tensor is to the checkpoint. kModel tensors define the model
// fingerprint and must all be loaded; kState tensors (optimizer moments and
// the like) are loaded only when the caller asks for them.
enum class TensorRole { kModel = 0, kState = 1 };

// One rank's piece of one global tensor. On save `tensor` is read; on load it
// is the destination (its shape must equal the slice, dtype equal to the
// stored one or f32 <-> bf16).
struct NamedTensor {
  std::string name;          // stable global name ("layers.0.attn.wq")
  Tensor tensor;             // local data: the slice [slice_start, +shape)
  Shape global_shape;        // empty: the tensor's own shape (unsliced)
  Shape slice_start;         // empty: all zeros (unsliced)
  TensorRole role = TensorRole::kModel;
};

// The parallel layout that wrote (or reads) a checkpoint.
struct CheckpointLayout {
  int tp = 1, pp = 1, dp = 1, ep = 1, etp = 1;
  int world_size = 1;
  int zero_stage = 0;
};

struct SaveRequest {
  std::string root;           // run directory; checkpoints go to root/checkpoints/
  int64_t step = 0;
  std::string config_text;    // resolved RunConfig, text format
  CheckpointLayout layout;
  int rank = 0;               // writer's rank; names its file
  std::vector<NamedTensor> tensors;
  std::map<std::string, std::string> blobs;  // any bytes; stored in blobs.json
  // Complete checkpoints to keep after this save (the one just written always
  // stays); 0 keeps all.
  int keep_last = 0;
};

// Saves per the commit protocol above. Fails (deleting nothing of earlier
// checkpoints) if step_N already exists complete, on I/O errors, and on bad
// requests (duplicate names, slices outside the global shape).
Status SaveCheckpoint(const SaveRequest& request);

// <root>/checkpoints/step_N with the largest N that has COMPLETE; NotFound
// when there is none.
StatusOr<std::string> LatestCheckpoint(const std::string& root);

struct LoadRequest {
  // Destinations. Every kModel tensor of the checkpoint must be among them
  // (the model fingerprint over their names and global shapes must match);
  // kState targets are filled only if listed.
  std::vector<NamedTensor> targets;
};

struct LoadedCheckpoint {
  int64_t step = 0;
  std::string config_text;
  CheckpointLayout layout;
  std::map<std::string, std::string> blobs;
};

// Verifies COMPLETE, the manifest, every file's size and checksum, the model
// fingerprint and every target's shape and dtype, staging all data in
// memory; only when everything passed are the targets written. On error no
// target has been touched and the Status names the file or tensor and the
// mismatch.
StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request);

// Human-readable summary for `scalemoe inspect --checkpoint DIR`: step,
// layout, tensors (dtype, global shape, slice, bytes), and each file's size
// and checksum status (OK / BAD with the reason). Errors only when the
// manifest itself cannot be read.
StatusOr<std::string> DescribeCheckpoint(const std::string& dir);

// XXH64 hex over the sorted "name[shape]" list: identifies a model's
// parameter set independent of order and layout.
std::string ModelFingerprint(std::vector<std::pair<std::string, Shape>> tensors);

}  // namespace scalemoe::checkpoint
