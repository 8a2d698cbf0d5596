// ForwardCacheStash: a saving visit moves members out and leaves them empty;
// the restoring visit, in the same order, gives back the same handles.
#include "core/forward_cache.h"

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

// A module's cache in miniature: a tensor, host counts, a size, a flag and
// a plan marker whose empty value is -1.
struct FakeCache {
  Tensor x;
  std::vector<int64_t> counts;
  int64_t rows = 0;
  bool keep = false;
  int plan = -1;
  void Visit(ForwardCacheStash& stash) {
    stash.Visit(x);
    stash.Visit(counts);
    stash.Visit(rows);
    stash.Visit(keep);
    stash.Visit(plan, /*empty=*/-1);
  }
};

TEST(ForwardCacheStashTest, SaveEmptiesAndRestoreGivesBackTheSameStorage) {
  FakeCache m{Tensor::FromVector({2}, {1.5, 2.5}, DType::kF32), {3, 4}, 7, true, 2};
  const Tensor original = m.x;
  ForwardCacheStash stash;
  m.Visit(stash);
  EXPECT_FALSE(stash.empty());
  EXPECT_FALSE(m.x.defined());
  EXPECT_TRUE(m.counts.empty());
  EXPECT_EQ(m.rows, 0);
  EXPECT_FALSE(m.keep);
  EXPECT_EQ(m.plan, -1);

  // Another forward fills the module meanwhile; restoring replaces it.
  m = FakeCache{Tensor::FromVector({2}, {9, 9}, DType::kF32), {1}, 1, false, 5};
  stash.BeginRestore();
  EXPECT_FALSE(stash.restored());
  m.Visit(stash);
  EXPECT_TRUE(stash.restored());
  EXPECT_TRUE(m.x.SharesDataWith(original));
  EXPECT_EQ(m.x.ToVector(), (std::vector<double>{1.5, 2.5}));
  EXPECT_EQ(m.counts, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(m.rows, 7);
  EXPECT_TRUE(m.keep);
  EXPECT_EQ(m.plan, 2);
}

TEST(ForwardCacheStashTest, RestoringAnotherLayoutAborts) {
  ForwardCacheStash stash;
  int64_t rows = 3;
  stash.Visit(rows);
  stash.BeginRestore();
  Tensor t;
  EXPECT_DEATH(stash.Visit(t), "another type");
  int64_t more = 0;
  stash.Visit(rows);
  EXPECT_DEATH(stash.Visit(more), "more members");
}

}  // namespace
}  // namespace scalemoe
