// Tests for launch/metrics.h: metrics.jsonl appending (and surviving a
// resume), record checks, and the progress-line formatting.
#include "launch/metrics.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "metrics_test_" + name;
  std::filesystem::remove_all(dir);
  return dir;
}

// A resume from step 3 drops what the stopped run logged after it (and a
// line cut short by its crash) and keeps the rest as it was.
TEST(MetricsWriterTest, DropMetricsAfterKeepsRecordsUpToTheCheckpoint) {
  const std::string dir = FreshDir("drop");
  EXPECT_TRUE(DropMetricsAfter(dir, 3).ok());  // no file yet: nothing to do
  std::filesystem::create_directories(dir);
  {
    std::ofstream out(dir + "/metrics.jsonl");
    for (int step = 1; step <= 5; ++step) out << nlohmann::json{{"step", step}}.dump() << "\n";
    out << "not a record\n" << R"({"step": 2, "val_loss": 4.0})" << "\n" << R"({"step": 6, "lo)";
  }
  ASSERT_TRUE(DropMetricsAfter(dir, 3).ok());
  StatusOr<std::vector<nlohmann::json>> records = ReadMetricsFile(dir + "/metrics.jsonl");
  EXPECT_FALSE(records.ok());  // the unreadable line is kept, not silently lost
  std::ifstream in(dir + "/metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  EXPECT_EQ(lines, (std::vector<std::string>{R"({"step":1})", R"({"step":2})", R"({"step":3})",
                                             "not a record", R"({"step": 2, "val_loss": 4.0})"}));
  EXPECT_FALSE(std::filesystem::exists(dir + "/metrics.jsonl.tmp"));
}

TEST(MetricsWriterTest, WritesOneFlushedObjectPerLine) {
  const std::string dir = FreshDir("lines");
  StatusOr<std::unique_ptr<MetricsWriter>> w = MetricsWriter::Open(dir + "/run");
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->Write({{"step", 1}, {"loss", 4.5}, {"lr", 3e-3}}).ok());
  ASSERT_TRUE((*w)->Write({{"step", 2}, {"loss", 4.25}, {"lr", 2.5e-3}}).ok());
  // Flushed per record: readable while the writer is still open.
  std::ifstream in(dir + "/run/metrics.jsonl");
  std::string line1, line2, extra;
  ASSERT_TRUE(std::getline(in, line1));
  ASSERT_TRUE(std::getline(in, line2));
  EXPECT_FALSE(std::getline(in, extra));
  EXPECT_EQ(nlohmann::json::parse(line1)["loss"].get<double>(), 4.5);
  EXPECT_EQ(nlohmann::json::parse(line2)["step"].get<int>(), 2);
  EXPECT_EQ((*w)->path(), dir + "/run/metrics.jsonl");
}

TEST(MetricsWriterTest, ReopeningAppendsSoResumeKeepsEarlierLines) {
  const std::string dir = FreshDir("resume");
  {
    auto w = MetricsWriter::Open(dir);
    ASSERT_TRUE(w.ok());
    for (int step = 1; step <= 3; ++step) ASSERT_TRUE((*w)->Write({{"step", step}}).ok());
  }
  {
    auto w = MetricsWriter::Open(dir);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write({{"step", 4}, {"resumed", true}}).ok());
  }
  StatusOr<std::vector<nlohmann::json>> records = ReadMetricsFile(dir + "/metrics.jsonl");
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*records)[i]["step"].get<int>(), i + 1);
  EXPECT_TRUE((*records)[3]["resumed"].get<bool>());
}

TEST(MetricsWriterTest, RejectsRecordWithoutIntegerStep) {
  auto w = MetricsWriter::Open(FreshDir("nostep"));
  ASSERT_TRUE(w.ok());
  EXPECT_THAT(std::string((*w)->Write({{"loss", 1.0}}).message()), HasSubstr("\"step\""));
  EXPECT_FALSE((*w)->Write({{"step", 1.5}}).ok());
  EXPECT_FALSE((*w)->Write(nlohmann::json::array({1, 2})).ok());
}

TEST(MetricsWriterTest, NonFiniteBecomesNull) {
  const std::string dir = FreshDir("nan");
  auto w = MetricsWriter::Open(dir);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Write({{"step", 7}, {"loss", std::numeric_limits<double>::quiet_NaN()}}).ok());
  auto records = ReadMetricsFile(dir + "/metrics.jsonl");
  ASSERT_TRUE(records.ok());
  EXPECT_TRUE((*records)[0]["loss"].is_null());
}

TEST(MetricsWriterTest, UnwritableDirectoryIsAnError) {
  const std::string file = FreshDir("blocker");
  std::ofstream(file) << "not a directory";
  StatusOr<std::unique_ptr<MetricsWriter>> w = MetricsWriter::Open(file + "/run");
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr(file));
}

TEST(ReadMetricsFileTest, TruncatedLineNamesFileAndLine) {
  const std::string path = FreshDir("truncated") + ".jsonl";
  std::ofstream(path) << "{\"step\": 1}\n{\"step\": 2, \"lo\n";
  StatusOr<std::vector<nlohmann::json>> records = ReadMetricsFile(path);
  ASSERT_FALSE(records.ok());
  EXPECT_THAT(std::string(records.status().message()), HasSubstr(path + ":2"));
}

TEST(ProgressLineTest, FormatsTheDocumentedExample) {
  ProgressLine p;
  p.step = 120;
  p.total_steps = 300;
  p.loss = 4.2134;
  p.lr = 2.9e-3;
  p.grad_norm = 0.8412;
  p.tokens_per_second = 12345;
  p.eta_seconds = 72;
  EXPECT_EQ(p.ToString(),
            "step 120/300 | loss 4.213 | lr 2.9e-03 | gnorm 0.84 | 12.3k tok/s | ETA 1m12s");
}

TEST(ProgressLineTest, UnknownEtaAndNanLoss) {
  ProgressLine p;
  p.step = 0;
  p.total_steps = 10;
  p.loss = std::nan("");
  EXPECT_EQ(p.ToString(), "step 0/10 | loss nan | lr 0.0e+00 | gnorm 0.00 | 0 tok/s | ETA --");
}

TEST(FormatCountTest, ThreeSignificantFiguresWithSuffix) {
  EXPECT_EQ(FormatCount(0), "0");
  EXPECT_EQ(FormatCount(950), "950");
  EXPECT_EQ(FormatCount(999.4), "999");
  EXPECT_EQ(FormatCount(999.6), "1.00k");
  EXPECT_EQ(FormatCount(1234), "1.23k");
  EXPECT_EQ(FormatCount(12345), "12.3k");
  EXPECT_EQ(FormatCount(123456), "123k");
  EXPECT_EQ(FormatCount(4.56e6), "4.56M");
  EXPECT_EQ(FormatCount(2.5e9), "2.50G");
}

TEST(FormatDurationTest, PicksTwoUnits) {
  EXPECT_EQ(FormatDuration(0), "0s");
  EXPECT_EQ(FormatDuration(45.4), "45s");
  EXPECT_EQ(FormatDuration(72), "1m12s");
  EXPECT_EQ(FormatDuration(605), "10m05s");
  EXPECT_EQ(FormatDuration(3600 * 2 + 5 * 60 + 9), "2h05m");
  EXPECT_EQ(FormatDuration(86400 * 3 + 3600 * 4), "3d04h");
  EXPECT_EQ(FormatDuration(-1), "--");
  EXPECT_EQ(FormatDuration(std::numeric_limits<double>::infinity()), "--");
}

}  // namespace
}  // namespace scalemoe
