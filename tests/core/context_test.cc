// The execution seam on the CPU: the context's caching allocator reuses
// blocks (a steady state makes no system allocations), poison mode fills
// every block handed out, host reads are counted, and an op a device does
// not implement is a Status on the context, never a silent fallback.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

TEST(ContextTest, SteadyStateAllocationsComeFromTheCache) {
  const ExecContext ctx = ExecContext::Cpu({.poison = false});
  auto step = [&] {
    for (int i = 0; i < 3; ++i) {
      Tensor a = ctx.Empty({128, 64}, DType::kF32);
      Tensor b = ctx.Empty({7}, DType::kI32);
      Tensor c = ctx.Empty({3, 1000}, DType::kF64);
    }
  };
  step();
  const AllocatorStats first = ctx.allocator_stats();
  EXPECT_GT(first.system_allocs, 0);
  EXPECT_EQ(first.in_use_bytes, 0);  // every block came back
  for (int s = 0; s < 5; ++s) step();
  const AllocatorStats later = ctx.allocator_stats();
  EXPECT_EQ(later.system_allocs, first.system_allocs);
  EXPECT_GT(later.cache_hits, first.cache_hits);
  EXPECT_GE(later.peak_in_use_bytes, 128 * 64 * 4);
}

TEST(ContextTest, ABlockLivesAsLongAsAViewOfIt) {
  const ExecContext ctx = ExecContext::Cpu({.poison = false});
  Tensor view;
  {
    Tensor t = ctx.Empty({10}, DType::kF32);
    view = t.Narrow(0, 2, 3);
  }
  EXPECT_GT(ctx.allocator_stats().in_use_bytes, 0);
  view = Tensor();
  EXPECT_EQ(ctx.allocator_stats().in_use_bytes, 0);
}

TEST(ContextTest, PoisonModeFillsEveryBlockHandedOut) {
  const ExecContext ctx = ExecContext::Cpu({.poison = true});
  for (int round = 0; round < 2; ++round) {  // a new block, then the cached one
    Tensor t = ctx.Empty({33}, DType::kF32);
    for (int i = 0; i < 33; ++i) EXPECT_TRUE(std::isnan(t.data<float>()[i])) << i;
    Tensor z = ctx.Zeros({33}, DType::kF32);
    for (int i = 0; i < 33; ++i) EXPECT_EQ(z.data<float>()[i], 0.0f);
    std::memset(t.raw_data(), 0, t.nbytes());  // dirty it before it returns
  }
  Tensor ids = ctx.Empty({4}, DType::kI32);
  EXPECT_EQ(ids.data<int32_t>()[0], -1);
}

TEST(ContextTest, HostReadsAreCounted) {
  const ExecContext ctx = ExecContext::Cpu();
  Tensor t = ctx.Zeros({5}, DType::kF32);
  EXPECT_EQ(ctx.counters().host_reads.load(), 0);
  Tensor h = ctx.ToHost(t);
  EXPECT_EQ(h.raw_data(), t.raw_data());  // already on the host: no copy
  EXPECT_EQ(ctx.counters().host_reads.load(), 1);
  EXPECT_EQ(ctx.counters().host_read_bytes.load(), 20);
}

TEST(ContextTest, CopiesShareOneState) {
  const ExecContext ctx = ExecContext::Cpu();
  const ExecContext copy = ctx;  // NOLINT: a handle
  copy.Fail(absl::InternalError("first"));
  copy.Fail(absl::InternalError("second"));
  EXPECT_EQ(ctx.status().message(), "first");
}

// CUDA graphs' allocator pools (core/allocator.h), on host blocks: a
// private pool takes shared blocks it needs, keeps every block it handed out
// (the shared pool never gets one while the pool lives), and gives them all
// back when retired; the trace lists shared-pool blocks in order.
TEST(ContextTest, PrivatePoolsKeepTheirBlocksUntilRetired) {
  const ExecContext ctx = ExecContext::Cpu({.poison = false});
  CachingAllocator& alloc = ctx.allocator();
  void* shared_block = nullptr;
  {
    Tensor warm = ctx.Empty({256}, DType::kF32);  // one cached block of this size
    shared_block = warm.raw_data();
  }
  const int pool = alloc.BeginPrivatePool();
  EXPECT_GT(pool, 0);
  void* taken = nullptr;
  void* fresh = nullptr;
  {
    Tensor a = ctx.Empty({256}, DType::kF32);  // the shared block, now the pool's
    Tensor b = ctx.Empty({256}, DType::kF32);  // a new block of the pool
    taken = a.raw_data();
    fresh = b.raw_data();
  }
  EXPECT_EQ(taken, shared_block);
  EXPECT_EQ(alloc.EndPrivatePool(), pool);
  // Both are cached in the pool: the shared pool makes a new block.
  alloc.StartTrace();
  const int64_t before = alloc.stats().system_allocs;
  Tensor outside = ctx.Empty({256}, DType::kF32);
  EXPECT_NE(outside.raw_data(), taken);
  EXPECT_NE(outside.raw_data(), fresh);
  EXPECT_EQ(alloc.stats().system_allocs, before + 1);
  Tensor small = ctx.Empty({3}, DType::kI32);
  { Tensor gone = ctx.Empty({5}, DType::kI32); }  // freed again: not in the trace
  EXPECT_EQ(alloc.TakeTrace(), (std::vector<void*>{outside.raw_data(), small.raw_data()}));
  // A new capture reuses the pool's blocks without asking the system.
  const int again = alloc.BeginPrivatePool();
  alloc.EndPrivatePool();
  alloc.RetirePrivatePool(again);
  alloc.RetirePrivatePool(pool);
  // Retired: the pool's two blocks serve shared requests.
  Tensor c = ctx.Empty({256}, DType::kF32), d = ctx.Empty({256}, DType::kF32);
  EXPECT_EQ(alloc.stats().system_allocs, before + 3);  // outside's, small's and gone's only
  EXPECT_TRUE((c.raw_data() == taken || c.raw_data() == fresh) &&
              (d.raw_data() == taken || d.raw_data() == fresh));
}

// A block handed out by a pool that is retired while the block is in use
// comes back to the shared cache.
TEST(ContextTest, ABlockOfARetiredPoolReturnsToTheSharedCache) {
  const ExecContext ctx = ExecContext::Cpu({.poison = false});
  CachingAllocator& alloc = ctx.allocator();
  const int pool = alloc.BeginPrivatePool();
  Tensor kept = ctx.Empty({64}, DType::kF32);
  void* block = kept.raw_data();
  alloc.EndPrivatePool();
  alloc.RetirePrivatePool(pool);
  kept = Tensor();
  Tensor reused = ctx.Empty({64}, DType::kF32);
  EXPECT_EQ(reused.raw_data(), block);
}

TEST(ContextTest, HostEffectsRunAtOnce) {
  const ExecContext ctx = ExecContext::Cpu();
  int runs = 0;
  ctx.HostEffect([&] { ++runs; });
  EXPECT_EQ(runs, 1);
  EXPECT_FALSE(ctx.capturing());
}

TEST(ContextTest, ACudaContextWithoutADeviceIsAClearError) {
  StatusOr<ExecContext> cuda = ExecContext::Cuda(0);
  if (cuda.ok()) GTEST_SKIP() << "a CUDA device is present: covered by the gpu tests";
  EXPECT_NE(cuda.status().message().find("train.device"), std::string::npos)
      << cuda.status().message();
}

}  // namespace
}  // namespace scalemoe
