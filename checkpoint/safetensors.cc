#include "checkpoint/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>

#include "checkpoint/checkpoint_files.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping");

constexpr char kMetadataKey[] = "__metadata__";

Status Corrupt(const std::string& path, const std::string& problem) {
  return absl::DataLossError(
      absl::StrCat("safetensors file ", path, ": ", problem,
                   "; the file is truncated or corrupt (re-save it, or load an older checkpoint)"));
}

// Host copy of a tensor, contiguous, so its bytes can be written as they lie.
StatusOr<Tensor> ContiguousHost(const std::string& name, const Tensor& t) {
  if (t.device() == Device::kCPU) return t.is_contiguous() ? t : t.Clone();
  if (!t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' is a non-contiguous device tensor; Clone() it before saving"));
  }
  SM_ASSIGN_OR_RETURN(Tensor host, Tensor::TryEmpty(t.shape(), t.dtype(), Device::kCPU));
  host.CopyFrom(t);
  return host;
}

}  // namespace

const char* SafetensorsDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kBF16: return "BF16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

StatusOr<DType> ParseSafetensorsDType(const std::string& name) {
  for (DType d : {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64}) {
    if (name == SafetensorsDTypeName(d)) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported safetensors dtype '", name, "' (supported: F32, F64, BF16, I32, I64)"));
}

StatusOr<FileDigest> WriteSafetensors(
    const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> order;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == kMetadataKey) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot write ", path, ": tensor name '", name, "' is reserved or empty"));
    }
    if (!t.defined()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor '", name, "' is undefined"));
    }
    if (!names.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": tensor name '", name, "' appears twice"));
    }
    SM_ASSIGN_OR_RETURN(Tensor host, ContiguousHost(name, t));
    order.emplace_back(name, host);
  }
  // Largest element first keeps every tensor aligned to its element size.
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    size_t sa = DTypeSize(a.second.dtype()), sb = DTypeSize(b.second.dtype());
    return sa != sb ? sa > sb : a.first < b.first;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    header[name] = {{"dtype", SafetensorsDTypeName(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write ", path, ": tensor names and metadata must be UTF-8 (", e.what(), ")"));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint64_t header_len = header_text.size();

  SM_ASSIGN_OR_RETURN(FileWriter writer, FileWriter::Create(path));
  SM_RETURN_IF_ERROR(writer.Write(&header_len, sizeof header_len));
  SM_RETURN_IF_ERROR(writer.Write(header_text.data(), header_text.size()));
  for (const auto& [name, t] : order) {
    SM_RETURN_IF_ERROR(writer.Write(t.raw_data(), t.nbytes()));
  }
  return writer.Finish();
}

StatusOr<SafetensorsFile> SafetensorsFile::Read(const std::string& path) {
  SM_ASSIGN_OR_RETURN(FileBytes bytes, ReadWholeFile(path));
  return Parse(path, bytes.data, bytes.size, bytes.xxh64);
}

StatusOr<SafetensorsFile> SafetensorsFile::Parse(const std::string& path,
                                                 std::shared_ptr<const unsigned char> data,
                                                 size_t size, uint64_t xxh64) {
  SafetensorsFile file;
  file.path_ = path;
  file.data_ = std::move(data);
  file.digest_ = {static_cast<int64_t>(size), xxh64};
  if (size < 8) {
    return Corrupt(path, absl::StrCat("only ", size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, file.data_.get(), 8);
  if (header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the ",
                                      size - 8, " bytes after the length field"));
  }
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = size - file.data_start_;

  nlohmann::json header;
  try {
    const char* text = reinterpret_cast<const char*>(file.data_.get() + 8);
    header = nlohmann::json::parse(text, text + header_len);
  } catch (const nlohmann::json::exception& e) {
    return Corrupt(path, absl::StrCat("header is not valid JSON (", e.what(), ")"));
  }
  if (!header.is_object()) return Corrupt(path, "header is not a JSON object");

  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) return Corrupt(path, "__metadata__ is not an object");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return Corrupt(path, absl::StrCat("__metadata__ value of '", mk, "' is not a string"));
        }
        file.metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", key, "'");
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") ||
        !value.contains("data_offsets")) {
      return Corrupt(path, absl::StrCat(where, " lacks dtype, shape or data_offsets"));
    }
    SafetensorsEntry entry;
    entry.name = key;
    if (!value["dtype"].is_string()) return Corrupt(path, absl::StrCat(where, ": dtype is not a string"));
    StatusOr<DType> dtype = ParseSafetensorsDType(value["dtype"].get<std::string>());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", where, ": ",
                                                     dtype.status().message()));
    }
    entry.dtype = *dtype;
    const auto& shape = value["shape"];
    if (!shape.is_array()) return Corrupt(path, absl::StrCat(where, ": shape is not an array"));
    // Element count in 128 bits: a hostile shape must not wrap around.
    unsigned __int128 bytes = DTypeSize(entry.dtype);
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) {
        return Corrupt(path, absl::StrCat(where, ": shape entry ", d.dump(), " is not a non-negative integer"));
      }
      uint64_t dim = d.get<uint64_t>();
      bytes *= dim;
      if (bytes > (static_cast<unsigned __int128>(1) << 62) ) {
        return Corrupt(path, absl::StrCat(where, ": shape ", shape.dump(), " is absurdly large"));
      }
      entry.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return Corrupt(path, absl::StrCat(where, ": data_offsets ", offsets.dump(),
                                        " is not a pair of non-negative integers"));
    }
    entry.begin = offsets[0].get<uint64_t>();
    entry.end = offsets[1].get<uint64_t>();
    if (entry.begin > entry.end || entry.end > data_size) {
      return Corrupt(path, absl::StrCat(where, ": data_offsets [", entry.begin, ", ", entry.end,
                                        "] out of range of the ", data_size, "-byte data section"));
    }
    if (entry.end - entry.begin != static_cast<uint64_t>(bytes)) {
      return Corrupt(path, absl::StrCat(where, ": ", SafetensorsDTypeName(entry.dtype), " shape ",
                                        ShapeString(entry.shape), " needs ", static_cast<uint64_t>(bytes),
                                        " bytes but data_offsets span ", entry.end - entry.begin));
    }
    file.entries_.push_back(std::move(entry));
  }

  // The format requires the tensors to tile the data section exactly.
  std::sort(file.entries_.begin(), file.entries_.end(),
            [](const auto& a, const auto& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected = 0;
  for (const SafetensorsEntry& e : file.entries_) {
    if (e.begin < expected) {
      return Corrupt(path, absl::StrCat("tensor '", e.name, "' at [", e.begin, ", ", e.end,
                                        ") overlaps the previous tensor ending at ", expected));
    }
    if (e.begin > expected) {
      return Corrupt(path, absl::StrCat("gap of ", e.begin - expected, " bytes before tensor '",
                                        e.name, "'"));
    }
    expected = e.end;
  }
  if (expected != data_size) {
    return Corrupt(path, absl::StrCat("tensors cover ", expected, " bytes but the data section has ",
                                      data_size));
  }
  return file;
}

const SafetensorsEntry* SafetensorsFile::Find(const std::string& name) const {
  for (const SafetensorsEntry& e : entries_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  const SafetensorsEntry* e = Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat("safetensors file ", path_, " has no tensor '", name, "'"));
  }
  const unsigned char* p = data_.get() + data_start_ + e->begin;
  if (reinterpret_cast<uintptr_t>(p) % DTypeSize(e->dtype) == 0) {
    return Tensor::FromBlob(const_cast<unsigned char*>(p), e->shape, e->dtype, Device::kCPU);
  }
  SM_ASSIGN_OR_RETURN(Tensor copy, Tensor::TryEmpty(e->shape, e->dtype, Device::kCPU));
  std::memcpy(copy.raw_data(), p, e->end - e->begin);
  return copy;
}

}  // namespace scalemoe::checkpoint
