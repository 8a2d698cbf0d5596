#include "checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/checkpoint/temp_dir.h"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

Tensor Values(const Shape& shape, DType dtype, double seed) {
  std::vector<double> v(NumElements(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = seed + 0.25 * static_cast<double>(i);
  return Tensor::FromVector(shape, v, dtype);
}

// A small "model": weights in three float types, an integer buffer, and one
// optimizer-state tensor.
std::vector<NamedTensor> ModelTensors(double seed) {
  return {
      {"embed", Values({6, 4}, DType::kF32, seed), {}, {}, TensorRole::kModel},
      {"layers.0.w", Values({4, 4}, DType::kBF16, seed + 1), {}, {}, TensorRole::kModel},
      {"layers.0.norm", Values({4}, DType::kF64, seed + 2), {}, {}, TensorRole::kModel},
      {"tokens_seen", Values({2}, DType::kI64, 1000 * seed), {}, {}, TensorRole::kModel},
      {"adam.m.embed", Values({6, 4}, DType::kF32, seed + 3), {}, {}, TensorRole::kState},
  };
}

// Zero-filled destinations with the same names, shapes, dtypes and roles.
std::vector<NamedTensor> Targets(const std::vector<NamedTensor>& like) {
  std::vector<NamedTensor> out;
  for (const NamedTensor& t : like) {
    out.push_back({t.name, Tensor::Zeros(t.tensor.shape(), t.tensor.dtype()), {}, {}, t.role});
  }
  return out;
}

class CheckpointTest : public ::testing::Test {
 protected:
  Status Save(int64_t step, int keep_last = 0) {
    SaveRequest req;
    req.root = dir_.path();
    req.step = step;
    req.config_text = "model { d_model: 4 }";
    req.layout.zero_stage = 1;
    req.tensors = ModelTensors(static_cast<double>(step));
    req.blobs = {{"loader", R"({"shard": 3, "offset": 17})"},
                 {"rng", std::string("\x00\xff\x80 binary", 10)}};
    req.keep_last = keep_last;
    return SaveCheckpoint(req);
  }
  std::string StepDir(int64_t step) {
    return dir_.path() + "/checkpoints/step_" + std::to_string(step);
  }
  std::string RankFile(int64_t step) { return StepDir(step) + "/rank_00000.safetensors"; }

  testing::TempDir dir_;
};

TEST_F(CheckpointTest, RoundTripsTensorsOfEveryDTypeAndBlobs) {
  ASSERT_TRUE(Save(5).ok());
  StatusOr<std::string> latest = LatestCheckpoint(dir_.path());
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, StepDir(5));

  std::vector<NamedTensor> saved = ModelTensors(5);
  LoadRequest req{Targets(saved)};
  StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(*latest, req);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->step, 5);
  EXPECT_EQ(loaded->config_text, "model { d_model: 4 }");
  EXPECT_EQ(loaded->layout.zero_stage, 1);
  EXPECT_EQ(loaded->blobs.at("loader"), R"({"shard": 3, "offset": 17})");
  EXPECT_EQ(loaded->blobs.at("rng"), std::string("\x00\xff\x80 binary", 10));
  for (size_t i = 0; i < saved.size(); ++i) {
    EXPECT_EQ(req.targets[i].tensor.ToVector(), saved[i].tensor.ToVector()) << saved[i].name;
  }
  EXPECT_TRUE(fs::exists(StepDir(5) + "/manifest.txt"));
}

TEST_F(CheckpointTest, ConvertsBetweenF32AndBf16OnLoad) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets[0].tensor = Tensor::Zeros({6, 4}, DType::kBF16);  // stored f32
  targets[1].tensor = Tensor::Zeros({4, 4}, DType::kF32);   // stored bf16
  LoadRequest req{targets};
  ASSERT_TRUE(LoadCheckpoint(StepDir(1), req).ok());
  // Values are multiples of 0.25 below 8: exact in bf16.
  EXPECT_EQ(targets[0].tensor.ToVector(), ModelTensors(1)[0].tensor.ToVector());
  EXPECT_EQ(targets[1].tensor.ToVector(), ModelTensors(1)[1].tensor.ToVector());
}

TEST_F(CheckpointTest, StateTensorsAreOptionalOnLoad) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets.pop_back();  // no optimizer state: e.g. fine-tuning with a fresh optimizer
  EXPECT_TRUE(LoadCheckpoint(StepDir(1), LoadRequest{targets}).ok());
}

TEST_F(CheckpointTest, RefusesToSaveAStepThatAlreadyExists) {
  ASSERT_TRUE(Save(3).ok());
  Status s = Save(3);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr("step_3"));
}

// step_5 holding step 3 (renamed or copied): refused when loaded, not found
// at the next save (a resume would write step_4, then clash with step_5).
TEST_F(CheckpointTest, DirectoryNamedForAnotherStepIsRefused) {
  ASSERT_TRUE(Save(3).ok());
  fs::rename(StepDir(3), StepDir(5));
  StatusOr<std::string> latest = LatestCheckpoint(dir_.path());
  ASSERT_TRUE(latest.ok()) << latest.status();
  Status s = LoadCheckpoint(*latest, LoadRequest{Targets(ModelTensors(3))}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("is named step_5 but holds step 3"));
  EXPECT_THAT(s.message(), HasSubstr("rename it to step_3"));
  EXPECT_FALSE(DescribeCheckpoint(StepDir(5) + "/").ok());
  // Under a name that carries no step it loads.
  fs::rename(StepDir(5), dir_.path() + "/best");
  EXPECT_TRUE(LoadCheckpoint(dir_.path() + "/best", LoadRequest{Targets(ModelTensors(3))}).ok());
}

TEST_F(CheckpointTest, CompleteMarkerForAnotherStepIsRefused) {
  ASSERT_TRUE(Save(3).ok());
  std::string marker;
  {
    std::ifstream in(StepDir(3) + "/COMPLETE");
    marker.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_EQ(marker.rfind("step 3\n", 0), 0u) << marker;
  std::ofstream(StepDir(3) + "/COMPLETE", std::ios::trunc) << "step 4\n" << marker.substr(7);
  Status s = LoadCheckpoint(StepDir(3), LoadRequest{Targets(ModelTensors(3))}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("COMPLETE records step 4 but the manifest step 3"));
}

TEST_F(CheckpointTest, LatestIsNotFoundWithoutCheckpoints) {
  EXPECT_EQ(LatestCheckpoint(dir_.path()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointTest, LoadOfMissingDirectoryNamesIt) {
  Status s = LoadCheckpoint(StepDir(9), LoadRequest{Targets(ModelTensors(9))}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(StepDir(9)));
}

TEST_F(CheckpointTest, LeftoverTmpDirIsIgnoredThenCleanedByNextSave) {
  ASSERT_TRUE(Save(1).ok());
  const std::string tmp = dir_.path() + "/checkpoints/.tmp-step_2-99999";
  fs::create_directories(tmp);
  std::ofstream(tmp + "/rank_00000.safetensors") << "half written";
  EXPECT_EQ(*LatestCheckpoint(dir_.path()), StepDir(1));
  ASSERT_TRUE(Save(2).ok());
  EXPECT_FALSE(fs::exists(tmp));
  EXPECT_EQ(*LatestCheckpoint(dir_.path()), StepDir(2));
}

TEST_F(CheckpointTest, StepDirWithoutCompleteIsIgnoredAndReplacedOnResave) {
  ASSERT_TRUE(Save(1).ok());
  ASSERT_TRUE(Save(2).ok());
  fs::remove(StepDir(2) + "/COMPLETE");  // as if killed before the marker
  EXPECT_EQ(*LatestCheckpoint(dir_.path()), StepDir(1));
  Status s = LoadCheckpoint(StepDir(2), LoadRequest{Targets(ModelTensors(2))}).status();
  EXPECT_THAT(s.message(), HasSubstr("incomplete"));
  ASSERT_TRUE(Save(2).ok());  // the debris does not block a re-save
  EXPECT_EQ(*LatestCheckpoint(dir_.path()), StepDir(2));
}

TEST_F(CheckpointTest, KeepsTheLastKCompleteCheckpoints) {
  for (int64_t step : {10, 20, 30, 40}) ASSERT_TRUE(Save(step, /*keep_last=*/2).ok());
  EXPECT_FALSE(fs::exists(StepDir(10)));
  EXPECT_FALSE(fs::exists(StepDir(20)));
  EXPECT_TRUE(fs::exists(StepDir(30) + "/COMPLETE"));
  EXPECT_TRUE(fs::exists(StepDir(40) + "/COMPLETE"));
  for (const auto& e : fs::directory_iterator(dir_.path() + "/checkpoints")) {
    EXPECT_THAT(e.path().filename().string(), ::testing::StartsWith("step_"));
  }
}

// step_0 (checkpoint.save_initial: the weights before any update) is a
// reference for other implementations: kept, and not one of the K.
TEST_F(CheckpointTest, PruningKeepsTheInitialWeightsOutsideTheCount) {
  for (int64_t step : {0, 10, 20, 30}) ASSERT_TRUE(Save(step, /*keep_last=*/1).ok());
  EXPECT_TRUE(fs::exists(StepDir(0) + "/COMPLETE"));
  EXPECT_FALSE(fs::exists(StepDir(10)));
  EXPECT_FALSE(fs::exists(StepDir(20)));
  EXPECT_TRUE(fs::exists(StepDir(30) + "/COMPLETE"));
}

TEST_F(CheckpointTest, PruningNeverDeletesTheCheckpointJustWritten) {
  ASSERT_TRUE(Save(50).ok());
  ASSERT_TRUE(Save(60).ok());
  ASSERT_TRUE(Save(5, /*keep_last=*/1).ok());  // older step, e.g. after resuming from step_5
  EXPECT_TRUE(fs::exists(StepDir(5) + "/COMPLETE"));
  EXPECT_TRUE(fs::exists(StepDir(60) + "/COMPLETE"));
  EXPECT_FALSE(fs::exists(StepDir(50)));
}

TEST_F(CheckpointTest, FlippedByteFailsTheChecksumNamingTheFile) {
  ASSERT_TRUE(Save(1).ok());
  {
    std::fstream f(RankFile(1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char c;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(-5, std::ios::end);
    f.write(&c, 1);
  }
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{Targets(ModelTensors(1))}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(RankFile(1)));
  EXPECT_THAT(s.message(), HasSubstr("checksum"));
  int bad_files = 0;
  StatusOr<std::string> described = DescribeCheckpoint(StepDir(1), &bad_files);
  ASSERT_TRUE(described.ok()) << described.status();
  EXPECT_THAT(*described, HasSubstr("BAD (checksum"));
  EXPECT_EQ(bad_files, 1);
  EXPECT_THAT(*described, HasSubstr("blobs.json"));
}

TEST_F(CheckpointTest, TruncatedFileIsReported) {
  ASSERT_TRUE(Save(1).ok());
  fs::resize_file(RankFile(1), fs::file_size(RankFile(1)) - 16);
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{Targets(ModelTensors(1))}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr(RankFile(1)));
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
}

TEST_F(CheckpointTest, MissingFileIsReported) {
  ASSERT_TRUE(Save(1).ok());
  fs::remove(StepDir(1) + "/blobs.json");
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{Targets(ModelTensors(1))}).status();
  EXPECT_THAT(s.message(), HasSubstr("blobs.json"));
  EXPECT_THAT(s.message(), HasSubstr("missing"));
}

TEST_F(CheckpointTest, CorruptManifestIsReported) {
  ASSERT_TRUE(Save(1).ok());
  std::ofstream(StepDir(1) + "/manifest.pb", std::ios::app) << "x";
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{Targets(ModelTensors(1))}).status();
  EXPECT_THAT(s.message(), HasSubstr("manifest"));
  EXPECT_THAT(s.message(), HasSubstr("corrupt"));
}

TEST_F(CheckpointTest, OtherModelIsRefusedNamingTheMismatch) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets[0].name = "embedding";  // renamed parameter
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{targets}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("different model"));
  EXPECT_THAT(s.message(), HasSubstr("'embed' is in the checkpoint but not in the model"));
  EXPECT_THAT(s.message(), HasSubstr("'embedding' is in the model but not in the checkpoint"));
}

TEST_F(CheckpointTest, WrongShapeIsRefusedNamingTheTensor) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets[1].tensor = Tensor::Zeros({4, 5}, DType::kBF16);
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{targets}).status();
  EXPECT_THAT(s.message(), HasSubstr("'layers.0.w' has global shape [4, 4] in the checkpoint but [4, 5]"));
}

TEST_F(CheckpointTest, WrongStateShapeIsRefusedNamingTheTensor) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets[4].tensor = Tensor::Zeros({6, 3}, DType::kF32);  // kState: not in the fingerprint
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{targets}).status();
  EXPECT_THAT(s.message(), HasSubstr("tensor 'adam.m.embed' has global shape [6, 4]"));
}

TEST_F(CheckpointTest, IncompatibleDTypeIsRefused) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  targets[3].tensor = Tensor::Zeros({2}, DType::kF32);  // stored i64
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{targets}).status();
  EXPECT_THAT(s.message(), HasSubstr("'tokens_seen' is stored as i64 but the target is f32"));
}

// Every failure above happens after some tensors were already verified; none
// of them may reach the caller's memory.
TEST_F(CheckpointTest, FailedLoadLeavesEveryTargetUntouched) {
  ASSERT_TRUE(Save(1).ok());
  std::vector<NamedTensor> targets = Targets(ModelTensors(1));
  for (NamedTensor& t : targets) t.tensor.Fill(-7);
  targets.push_back({"not.saved", Tensor::Zeros({2}, DType::kF32), {}, {}, TensorRole::kState});
  Status s = LoadCheckpoint(StepDir(1), LoadRequest{targets}).status();
  EXPECT_THAT(s.message(), HasSubstr("'not.saved' is not in checkpoint"));
  for (const NamedTensor& t : targets) {
    if (t.name == "not.saved") continue;
    for (double v : t.tensor.ToVector()) ASSERT_EQ(v, -7) << t.name;
  }
}

TEST_F(CheckpointTest, DescribeListsStepLayoutTensorsAndFiles) {
  ASSERT_TRUE(Save(7).ok());
  int bad_files = -1;
  StatusOr<std::string> d = DescribeCheckpoint(StepDir(7), &bad_files);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(bad_files, 0);
  EXPECT_THAT(*d, HasSubstr("step 7"));
  EXPECT_THAT(*d, HasSubstr("zero_stage=1"));
  EXPECT_THAT(*d, HasSubstr("layers.0.w"));
  EXPECT_THAT(*d, HasSubstr("BF16"));
  EXPECT_THAT(*d, HasSubstr("rank_00000.safetensors"));
  EXPECT_THAT(*d, ::testing::Not(HasSubstr("BAD")));
}

TEST_F(CheckpointTest, RejectsSliceOutsideGlobalShapeAndMultiRankSave) {
  SaveRequest req;
  req.root = dir_.path();
  req.step = 1;
  req.tensors = {{"w", Values({2, 4}, DType::kF32, 0), {3, 4}, {2, 0}, TensorRole::kModel}};
  EXPECT_THAT(SaveCheckpoint(req).message(), HasSubstr("tensor 'w'"));
  req.tensors.clear();
  req.layout.world_size = 2;
  EXPECT_THAT(SaveCheckpoint(req).message(), HasSubstr("pass the world communicator"));
}

// A checkpoint from before optimizer state took its parameter's shape stores
// it flattened ([numel], ZeRO ranges as 1-D slices). Box targets that are
// contiguous runs of the global tensor (every box without TP) still load from
// it; a TP column slice cannot, and the error says what to do.
TEST_F(CheckpointTest, LegacyFlatOptimizerStateLoadsIntoBoxes) {
  const Tensor whole = Values({6, 4}, DType::kF32, 7);  // the state, row-major
  const Tensor flat = whole.View({24});
  SaveRequest req;
  req.root = dir_.path();
  req.step = 1;
  req.tensors = {{"embed", Values({6, 4}, DType::kF32, 0), {}, {}, TensorRole::kModel},
                 // Two ZeRO ranges of the flattened state, cutting row 2.
                 {"m/embed", flat.Narrow(0, 0, 10), {24}, {0}, TensorRole::kState},
                 {"m/embed", flat.Narrow(0, 10, 14), {24}, {10}, TensorRole::kState}};
  ASSERT_TRUE(SaveCheckpoint(req).ok());
  // Today's targets: a partial row, whole rows, a partial row (StateBoxes).
  Tensor row1_tail = Tensor::Zeros({1, 3}, DType::kF32);  // [1, 1:4)
  Tensor rows = Tensor::Zeros({3, 4}, DType::kF32);       // rows 2-4
  Tensor row5_head = Tensor::Zeros({1, 2}, DType::kF32);  // [5, 0:2)
  LoadRequest load;
  load.targets = {{"embed", Tensor::Zeros({6, 4}, DType::kF32), {}, {}, TensorRole::kModel},
                  {"m/embed", row1_tail, {6, 4}, {1, 1}, TensorRole::kState},
                  {"m/embed", rows, {6, 4}, {2, 0}, TensorRole::kState},
                  {"m/embed", row5_head, {6, 4}, {5, 0}, TensorRole::kState}};
  StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(StepDir(1), load);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (int j = 0; j < 3; ++j) EXPECT_EQ(row1_tail.At(j), whole.At(4 + 1 + j));
  for (int i = 0; i < 12; ++i) EXPECT_EQ(rows.At(i), whole.At(8 + i));
  for (int j = 0; j < 2; ++j) EXPECT_EQ(row5_head.At(j), whole.At(20 + j));

  // A TP column slice of the state is not one contiguous run.
  load.targets = {{"embed", Tensor::Zeros({6, 4}, DType::kF32), {}, {}, TensorRole::kModel},
                  {"m/embed", Tensor::Zeros({6, 2}, DType::kF32), {6, 4}, {0, 2},
                   TensorRole::kState}};
  loaded = LoadCheckpoint(StepDir(1), load);
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("stores optimizer state flattened"));
}

}  // namespace
}  // namespace scalemoe::checkpoint
