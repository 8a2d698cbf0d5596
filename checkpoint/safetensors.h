// Writer and reader of the safetensors format (huggingface/safetensors):
//   8 bytes   little-endian u64 N = header length
//   N bytes   JSON {name: {"dtype", "shape", "data_offsets": [begin, end]},
//                   "__metadata__": {str: str}}, space-padded so that the
//             data section starts 8-byte aligned
//   rest      raw little-endian tensor bytes; offsets are relative to the
//             start of the data section, contiguous with no holes.
// The writer orders tensors by element size (largest first), then name, so
// every tensor is aligned to its element size, as the reference writer does.
// The reader trusts nothing: every failure is a Status naming the file and
// the problem.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::checkpoint {

// "F32", "F64", "BF16", "I32", "I64".
const char* SafetensorsDTypeName(DType dtype);
StatusOr<DType> ParseSafetensorsDType(const std::string& name);

// Size and XXH64 of a file written or read whole.
struct FileDigest {
  int64_t bytes = 0;
  uint64_t xxh64 = 0;
};

// Writes `tensors` (CPU or CUDA, any strides; names unique and non-empty)
// to `path`, fsyncs the file and returns its size and checksum. Does not
// fsync the directory: the caller commits directories.
StatusOr<FileDigest> WriteSafetensors(
    const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata);

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
};

// A whole safetensors file held in memory, validated on construction.
class SafetensorsFile {
 public:
  // Reads and validates `path`; digest() is the XXH64 of the raw file bytes,
  // computed while reading (so a checksum check costs no second pass).
  static StatusOr<SafetensorsFile> Read(const std::string& path);
  // Validates `size` bytes at `data` (shared so views stay valid); `path`
  // only names the file in errors.
  static StatusOr<SafetensorsFile> Parse(const std::string& path,
                                         std::shared_ptr<const unsigned char> data,
                                         size_t size, uint64_t xxh64);

  const std::string& path() const { return path_; }
  const FileDigest& digest() const { return digest_; }
  // Sorted by data offset.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* Find(const std::string& name) const;  // nullptr if absent

  // CPU tensor of entry `name`: a view into this file's buffer when aligned
  // (valid while this SafetensorsFile or a copy of it lives), else a copy.
  StatusOr<Tensor> Get(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const unsigned char> data_;
  size_t data_start_ = 0;  // 8 + header length
  FileDigest digest_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace scalemoe::checkpoint
