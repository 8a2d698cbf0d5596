// The execution seam on the CPU: the context's caching allocator reuses
// blocks (a steady state makes no system allocations) and names what holds
// the memory when it runs out, poison mode fills
// every block handed out, host reads are counted, and an op a device does
// not implement is a Status on the context, never a silent fallback.
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/allocator.h"
#include "core/context.h"
#include "core/ops.h"
#include "gmock/gmock.h"
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

// Host blocks, at most `limit` bytes held at once: a device's memory.
class LimitedHostSource : public BlockSource {
 public:
  explicit LimitedHostSource(size_t limit) : limit_(limit) {}
  Device device() const override { return Device::kCPU; }
  StatusOr<void*> Allocate(size_t nbytes) override {
    if (held_ + nbytes > limit_) {
      return absl::ResourceExhaustedError(absl::StrCat("no room for ", nbytes, " bytes"));
    }
    SM_ASSIGN_OR_RETURN(void* p, host_->Allocate(nbytes));
    held_ += nbytes;
    sizes_[p] = nbytes;
    return p;
  }
  void Free(void* p) override {
    held_ -= sizes_.at(p);
    sizes_.erase(p);
    host_->Free(p);
  }
  void Poison(void*, size_t) override {}

 private:
  std::unique_ptr<BlockSource> host_ = HostBlockSource();
  size_t limit_, held_ = 0;
  std::map<void*, size_t> sizes_;
};

// Out of memory after the cache went back: the source's message, then what
// holds the memory (the blocks in use by size, largest first, the cache and
// the peak), so that the user sees which tensors to shrink.
TEST(ContextTest, OutOfMemoryNamesWhatIsInUse) {
  constexpr size_t kMiB = size_t{1} << 20;
  auto alloc = CachingAllocator::Create(std::make_unique<LimitedHostSource>(8 * kMiB), false);
  std::vector<std::shared_ptr<Storage>> held;
  for (size_t mib : {1, 4, 1, 1}) held.push_back(*alloc->Allocate(mib * kMiB));
  { auto cached = alloc->Allocate(kMiB / 2); }  // cached, then given back by the failure
  EXPECT_EQ(alloc->stats().cached_bytes, static_cast<int64_t>(kMiB / 2));
  const Status failed = alloc->Allocate(2 * kMiB).status();
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(failed.message()),
              ::testing::HasSubstr("no room for 2097152 bytes; in use 7 MiB in 4 blocks (the "
                                   "largest: 1 x 4 MiB, 3 x 1 MiB), cached 0 B, peak 7.5 MiB"));
  // Returned blocks leave the list; past six sizes it ends in "...".
  held.erase(held.begin() + 1);
  for (size_t kib : {1, 2, 3, 4, 5, 6}) held.push_back(*alloc->Allocate(kib * 1024));
  EXPECT_EQ(alloc->InUseSummary(),
            "in use 3.02 MiB in 9 blocks (the largest: 3 x 1 MiB, 1 x 6 KiB, 1 x 5 KiB, "
            "1 x 4 KiB, 1 x 3 KiB, 1 x 2 KiB, ...), cached 4 MiB, peak 7.5 MiB");
  held.clear();
  EXPECT_EQ(alloc->InUseSummary(), "in use 0 B in 0 blocks, cached 7.02 MiB, peak 7.5 MiB");
  // What was in use at the peak: the four blocks and the one cached after.
  EXPECT_EQ(alloc->PeakSummary(),
            "peak 7.5 MiB in 5 blocks (the largest: 1 x 4 MiB, 3 x 1 MiB, 1 x 512 KiB)");
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
