// File primitives of the checkpoint module: a streaming writer that fsyncs
// and checksums, a whole-file reader that checksums while reading, directory
// fsync, and the names of the files inside a checkpoint directory. Every
// error names the path and the errno text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "checkpoint/safetensors.h"
#include "checkpoint/xxhash64.h"
#include "core/status.h"

namespace scalemoe::checkpoint {

// File names inside checkpoints/step_N/.
inline constexpr char kCheckpointsDir[] = "checkpoints";
inline constexpr char kManifestFile[] = "manifest.pb";
inline constexpr char kManifestTextFile[] = "manifest.txt";
inline constexpr char kBlobsFile[] = "blobs.json";
inline constexpr char kCompleteFile[] = "COMPLETE";
inline constexpr char kStepPrefix[] = "step_";
inline constexpr char kTmpPrefix[] = ".tmp-";
inline constexpr int kFormatVersion = 1;

// "rank_00003.safetensors".
std::string RankFileName(int rank);

// Creates (truncating) `path`; Write() appends and hashes; Finish() fsyncs
// and closes. Destroying an unfinished writer closes without fsync.
class FileWriter {
 public:
  static StatusOr<FileWriter> Create(const std::string& path);
  FileWriter(FileWriter&& other) noexcept;
  FileWriter& operator=(FileWriter&&) = delete;
  FileWriter(const FileWriter&) = delete;
  ~FileWriter();

  Status Write(const void* data, size_t size);
  StatusOr<FileDigest> Finish();

 private:
  FileWriter(std::string path, int fd);
  std::string path_;
  int fd_;
  FileDigest digest_;
  XxHash64 hasher_;
};

// Writes `content` to `path` with fsync.
StatusOr<FileDigest> WriteWholeFile(const std::string& path, const std::string& content);

// Bytes of a whole file (64-byte aligned) and their XXH64.
struct FileBytes {
  std::shared_ptr<const unsigned char> data;
  size_t size = 0;
  uint64_t xxh64 = 0;
};
StatusOr<FileBytes> ReadWholeFile(const std::string& path);

// fsync of a directory, so that entries created or renamed in it persist.
Status FsyncDirectory(const std::string& path);

}  // namespace scalemoe::checkpoint
