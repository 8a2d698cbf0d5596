// metrics.jsonl writer/reader and the progress-line formatting.
#include "launch/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/str_format.h"

namespace scalemoe {

StatusOr<std::unique_ptr<MetricsWriter>> MetricsWriter::Open(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", run_dir, ": ",
                                                    ec.message(), "; choose a writable --run-dir"));
  }
  std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (file == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot open ", path, " for appending: ", std::strerror(errno)));
  }
  return std::unique_ptr<MetricsWriter>(new MetricsWriter(std::move(path), file));
}

MetricsWriter::~MetricsWriter() { std::fclose(file_); }

Status MetricsWriter::Write(const nlohmann::json& record) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics record ", record.dump(), " for ", path_,
                     " must be a JSON object with an integer \"step\""));
  }
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return absl::DataLossError(
        absl::StrCat("cannot write to ", path_, ": ", std::strerror(errno), " (disk full?)"));
  }
  return absl::OkStatus();
}

Status DropMetricsAfter(const std::string& run_dir, int64_t step) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::OkStatus();  // nothing logged yet
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string kept;
  int64_t dropped = 0;
  for (size_t begin = 0; begin < text.size();) {
    const size_t nl = text.find('\n', begin);
    if (nl == std::string::npos) {  // a record cut short by a crash
      ++dropped;
      break;
    }
    const std::string line = text.substr(begin, nl - begin);
    begin = nl + 1;
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool later = record.is_object() && record.contains("step") &&
                       record["step"].is_number_integer() && record["step"].get<int64_t>() > step;
    if (later) {
      ++dropped;
    } else {
      kept += line + "\n";
    }
  }
  if (dropped == 0) return absl::OkStatus();
  const std::string tmp = path + ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  bool ok = out != nullptr;
  if (ok) ok = std::fwrite(kept.data(), 1, kept.size(), out) == kept.size();
  if (ok) ok = std::fflush(out) == 0 && ::fsync(::fileno(out)) == 0;
  if (out != nullptr) ok = std::fclose(out) == 0 && ok;
  std::error_code ec;
  if (ok) std::filesystem::rename(tmp, path, ec);
  if (!ok || ec) {
    const std::string why = ec ? ec.message() : std::strerror(errno);
    std::filesystem::remove(tmp, ec);
    return absl::DataLossError(absl::StrCat("cannot drop the records after step ", step, " from ",
                                            path, " for the resume: ", why, " (disk full?); ",
                                            path, " is unchanged"));
  }
  return absl::OkStatus();
}

StatusOr<std::vector<nlohmann::json>> ReadMetricsFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open metrics file ", path));
  std::vector<nlohmann::json> records;
  std::string line;
  for (int line_number = 1; std::getline(in, line); ++line_number) {
    if (line.empty()) continue;
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded()) {
      return absl::DataLossError(
          absl::StrCat(path, ":", line_number, ": not a JSON object (truncated write?)"));
    }
    records.push_back(std::move(record));
  }
  return records;
}

std::string FormatCount(double value) {
  if (!std::isfinite(value)) return "--";
  static constexpr const char* kSuffixes[] = {"", "k", "M", "G", "T"};
  size_t unit = 0;
  // Move up a unit while three significant figures would round to >= 1000.
  while (std::fabs(value) >= 999.5 && unit + 1 < std::size(kSuffixes)) {
    value /= 1000;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%.0f", value);
  const double magnitude = std::fabs(value);
  const int decimals = magnitude < 9.995 ? 2 : magnitude < 99.95 ? 1 : 0;
  return absl::StrFormat("%.*f%s", decimals, value, kSuffixes[unit]);
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--";
  const int64_t s = std::llround(seconds);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, (s % 86400) / 3600);
}

std::string ProgressLine::ToString() const {
  return absl::StrFormat("step %d/%d | loss %.3f | lr %.1e | gnorm %.2f | %s tok/s | ETA %s", step,
                         total_steps, loss, lr, grad_norm, FormatCount(tokens_per_second),
                         FormatDuration(eta_seconds));
}

}  // namespace scalemoe
