// TensorBoard scalar logging without TensorFlow: writes the TFRecord-framed
// event file (events.out.tfevents.<time>.<host>) that TensorBoard reads, and
// the CRC32C (Castagnoli) it frames records with. Rank 0 owns the writer.
//
// Record framing: uint64 length (little-endian), uint32 masked CRC32C of
// those 8 bytes, `length` bytes of serialized Event, uint32 masked CRC32C of
// the data; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "core/status.h"

namespace scalemoe {

// CRC32C of `size` bytes, continuing from `crc` (0 to start).
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);
inline uint32_t Crc32c(const void* data, size_t size) { return Crc32cExtend(0, data, size); }
// The TFRecord masking of a CRC (so CRCs of data holding CRCs stay useful).
uint32_t MaskCrc32c(uint32_t crc);

// Appends scalar summaries to one new event file. Records are buffered by
// stdio; Flush (also called by the destructor) makes them visible to
// TensorBoard. Not thread-safe.
class TensorBoardWriter {
 public:
  // Creates `log_dir` if needed and a new event file in it (never reuses an
  // existing file: a resumed run adds a second file, which TensorBoard merges).
  // Writes the file_version record first.
  static StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& log_dir);

  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
  ~TensorBoardWriter();

  // One Event at `step` holding the scalar `value` (stored as float) under `tag`.
  Status AddScalar(const std::string& tag, int64_t step, double value);
  Status Flush();

  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}
  // Frames `data` as one record.
  Status WriteRecord(const std::string& data);

  std::string path_;  // the event file
  std::FILE* file_;   // owned; closed by the destructor
};

}  // namespace scalemoe
