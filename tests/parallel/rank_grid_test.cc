#include <algorithm>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/group_name.h"
#include "parallel/process_groups.h"

namespace scalemoe {
namespace {

struct Layout {
  int world;
  GridSizes sizes;
};

const Layout kLayouts[] = {
    {1, {}},
    {2, {.dp = 2, .edp = 2}},
    {2, {.dp = 2, .ep = 2}},
    {4, {.dp = 4, .ep = 2, .edp = 2}},
    {4, {.tp = 2, .dp = 2, .etp = 2, .ep = 2, .edp = 1}},
    {4, {.tp = 2, .dp = 2, .ep = 4}},
    {8, {.tp = 2, .dp = 2, .pp = 2, .ep = 2, .edp = 2}},
    {8, {.dp = 8, .ep = 4, .edp = 2}},
    {8, {.tp = 2, .dp = 4, .etp = 2, .ep = 2, .edp = 2}},
};

class RankGridLayoutTest : public ::testing::TestWithParam<Layout> {};

TEST_P(RankGridLayoutTest, EveryAxisPartitionsTheWorld) {
  const Layout& l = GetParam();
  auto grid = RankGrid::Create(l.world, l.sizes);
  ASSERT_TRUE(grid.ok()) << grid.status();
  for (Axis axis : kAllAxes) {
    std::vector<int> seen(l.world, 0);
    const auto groups = grid->Groups(axis);
    EXPECT_EQ(static_cast<int>(groups.size()) * grid->Size(axis), l.world) << AxisName(axis);
    int previous_first = -1;
    for (const auto& g : groups) {
      ASSERT_EQ(static_cast<int>(g.size()), grid->Size(axis)) << AxisName(axis);
      EXPECT_GT(g.front(), previous_first) << "groups ordered by smallest rank";
      EXPECT_EQ(g.front(), *std::min_element(g.begin(), g.end()));
      previous_first = g.front();
      for (int r : g) {
        ++seen[r];
        EXPECT_EQ(grid->GroupOf(axis, r), g) << AxisName(axis) << " rank " << r;
      }
    }
    for (int r = 0; r < l.world; ++r) EXPECT_EQ(seen[r], 1) << AxisName(axis) << " rank " << r;
  }
}

TEST_P(RankGridLayoutTest, CoordinatesFollowMegatronOrder) {
  const Layout& l = GetParam();
  auto grid = RankGrid::Create(l.world, l.sizes);
  ASSERT_TRUE(grid.ok()) << grid.status();
  const GridSizes& s = l.sizes;
  for (int r = 0; r < l.world; ++r) {
    const GridCoords c = grid->Coords(r);
    EXPECT_EQ(c.global, r);
    EXPECT_EQ(c.tp + s.tp * (c.dp + s.dp * c.pp), r);
    EXPECT_EQ(c.etp + s.etp * (c.ep + s.ep * (c.edp + s.edp * c.pp)), r);
    // A rank's position inside each of its groups is its coordinate.
    EXPECT_EQ(grid->GroupOf(Axis::kDp, r)[c.dp], r);
    EXPECT_EQ(grid->GroupOf(Axis::kTp, r)[c.tp], r);
    EXPECT_EQ(grid->GroupOf(Axis::kPp, r)[c.pp], r);
    EXPECT_EQ(grid->GroupOf(Axis::kEtp, r)[c.etp], r);
    EXPECT_EQ(grid->GroupOf(Axis::kEp, r)[c.ep], r);
    EXPECT_EQ(grid->GroupOf(Axis::kEdp, r)[c.edp], r);
    EXPECT_EQ(grid->GroupOf(Axis::kWorld, r)[r], r);
  }
}

TEST_P(RankGridLayoutTest, ExpertViewFoldsTheSamePipelineStages) {
  const Layout& l = GetParam();
  auto grid = RankGrid::Create(l.world, l.sizes);
  ASSERT_TRUE(grid.ok()) << grid.status();
  for (int r = 0; r < l.world; ++r) {
    // The expert axes never leave r's pipeline stage: the expert view's PP
    // groups are the dense view's.
    const int stage = grid->Coords(r).pp;
    for (Axis axis : {Axis::kTp, Axis::kDp, Axis::kEtp, Axis::kEp, Axis::kEdp}) {
      for (int q : grid->GroupOf(axis, r)) EXPECT_EQ(grid->Coords(q).pp, stage);
    }
    const int expert_pp = r / (l.sizes.etp * l.sizes.ep * l.sizes.edp);
    EXPECT_EQ(expert_pp, stage);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RankGridLayoutTest, ::testing::ValuesIn(kLayouts));

TEST(RankGridTest, Tp2Dp2Pp2Groups) {
  auto grid = RankGrid::Create(8, {.tp = 2, .dp = 2, .pp = 2, .ep = 2, .edp = 2});
  ASSERT_TRUE(grid.ok()) << grid.status();
  using G = std::vector<std::vector<int>>;
  EXPECT_EQ(grid->Groups(Axis::kTp), (G{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(grid->Groups(Axis::kDp), (G{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(grid->Groups(Axis::kPp), (G{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(grid->Groups(Axis::kEp), (G{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(grid->Groups(Axis::kEdp), (G{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(grid->Groups(Axis::kEtp).size(), 8u);
  const GridCoords c = grid->Coords(7);
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
  EXPECT_EQ(c.ep, 1);
  EXPECT_EQ(c.edp, 1);
}

TEST(RankGridTest, Ep2Edp2WithDp4) {
  auto grid = RankGrid::Create(4, {.dp = 4, .ep = 2, .edp = 2});
  ASSERT_TRUE(grid.ok()) << grid.status();
  using G = std::vector<std::vector<int>>;
  EXPECT_EQ(grid->Groups(Axis::kDp), (G{{0, 1, 2, 3}}));
  EXPECT_EQ(grid->Groups(Axis::kEp), (G{{0, 1}, {2, 3}}));
  EXPECT_EQ(grid->Groups(Axis::kEdp), (G{{0, 2}, {1, 3}}));
  EXPECT_EQ(grid->Coords(3).ep, 1);
  EXPECT_EQ(grid->Coords(3).edp, 1);
  EXPECT_EQ(grid->Coords(2).ep, 0);
}

TEST(RankGridTest, Etp2Ep2WithTp2Dp2) {
  auto grid = RankGrid::Create(4, {.tp = 2, .dp = 2, .etp = 2, .ep = 2, .edp = 1});
  ASSERT_TRUE(grid.ok()) << grid.status();
  using G = std::vector<std::vector<int>>;
  EXPECT_EQ(grid->Groups(Axis::kEtp), (G{{0, 1}, {2, 3}}));
  EXPECT_EQ(grid->Groups(Axis::kEp), (G{{0, 2}, {1, 3}}));
  EXPECT_EQ(grid->Groups(Axis::kEdp), (G{{0}, {1}, {2}, {3}}));
  EXPECT_EQ(grid->Groups(Axis::kDp), (G{{0, 2}, {1, 3}}));
}

TEST(RankGridTest, LayoutsThatDoNotTileAreErrors) {
  auto dense = RankGrid::Create(4, {.tp = 2, .dp = 3, .edp = 6});
  ASSERT_FALSE(dense.ok());
  EXPECT_NE(dense.status().message().find("tp*dp*pp"), absl::string_view::npos)
      << dense.status();
  EXPECT_NE(dense.status().message().find("4 ranks"), absl::string_view::npos);
  auto expert = RankGrid::Create(4, {.dp = 4, .ep = 2, .edp = 1});
  ASSERT_FALSE(expert.ok());
  EXPECT_NE(expert.status().message().find("etp*ep*edp*pp"), absl::string_view::npos)
      << expert.status();
  EXPECT_FALSE(RankGrid::Create(0, {}).ok());
  EXPECT_FALSE(RankGrid::Create(2, {.dp = 2, .ep = 0}).ok());
  EXPECT_FALSE(RankGrid::Create(2, {.dp = -2, .pp = -1}).ok());
}

TEST(RankGridTest, DescribeListsEveryAxisGroups) {
  auto grid = RankGrid::Create(4, {.dp = 4, .ep = 2, .edp = 2});
  ASSERT_TRUE(grid.ok()) << grid.status();
  const std::string text = grid->Describe();
  EXPECT_NE(text.find("dp (size 4): [0,1,2,3]"), std::string::npos) << text;
  EXPECT_NE(text.find("ep (size 2): [0,1] [2,3]"), std::string::npos) << text;
  EXPECT_NE(text.find("edp (size 2): [0,2] [1,3]"), std::string::npos) << text;
  EXPECT_NE(text.find("tp (size 1): [0] [1] [2] [3]"), std::string::npos) << text;
}

TEST(RankGridTest, GroupNames) {
  EXPECT_EQ(GroupName(Axis::kDp, {0, 2}), "dp[0,2]");
  std::vector<int> many(20);
  for (int i = 0; i < 20; ++i) many[i] = i;
  EXPECT_EQ(GroupName(Axis::kWorld, many), "world[0,1,2,3,4,5,6,7,...,19]");
}

}  // namespace
}  // namespace scalemoe
