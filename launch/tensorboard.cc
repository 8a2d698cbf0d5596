// TensorBoard event-file writer and CRC32C.
#include "launch/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "launch/tensorboard_event.pb.h"

namespace scalemoe {
namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;
constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ kCastagnoliReflected : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

void AppendLittleEndian(uint64_t value, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

double WallTimeSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (size_t i = 0; i < size; ++i) c = kCrcTable[(c ^ bytes[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + kCrcMaskDelta; }

StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create TensorBoard directory ", log_dir, ": ", ec.message()));
  }
  const std::string base =
      (std::filesystem::path(log_dir) /
       absl::StrCat("events.out.tfevents.", std::time(nullptr), ".", HostName()))
          .string();
  // "x": never append to (or clobber) a file a writer opened in the same second.
  std::string path = base;
  std::FILE* file = std::fopen(path.c_str(), "wbx");
  for (int suffix = 1; file == nullptr && errno == EEXIST && suffix < 1000; ++suffix) {
    path = absl::StrCat(base, ".", suffix);
    file = std::fopen(path.c_str(), "wbx");
  }
  if (file == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create event file ", path, ": ", std::strerror(errno)));
  }
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path, file));
  tensorboard::Event event;
  event.set_wall_time(WallTimeSeconds());
  event.set_file_version("brain.Event:2");
  SM_RETURN_IF_ERROR(writer->WriteRecord(event.SerializeAsString()));
  SM_RETURN_IF_ERROR(writer->Flush());
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() { std::fclose(file_); }

Status TensorBoardWriter::AddScalar(const std::string& tag, int64_t step, double value) {
  tensorboard::Event event;
  event.set_wall_time(WallTimeSeconds());
  event.set_step(step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  return WriteRecord(event.SerializeAsString());
}

Status TensorBoardWriter::Flush() {
  if (std::fflush(file_) != 0) {
    return absl::DataLossError(absl::StrCat("cannot flush ", path_, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

Status TensorBoardWriter::WriteRecord(const std::string& data) {
  std::string record;
  record.reserve(data.size() + 16);
  AppendLittleEndian(data.size(), 8, &record);
  AppendLittleEndian(MaskCrc32c(Crc32c(record.data(), 8)), 4, &record);
  record += data;
  AppendLittleEndian(MaskCrc32c(Crc32c(data.data(), data.size())), 4, &record);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    return absl::DataLossError(
        absl::StrCat("cannot write to ", path_, ": ", std::strerror(errno), " (disk full?)"));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
