// Multi-rank save and resharding load over the in-process FakeWorld: every
// rank writes its slices, rank 0 commits, and any layout reads any other's.
#include <filesystem>
#include <fstream>

#include "checkpoint/checkpoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "tests/checkpoint/temp_dir.h"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// The global model: a 2-D weight, a replicated bias, a bf16 matrix split by
// columns, and a 1-D optimizer state (flattened, ZeRO style).
struct Global {
  std::string name;
  Shape shape;
  DType dtype;
  TensorRole role;
};
const std::vector<Global>& Globals() {
  static const std::vector<Global> g = {
      {"w", {6, 4}, DType::kF32, TensorRole::kModel},
      {"b", {5}, DType::kF32, TensorRole::kModel},
      {"e", {4, 6}, DType::kBF16, TensorRole::kModel},
      {"optimizer.m/w", {24}, DType::kF32, TensorRole::kState},
  };
  return g;
}

double ValueAt(const std::string& name, int64_t flat) {
  return static_cast<double>(name.size()) + 0.5 * static_cast<double>(flat);  // exact in bf16 for small flat
}

// Row-major flat index of local element i of box (start, size) in `global`.
int64_t GlobalFlat(const Shape& global, const Shape& start, const Shape& size, int64_t i) {
  int64_t flat = 0;
  for (size_t d = 0; d < global.size(); ++d) {
    int64_t inner = 1;
    for (size_t k = d + 1; k < size.size(); ++k) inner *= size[k];
    const int64_t idx = (i / inner) % size[d];
    flat = flat * global[d] + start[d] + idx;
  }
  return flat;
}

// One box of a global tensor; filled with its true values, or zeros.
NamedTensor Piece(const std::string& name, const Shape& start, const Shape& size, bool fill) {
  for (const Global& g : Globals()) {
    if (g.name != name) continue;
    std::vector<double> v(NumElements(size), 0.0);
    if (fill) {
      for (size_t i = 0; i < v.size(); ++i) v[i] = ValueAt(name, GlobalFlat(g.shape, start, size, i));
    }
    return {name, Tensor::FromVector(size, v, g.dtype), g.shape, start, g.role};
  }
  ADD_FAILURE() << name;
  return {};
}

void ExpectTrueValues(const NamedTensor& t) {
  const std::vector<double> got = t.tensor.ToVector();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], ValueAt(t.name, GlobalFlat(t.global_shape, t.slice_start, t.tensor.shape(), i)))
        << t.name << " element " << i << " of box at " << ShapeString(t.slice_start);
  }
}

// A layout: for each of n ranks, the boxes it holds. Uneven on purpose.
using Layout = std::vector<std::vector<std::tuple<std::string, Shape, Shape>>>;
Layout TwoRankLayout() {
  return {
      {{"w", {0, 0}, {4, 4}}, {"b", {0}, {5}}, {"e", {0, 0}, {4, 1}}, {"optimizer.m/w", {0}, {10}}},
      {{"w", {4, 0}, {2, 4}}, {"e", {0, 1}, {4, 5}}, {"optimizer.m/w", {10}, {14}}},
  };
}
Layout FourRankLayout() {
  return {
      {{"w", {0, 0}, {3, 2}}, {"b", {0}, {2}}, {"e", {0, 0}, {1, 6}}, {"optimizer.m/w", {0}, {7}}},
      {{"w", {0, 2}, {3, 2}}, {"b", {2}, {3}}, {"e", {1, 0}, {2, 6}}, {"optimizer.m/w", {7}, {1}}},
      {{"w", {3, 0}, {3, 4}}, {"e", {3, 0}, {1, 6}}, {"optimizer.m/w", {8}, {16}}},
      {},  // holds nothing: writes no rank file
  };
}
Layout OneRankLayout() {
  return {{{"w", {0, 0}, {6, 4}}, {"b", {0}, {5}}, {"e", {0, 0}, {4, 6}}, {"optimizer.m/w", {0}, {24}}}};
}

std::vector<NamedTensor> RankPieces(const Layout& layout, int rank, bool fill) {
  std::vector<NamedTensor> out;
  for (const auto& [name, start, size] : layout[rank]) out.push_back(Piece(name, start, size, fill));
  return out;
}

GridSizes DataParallel(int n) { return GridSizes{.dp = n, .edp = n}; }

class MultiRankTest : public ::testing::Test {
 protected:
  SaveRequest Request(int64_t step, const Layout& layout, int rank) {
    SaveRequest req;
    req.root = dir_.path();
    req.step = step;
    req.config_text = "model {}";
    req.layout.dp = static_cast<int>(layout.size());
    req.layout.world_size = static_cast<int>(layout.size());
    req.rank = rank;
    req.tensors = RankPieces(layout, rank, true);
    req.blobs = {{"loader", absl::StrCat("rank ", rank)}};
    return req;
  }
  Status SaveWith(const Layout& layout, int64_t step, FakeWorld* fake = nullptr) {
    FakeWorld own;
    FakeWorld& world = fake != nullptr ? *fake : own;
    const int n = static_cast<int>(layout.size());
    return world.Run(n, DataParallel(n), [&](ProcessGroups& groups) {
      return SaveCheckpoint(Request(step, layout, groups.coords.global), groups.world.get());
    });
  }
  // Loads `layout`'s boxes on its ranks and checks every value.
  Status LoadAndCheck(const Layout& layout, int64_t step) {
    FakeWorld world;
    const int n = static_cast<int>(layout.size());
    return world.Run(n, DataParallel(n), [&](ProcessGroups& groups) -> Status {
      LoadRequest req{RankPieces(layout, groups.coords.global, false)};
      SM_ASSIGN_OR_RETURN(LoadedCheckpoint loaded, LoadCheckpoint(StepDir(step), req, groups.world.get()));
      EXPECT_EQ(loaded.step, step);
      EXPECT_EQ(loaded.blobs.at("loader"), "rank 0");
      for (const NamedTensor& t : req.targets) ExpectTrueValues(t);
      return absl::OkStatus();
    });
  }
  std::string StepDir(int64_t step) { return dir_.path() + "/checkpoints/step_" + std::to_string(step); }
  bool NothingCommitted() {
    return !LatestCheckpoint(dir_.path()).ok();
  }

  testing::TempDir dir_;
};

TEST_F(MultiRankTest, TwoRankSaveLoadsOnOneTwoAndFourRanks) {
  ASSERT_TRUE(SaveWith(TwoRankLayout(), 3).ok());
  EXPECT_TRUE(fs::exists(StepDir(3) + "/rank_00000.safetensors"));
  EXPECT_TRUE(fs::exists(StepDir(3) + "/rank_00001.safetensors"));
  EXPECT_FALSE(fs::exists(StepDir(3) + "/rank_00000.fragment.pb"));

  // One rank, no communicator: the whole tensors.
  LoadRequest one{RankPieces(OneRankLayout(), 0, false)};
  StatusOr<LoadedCheckpoint> loaded = LoadCheckpoint(StepDir(3), one);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->layout.world_size, 2);
  for (const NamedTensor& t : one.targets) ExpectTrueValues(t);

  Status same = LoadAndCheck(TwoRankLayout(), 3);
  EXPECT_TRUE(same.ok()) << same;
  Status four = LoadAndCheck(FourRankLayout(), 3);
  EXPECT_TRUE(four.ok()) << four;
}

TEST_F(MultiRankTest, FourRankSaveLoadsOnTwoRanksAndOneRank) {
  Status saved = SaveWith(FourRankLayout(), 8);
  ASSERT_TRUE(saved.ok()) << saved;
  EXPECT_FALSE(fs::exists(StepDir(8) + "/rank_00003.safetensors"));  // rank 3 held nothing
  Status two = LoadAndCheck(TwoRankLayout(), 8);
  EXPECT_TRUE(two.ok()) << two;
  Status one = LoadAndCheck(OneRankLayout(), 8);
  EXPECT_TRUE(one.ok()) << one;
}

TEST_F(MultiRankTest, SingleRankSaveReshardsToTwoRanks) {
  SaveRequest req = Request(1, OneRankLayout(), 0);
  ASSERT_TRUE(SaveCheckpoint(req).ok());
  Status two = LoadAndCheck(TwoRankLayout(), 1);
  EXPECT_TRUE(two.ok()) << two;
}

TEST_F(MultiRankTest, GapIsAnErrorOnEveryRankAndNothingIsCommitted) {
  Layout gap = TwoRankLayout();
  gap[1].erase(gap[1].begin());  // rows 4..6 of "w" saved by nobody
  FakeWorld world;
  Status s = SaveWith(gap, 2, &world);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(world.rank_statuses()[0].message(), HasSubstr("tensor 'w'"));
  EXPECT_THAT(world.rank_statuses()[0].message(), HasSubstr("cover 16 of its 24"));
  EXPECT_FALSE(world.rank_statuses()[1].ok());
  EXPECT_TRUE(NothingCommitted());
  EXPECT_FALSE(fs::exists(StepDir(2)));
}

TEST_F(MultiRankTest, OverlapIsAnErrorNamingTheTensorAndBothFiles) {
  Layout overlap = TwoRankLayout();
  overlap[1].emplace_back("b", Shape{4}, Shape{1});  // element 4 of "b" also saved by rank 0
  FakeWorld world;
  ASSERT_FALSE(SaveWith(overlap, 2, &world).ok());
  const std::string msg(world.rank_statuses()[0].message());
  EXPECT_THAT(msg, HasSubstr("tensor 'b'"));
  EXPECT_THAT(msg, HasSubstr("overlaps"));
  EXPECT_THAT(msg, HasSubstr("rank_00000.safetensors"));
  EXPECT_THAT(msg, HasSubstr("rank_00001.safetensors"));
  EXPECT_TRUE(NothingCommitted());
}

TEST_F(MultiRankTest, BadRequestOnOneRankFailsEveryRank) {
  Layout bad = TwoRankLayout();
  std::get<1>(bad[1][0]) = Shape{5, 0};  // rows 5..7 of a 6-row tensor
  FakeWorld world;
  ASSERT_FALSE(SaveWith(bad, 2, &world).ok());
  EXPECT_THAT(world.rank_statuses()[1].message(), HasSubstr("tensor 'w'"));
  EXPECT_THAT(world.rank_statuses()[0].message(), HasSubstr("failed on rank(s) 1"));
  EXPECT_TRUE(NothingCommitted());
}

TEST_F(MultiRankTest, RankFailingBeforeCommitLeavesNothing) {
  // Rank 1's second communication call is the agreement after writing.
  FakeWorld world;
  world.FailCollective(1, 1);
  ASSERT_FALSE(SaveWith(TwoRankLayout(), 4, &world).ok());
  EXPECT_FALSE(world.rank_statuses()[0].ok());
  EXPECT_FALSE(world.rank_statuses()[1].ok());
  EXPECT_TRUE(NothingCommitted());
  EXPECT_FALSE(fs::exists(StepDir(4)));
  // The debris is gone and a later save succeeds.
  ASSERT_TRUE(SaveWith(TwoRankLayout(), 4).ok());
  EXPECT_TRUE(LoadAndCheck(OneRankLayout(), 4).ok());
}

TEST_F(MultiRankTest, CommunicatorMismatchIsAClearError) {
  SaveRequest req = Request(1, TwoRankLayout(), 0);  // says world_size 2
  Status s = SaveCheckpoint(req);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("pass the world communicator"));
}

TEST_F(MultiRankTest, LoadReadsOnlyTheFilesItNeedsAndWritesNothingUnlessAllRanksPass) {
  // Rank 0 holds every model tensor, rank 1 only half of the state.
  Layout layout = {
      {{"w", {0, 0}, {6, 4}}, {"b", {0}, {5}}, {"e", {0, 0}, {4, 6}}, {"optimizer.m/w", {0}, {12}}},
      {{"optimizer.m/w", {12}, {12}}},
  };
  ASSERT_TRUE(SaveWith(layout, 6).ok());
  {
    std::fstream f(StepDir(6) + "/rank_00001.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  // One rank asking only for rank 0's data never opens the corrupt file.
  Layout from_rank0 = {layout[0]};
  StatusOr<LoadedCheckpoint> ok = LoadCheckpoint(StepDir(6), LoadRequest{RankPieces(from_rank0, 0, false)});
  EXPECT_TRUE(ok.ok()) << ok.status();

  // Two ranks: rank 1 needs the corrupt file, so neither writes anything.
  FakeWorld world;
  std::vector<std::vector<NamedTensor>> targets = {RankPieces(layout, 0, false), RankPieces(layout, 1, false)};
  for (auto& rank_targets : targets) {
    for (NamedTensor& t : rank_targets) t.tensor.Fill(-7);
  }
  Status s = world.Run(2, DataParallel(2), [&](ProcessGroups& groups) {
    return LoadCheckpoint(StepDir(6), LoadRequest{targets[groups.coords.global]}, groups.world.get()).status();
  });
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(world.rank_statuses()[1].message(), HasSubstr("checksum"));
  EXPECT_THAT(world.rank_statuses()[0].message(), HasSubstr("failed on rank(s) 1"));
  for (const auto& rank_targets : targets) {
    for (const NamedTensor& t : rank_targets) {
      for (double v : t.tensor.ToVector()) ASSERT_EQ(v, -7) << t.name;
    }
  }
}

TEST_F(MultiRankTest, FingerprintCoversTheUnionOfAllRanksTargets) {
  ASSERT_TRUE(SaveWith(TwoRankLayout(), 5).ok());
  // Only rank 1 lists "b" (like an expert owned by one EP rank): fine.
  Layout split = TwoRankLayout();
  split[1].push_back(split[0][1]);  // "b" moves from rank 0 to rank 1
  split[0].erase(split[0].begin() + 1);
  EXPECT_TRUE(LoadAndCheck(split, 5).ok());
  // Nobody lists "b": the model differs.
  Layout missing = TwoRankLayout();
  missing[0].erase(missing[0].begin() + 1);
  Status s = LoadAndCheck(missing, 5);
  EXPECT_THAT(s.message(), HasSubstr("'b' is in the checkpoint but not in the model"));
}

}  // namespace
}  // namespace scalemoe::checkpoint
