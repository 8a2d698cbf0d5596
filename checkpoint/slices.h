// Internal to checkpoint/: N-d boxes of global tensors. A stored shard and a
// load target are both a box (start, size) of one global tensor; save checks
// that the shards of each tensor tile it exactly, load assembles a target
// from every shard that intersects it.
#pragma once

#include <optional>
#include <string>

#include "checkpoint/manifest.pb.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::checkpoint {

struct Box {
  Shape start;
  Shape size;
};

// The box of a manifest entry.
Box EntryBox(const TensorEntry& entry);
// The key of a manifest entry's data in its safetensors file.
const std::string& EntryKey(const TensorEntry& entry);
int64_t Volume(const Box& box);
// Intersection of two boxes of the same rank; nullopt when empty.
std::optional<Box> Intersect(const Box& a, const Box& b);
// "[0:4, 2:6]".
std::string BoxString(const Box& box);

// Checks that, for every tensor name of the manifest, all entries agree on
// global shape, dtype and role, lie inside the global shape and tile it
// exactly once (no gap, no overlap). The error names the tensor, the files
// and the boxes.
Status ValidateTiling(const CheckpointManifest& manifest);

// Copies the region `box` (global coordinates) from `src`, which holds the
// box at `src_start`, into `dst`, which holds the box at `dst_start`. CPU
// tensors; f32 <-> bf16 conversion allowed.
void CopyBox(const Tensor& src, const Shape& src_start, const Tensor& dst,
             const Shape& dst_start, const Box& box);

}  // namespace scalemoe::checkpoint
