// BroadcastString over the in-process fake world: every rank gets the root's
// string whatever its own was (empty, longer, shorter), from any root.
#include "parallel/broadcast_string.h"

#include <string>

#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"

namespace scalemoe {
namespace {

TEST(BroadcastStringTest, EveryRankGetsTheRootsString) {
  for (int root : {0, 2}) {
    const std::string want = root == 0 ? "runs/tiny_cpu-20260101-120000" : "";
    Status s = FakeWorld().Run(3, {.dp = 3, .edp = 3}, [&](ProcessGroups& pg) -> Status {
      Communicator& world = *pg.world;
      const std::string mine =
          world.rank() == root ? want : std::string(17 * (world.rank() + 1), 'x');
      SM_ASSIGN_OR_RETURN(std::string got, BroadcastString(world, mine, root));
      EXPECT_EQ(got, want) << "rank " << world.rank() << " root " << root;
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
  }
}

TEST(BroadcastStringTest, AFailedBroadcastIsAnErrorNamingTheGroup) {
  FakeWorld world;
  world.FailCollective(1, 0);
  Status s = world.Run(2, {.dp = 2, .edp = 2}, [](ProcessGroups& pg) -> Status {
    return BroadcastString(*pg.world, "abc").status();
  });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("world"), std::string::npos) << s;
}

}  // namespace
}  // namespace scalemoe
