// Tests for launch/tensorboard.h. TensorBoard itself is not available, so
// the file is checked by an independent reader written here: the TFRecord
// framing with a bit-at-a-time CRC32C (not the writer's table), and a
// hand-written protobuf wire decoder that checks the field numbers and wire
// types TensorBoard expects, besides parsing with the generated classes.
#include "launch/tensorboard.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/tensorboard_event.pb.h"

namespace scalemoe {
namespace {

// Reference CRC32C, one bit at a time (RFC 3720, reflected 0x82F63B78).
uint32_t BitwiseCrc32c(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
  }
  return ~crc;
}

uint32_t Unmask(uint32_t masked) {
  const uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

uint64_t ReadLittleEndian(const std::string& bytes, size_t offset, int width) {
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) {
    value = (value << 8) | static_cast<unsigned char>(bytes[offset + i]);
  }
  return value;
}

TEST(Crc32cTest, KnownVectors) {
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(digits.data(), digits.size()), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  // RFC 3720, appendix B.4.
  std::string zeros(32, '\0'), ones(32, '\xff'), ascending(32, 0), descending(32, 0);
  for (int i = 0; i < 32; ++i) {
    ascending[i] = static_cast<char>(i);
    descending[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(ascending.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(descending.data(), 32), 0x113FDB5Cu);
  EXPECT_EQ(BitwiseCrc32c(digits), 0xE3069283u);
  EXPECT_EQ(BitwiseCrc32c(ascending), 0x46DD794Eu);
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  const std::string text = "the quick brown fox jumps over the lazy dog";
  const uint32_t head = Crc32c(text.data(), 10);
  EXPECT_EQ(Crc32cExtend(head, text.data() + 10, text.size() - 10),
            Crc32c(text.data(), text.size()));
}

TEST(Crc32cTest, MaskIsTheTfRecordRotation) {
  const uint32_t crc = 0xE3069283u;
  EXPECT_EQ(MaskCrc32c(crc), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
  EXPECT_NE(MaskCrc32c(crc), crc);
  EXPECT_EQ(Unmask(MaskCrc32c(crc)), crc);
}

// One protobuf field as seen on the wire.
struct WireField {
  int wire_type;
  uint64_t number_value;  // varint, fixed64 or fixed32 payload
  std::string bytes;      // length-delimited payload
};

// Decodes a message into field number -> occurrences; fails the test on
// malformed input.
std::multimap<int, WireField> DecodeWire(const std::string& data) {
  std::multimap<int, WireField> fields;
  size_t pos = 0;
  auto varint = [&]() {
    uint64_t v = 0;
    for (int shift = 0; pos < data.size(); shift += 7) {
      const auto b = static_cast<unsigned char>(data[pos++]);
      v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return v;
    }
    ADD_FAILURE() << "truncated varint";
    return v;
  };
  while (pos < data.size()) {
    const uint64_t key = varint();
    WireField f{static_cast<int>(key & 7), 0, ""};
    switch (f.wire_type) {
      case 0:
        f.number_value = varint();
        break;
      case 1:
        f.number_value = ReadLittleEndian(data, pos, 8);
        pos += 8;
        break;
      case 5:
        f.number_value = ReadLittleEndian(data, pos, 4);
        pos += 4;
        break;
      case 2: {
        const uint64_t n = varint();
        f.bytes = data.substr(pos, n);
        pos += n;
        break;
      }
      default:
        ADD_FAILURE() << "unexpected wire type " << f.wire_type;
        return fields;
    }
    fields.emplace(static_cast<int>(key >> 3), f);
  }
  EXPECT_EQ(pos, data.size()) << "field overran the message";
  return fields;
}

// Splits a TFRecord file into its payloads, checking both masked CRCs.
std::vector<std::string> ReadRecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> records;
  size_t pos = 0;
  while (pos < file.size()) {
    EXPECT_GE(file.size() - pos, 12u) << "truncated header at byte " << pos;
    if (file.size() - pos < 12) break;
    const uint64_t length = ReadLittleEndian(file, pos, 8);
    EXPECT_EQ(ReadLittleEndian(file, pos + 8, 4), MaskCrc32c(BitwiseCrc32c(file.substr(pos, 8))))
        << "length CRC at byte " << pos;
    EXPECT_GE(file.size() - pos - 12, length + 4) << "truncated record at byte " << pos;
    if (file.size() - pos - 12 < length + 4) break;
    const std::string data = file.substr(pos + 12, length);
    EXPECT_EQ(Unmask(ReadLittleEndian(file, pos + 12 + length, 4)), BitwiseCrc32c(data))
        << "data CRC at byte " << pos;
    records.push_back(data);
    pos += 12 + length + 4;
  }
  return records;
}

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "tensorboard_test_" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

TEST(TensorBoardWriterTest, ScalarsReadBackThroughFramingAndWireFormat) {
  const std::string dir = FreshDir("scalars");
  std::string path;
  {
    StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(dir);
    ASSERT_TRUE(w.ok()) << w.status();
    path = (*w)->path();
    ASSERT_TRUE((*w)->AddScalar("train/loss", 1, 4.5).ok());
    ASSERT_TRUE((*w)->AddScalar("train/loss", 2, 4.25).ok());
    ASSERT_TRUE((*w)->AddScalar("train/lr", 2, 1e-3).ok());
    ASSERT_TRUE((*w)->AddScalar("moe/dropped", 3, 0.0).ok());
    ASSERT_TRUE((*w)->Flush().ok());
  }
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  const std::string name = std::filesystem::path(path).filename().string();
  EXPECT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
  EXPECT_THAT(name, ::testing::HasSubstr(host));

  const std::vector<std::string> records = ReadRecords(path);
  ASSERT_EQ(records.size(), 5u);

  // First record: wall_time (field 1, fixed64) and file_version (field 3).
  auto first = DecodeWire(records[0]);
  ASSERT_EQ(first.count(1), 1u);
  EXPECT_EQ(first.find(1)->second.wire_type, 1);
  double wall_time;
  const uint64_t bits = first.find(1)->second.number_value;
  std::memcpy(&wall_time, &bits, sizeof(wall_time));
  EXPECT_GT(wall_time, 1.6e9);
  ASSERT_EQ(first.count(3), 1u);
  EXPECT_EQ(first.find(3)->second.wire_type, 2);
  EXPECT_EQ(first.find(3)->second.bytes, "brain.Event:2");

  struct Expected {
    std::string tag;
    int64_t step;
    float value;
  };
  const std::vector<Expected> expected = {{"train/loss", 1, 4.5f},
                                          {"train/loss", 2, 4.25f},
                                          {"train/lr", 2, 1e-3f},
                                          {"moe/dropped", 3, 0.0f}};
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(i);
    const std::string& data = records[i + 1];
    // Wire level: step (field 2, varint), summary (field 5) -> value (field 1)
    // -> tag (field 1, bytes) and simple_value (field 2, fixed32).
    auto event = DecodeWire(data);
    ASSERT_EQ(event.count(2), 1u);
    EXPECT_EQ(event.find(2)->second.wire_type, 0);
    EXPECT_EQ(static_cast<int64_t>(event.find(2)->second.number_value), expected[i].step);
    ASSERT_EQ(event.count(5), 1u);
    EXPECT_EQ(event.find(5)->second.wire_type, 2);
    auto summary = DecodeWire(event.find(5)->second.bytes);
    ASSERT_EQ(summary.count(1), 1u);
    auto value = DecodeWire(summary.find(1)->second.bytes);
    ASSERT_EQ(value.count(1), 1u);
    EXPECT_EQ(value.find(1)->second.bytes, expected[i].tag);
    ASSERT_EQ(value.count(2), 1u) << "simple_value must be written even when 0";
    EXPECT_EQ(value.find(2)->second.wire_type, 5);
    float v;
    const auto raw = static_cast<uint32_t>(value.find(2)->second.number_value);
    std::memcpy(&v, &raw, sizeof(v));
    EXPECT_EQ(v, expected[i].value);

    // And through the generated classes.
    tensorboard::Event parsed;
    ASSERT_TRUE(parsed.ParseFromString(data));
    EXPECT_EQ(parsed.step(), expected[i].step);
    ASSERT_EQ(parsed.summary().value_size(), 1);
    EXPECT_EQ(parsed.summary().value(0).tag(), expected[i].tag);
    EXPECT_TRUE(parsed.summary().value(0).has_simple_value());
    EXPECT_EQ(parsed.summary().value(0).simple_value(), expected[i].value);
    EXPECT_GE(parsed.wall_time(), wall_time);
  }
}

TEST(TensorBoardWriterTest, FlushMakesRecordsVisibleWhileOpen) {
  StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(FreshDir("flush"));
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->AddScalar("loss", 10, 3.0).ok());
  ASSERT_TRUE((*w)->Flush().ok());
  EXPECT_EQ(ReadRecords((*w)->path()).size(), 2u);
}

TEST(TensorBoardWriterTest, SecondWriterInSameDirectoryGetsItsOwnFile) {
  const std::string dir = FreshDir("two");
  auto a = TensorBoardWriter::Open(dir);
  auto b = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->path(), (*b)->path());
  ASSERT_TRUE((*a)->AddScalar("x", 1, 1.0).ok());
  ASSERT_TRUE((*a)->Flush().ok());
  EXPECT_EQ(ReadRecords((*a)->path()).size(), 2u);
  EXPECT_EQ(ReadRecords((*b)->path()).size(), 1u);
}

TEST(TensorBoardWriterTest, UncreatableDirectoryIsAnError) {
  const std::string file = FreshDir("blocker");
  std::ofstream(file) << "not a directory";
  auto w = TensorBoardWriter::Open(file + "/tb");
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), ::testing::HasSubstr(file));
}

}  // namespace
}  // namespace scalemoe
