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
// Multi-rank save (all ranks see the same file system): every rank writes
// only the slices its request lists into the same tmp dir (rank 0 creates it
// and broadcasts its name), fsyncs its rank_RRRRR.safetensors and a manifest
// fragment; rank 0 merges the fragments, checks that the slices of every
// global tensor tile it exactly once, writes the manifest, renames and
// writes COMPLETE. An ok flag is all-reduced after each phase, so a failure
// on any rank makes every rank return an error and nothing is committed.
//
// Resharding load: a target names any box (global shape + slice start + its
// own shape) of a global tensor; it is assembled from every stored shard that
// intersects it, whatever layout wrote them. Optimizer state is stored under
// its parameter's global shape; a ZeRO-1 shard (a flat range of a rank's
// (E)TP slice) becomes a few boxes of it (optim/optimizer_state.h
// StateBoxes), so a change of tp, dp or zero stage reshards it like the
// parameter itself. One rank may save (and load) several boxes of one
// tensor: in its file the first is stored under the name, the others under
// "<name>#<k>" (TensorEntry.key).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {
class Communicator;
}  // namespace scalemoe

namespace scalemoe::checkpoint {

// What a tensor is to the checkpoint. kModel tensors define the model
// fingerprint and must all be loaded; kState tensors (optimizer moments and
// the like) are loaded only when the caller asks for them.
enum class TensorRole { kModel = 0, kState = 1 };

// One rank's piece of one global tensor. On save `tensor` is read; on load it
// is the destination (its shape must equal the slice, dtype equal to the
// stored one or f32 <-> bf16). A request may list several pieces of one name
// with different slice starts.
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
  // Any bytes; stored in blobs.json. Global state: only rank 0's are stored.
  std::map<std::string, std::string> blobs;
  // Complete checkpoints to keep after this save (the one just written always
  // stays, and so does step_0, the initial weights); 0 keeps all.
  int keep_last = 0;
};

// Saves per the commit protocol above. Fails (deleting nothing of earlier
// checkpoints) if step_N already exists complete, on I/O errors, and on bad
// requests (duplicate names, slices outside the global shape).
// Multi-rank: every rank of `world` calls it with its own request (rank ==
// world->rank(), layout.world_size == world->size()); the caller decides
// which replica saves a replicated tensor (each element exactly once over
// all ranks, else InvalidArgument naming the tensor). Returns on every rank
// only after rank 0 committed (or every rank failed). world == nullptr: a
// world of one.
Status SaveCheckpoint(const SaveRequest& request);
Status SaveCheckpoint(const SaveRequest& request, Communicator* world);

// <root>/checkpoints/step_N with the largest N that has COMPLETE; NotFound
// when there is none.
StatusOr<std::string> LatestCheckpoint(const std::string& root);

struct LoadRequest {
  // Destinations: any box of a global tensor (see NamedTensor). Every kModel
  // tensor of the checkpoint must be among the targets (of all ranks, with
  // a world: the fingerprint is over the union of every rank's kModel names
  // and global shapes); kState targets are filled only if listed.
  std::vector<NamedTensor> targets;
};

struct LoadedCheckpoint {
  int64_t step = 0;
  std::string config_text;
  CheckpointLayout layout;
  std::map<std::string, std::string> blobs;
};

// Verifies COMPLETE, the manifest, the size and checksum of every file it
// reads, the model fingerprint and every target's shape and dtype, staging all data in
// memory; only when everything passed are the targets written. On error no
// target has been touched and the Status names the file or tensor and the
// mismatch.
// Only the rank files that intersect this rank's targets are read. With a
// world, every rank of it must call this; no rank writes its targets unless
// every rank's checks passed.
StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request);
StatusOr<LoadedCheckpoint> LoadCheckpoint(const std::string& dir, const LoadRequest& request,
                                          Communicator* world);

// Human-readable summary for `scalemoe inspect --checkpoint DIR`: step,
// layout, tensors (dtype, global shape, slice, bytes), and each file's size
// and checksum status (OK / BAD with the reason). Errors only when the
// manifest itself cannot be read; `bad_files` (optional) receives how many
// files are BAD, i.e. whether the checkpoint can be loaded.
StatusOr<std::string> DescribeCheckpoint(const std::string& dir, int* bad_files = nullptr);

// The resolved RunConfig (text format) a complete checkpoint was saved with.
StatusOr<std::string> CheckpointConfigText(const std::string& dir);

// XXH64 hex over the sorted "name[shape]" list: identifies a model's
// parameter set independent of order and layout.
std::string ModelFingerprint(std::vector<std::pair<std::string, Shape>> tensors);

}  // namespace scalemoe::checkpoint
