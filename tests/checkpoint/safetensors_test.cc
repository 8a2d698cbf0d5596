#include "checkpoint/safetensors.h"

#include <cstdio>
#include <fstream>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/python.h"
#include "nlohmann/json.hpp"
#include "tests/checkpoint/temp_dir.h"

namespace scalemoe::checkpoint {
namespace {

using ::testing::HasSubstr;

Tensor Iota(const Shape& shape, DType dtype, double scale) {
  std::vector<double> v(NumElements(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = scale * (static_cast<double>(i) - 3.0);
  return Tensor::FromVector(shape, v, dtype);
}

std::vector<std::pair<std::string, Tensor>> Mixed() {
  return {{"w.bf16", Iota({3, 5}, DType::kBF16, 0.5)},
          {"w.f64", Iota({2, 3}, DType::kF64, 0.125)},
          {"a.f32", Iota({7}, DType::kF32, 1.5)},
          {"n.i64", Iota({2, 2}, DType::kI64, 1e12)},
          {"c.i32", Iota({3}, DType::kI32, 7)},
          {"scalar", Iota({}, DType::kF32, -1)}};
}

// Writes a hand-made file: 8-byte length, header text, data.
void WriteRaw(const std::string& path, const std::string& header, const std::string& data,
              int64_t length_override = -1) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = length_override >= 0 ? static_cast<uint64_t>(length_override) : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  std::string File(const std::string& name) { return dir_.path() + "/" + name; }
  testing::TempDir dir_;
};

TEST_F(SafetensorsTest, RoundTripsEveryDTypeAndMetadata) {
  const std::string path = File("t.safetensors");
  auto tensors = Mixed();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  StatusOr<SafetensorsFile> file = SafetensorsFile::Read(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    StatusOr<Tensor> got = file->Get(name);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dtype(), t.dtype()) << name;
    EXPECT_EQ(got->shape(), t.shape()) << name;
    EXPECT_EQ(got->ToVector(), t.ToVector()) << name;
    // Largest element first: every tensor is aligned to its element size.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got->raw_data()) % DTypeSize(t.dtype()), 0u) << name;
  }
}

TEST_F(SafetensorsTest, HeaderIsPaddedSoDataStartsEightByteAligned) {
  const std::string path = File("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"x", Iota({1}, DType::kF32, 1)}}, {}).ok());
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST_F(SafetensorsTest, WritesNonContiguousTensorsAsTheirLogicalValues) {
  Tensor full = Iota({4, 6}, DType::kF32, 1);
  Tensor cols = full.Narrow(1, 2, 3);  // strided view
  const std::string path = File("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"cols", cols}}, {}).ok());
  StatusOr<SafetensorsFile> file = SafetensorsFile::Read(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->Get("cols")->ToVector(), cols.ToVector());
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateAndReservedNames) {
  Tensor t = Iota({2}, DType::kF32, 1);
  EXPECT_THAT(WriteSafetensors(File("a"), {{"x", t}, {"x", t}}, {}).status().message(),
              HasSubstr("'x' appears twice"));
  EXPECT_THAT(WriteSafetensors(File("b"), {{"__metadata__", t}}, {}).status().message(),
              HasSubstr("reserved"));
}

TEST_F(SafetensorsTest, ReaderNamesFileWhenHeaderLengthExceedsFile) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path, "{}", "", /*length_override=*/1000);
  Status s = SafetensorsFile::Read(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("header length 1000 exceeds"));
}

TEST_F(SafetensorsTest, ReaderRejectsTinyFile) {
  const std::string path = File("tiny.safetensors");
  std::ofstream(path) << "abc";
  EXPECT_THAT(SafetensorsFile::Read(path).status().message(), HasSubstr("only 3 bytes"));
}

TEST_F(SafetensorsTest, ReaderRejectsInvalidJson) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path, "{not json", "");
  EXPECT_THAT(SafetensorsFile::Read(path).status().message(), HasSubstr("not valid JSON"));
}

TEST_F(SafetensorsTest, ReaderRejectsUnknownDType) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path, R"({"x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", "ab");
  Status s = SafetensorsFile::Read(path).status();
  EXPECT_THAT(s.message(), HasSubstr("unsupported safetensors dtype 'F16'"));
  EXPECT_THAT(s.message(), HasSubstr("tensor 'x'"));
}

TEST_F(SafetensorsTest, ReaderRejectsShapeThatDisagreesWithByteLength) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path, R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_THAT(SafetensorsFile::Read(path).status().message(),
              HasSubstr("tensor 'x': F32 shape [3] needs 12 bytes but data_offsets span 8"));
}

TEST_F(SafetensorsTest, ReaderRejectsOffsetsOutOfRange) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path, R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234");
  EXPECT_THAT(SafetensorsFile::Read(path).status().message(), HasSubstr("out of range"));
}

TEST_F(SafetensorsTest, ReaderRejectsOverlappingTensors) {
  const std::string path = File("bad.safetensors");
  WriteRaw(path,
           R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           "12345678");
  EXPECT_THAT(SafetensorsFile::Read(path).status().message(), HasSubstr("overlaps"));
}

TEST_F(SafetensorsTest, ReaderRejectsGapsAndTrailingBytes) {
  const std::string gap = File("gap.safetensors");
  WriteRaw(gap, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "12345678");
  EXPECT_THAT(SafetensorsFile::Read(gap).status().message(), HasSubstr("gap of 4 bytes"));
  const std::string trailing = File("trailing.safetensors");
  WriteRaw(trailing, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "12345678");
  EXPECT_THAT(SafetensorsFile::Read(trailing).status().message(),
              HasSubstr("cover 4 bytes but the data section has 8"));
}

TEST_F(SafetensorsTest, ReaderRejectsTruncatedFile) {
  const std::string path = File("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Mixed(), {}).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);
  Status s = SafetensorsFile::Read(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(path));
}

TEST_F(SafetensorsTest, ReaderReportsMissingFile) {
  EXPECT_EQ(SafetensorsFile::Read(File("nope")).status().code(), absl::StatusCode::kNotFound);
}

// The Python reader shares no code with ours: agreeing with it means we wrote
// the format, not just something our own reader accepts.
TEST_F(SafetensorsTest, IndependentPythonReaderAgrees) {
  const std::string python = scalemoe::testing::PythonWithNumpy();
  if (python.empty()) {
    GTEST_SKIP() << "no python3 with numpy (apt-get install python3-numpy)";
  }
  const std::string path = File("t.safetensors");
  auto tensors = Mixed();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());

  const std::string cmd = absl::StrCat(python, " ", SCALEMOE_SOURCE_DIR,
                                       "/scripts/read_safetensors.py ", path);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << cmd << "\n" << out;

  nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["metadata"]["format"], "pt");
  ASSERT_EQ(j["tensors"].size(), tensors.size());
  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  for (const auto& entry : j["tensors"]) {
    const std::string name = entry["name"];
    ASSERT_TRUE(by_name.count(name)) << name;
    const Tensor& t = by_name[name];
    EXPECT_EQ(entry["dtype"], SafetensorsDTypeName(t.dtype())) << name;
    EXPECT_EQ(entry["shape"].get<Shape>(), t.shape()) << name;
    std::vector<double> v = t.ToVector();
    const double sum = std::accumulate(v.begin(), v.end(), 0.0);
    EXPECT_NEAR(entry["sum"].get<double>(), sum, 1e-12 * (1 + std::abs(sum))) << name;
    EXPECT_EQ(entry["first"].get<double>(), v[0]) << name;
  }
}

}  // namespace
}  // namespace scalemoe::checkpoint
