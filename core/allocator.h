// Allocators behind ExecContext::Empty: a caching allocator per context, so
// that a training step's activations and temporaries reuse the blocks of the
// step before instead of going to the system (malloc, cudaMalloc) each time.
//
// Blocks are cached by exact (rounded) size: a steady-state step allocates
// the same shapes in the same order, so after the first step every request
// is a cache hit. A block returns to the cache when the last Tensor viewing
// it dies. CUDA blocks are stream-ordered on the context's one compute
// stream: a block freed by work queued earlier on that stream may be handed
// to work queued later on it without a synchronisation (the stream runs
// them in order); use on another stream needs an event (not done here).
//
// Poison mode (CPU): every block handed out (new or cached) is filled with
// 0xFF bytes — NaN as f32/f64/bf16, -1 as an integer — so code that relies
// on zero-filled memory fails its tests. On when the environment variable
// SCALEMOE_POISON_ALLOCATIONS=1 is set (CI runs the whole suite so), for
// Tensor::Empty too.
//
// Private pools (CUDA graphs, launch/micro_batch_graph.h): a captured
// graph replays into the addresses it was captured with, so the blocks it
// allocated, its temporaries included, must stay its own after the capture.
// Between BeginPrivatePool and EndPrivatePool every request is served from
// a new private pool: its own cached blocks, else a block of the shared
// cache, which joins the pool (so a capture after a step of the same work
// finds its blocks without cudaMalloc), else a new one. A block of a live
// private pool returns to that pool, never to the shared cache, until
// RetirePrivatePool hands the pool's blocks (the cached ones now, the others
// when they come back) to the shared cache.
//
// Trace: the shared-pool blocks handed out since StartTrace and still in
// use, in the order they were handed out. Two stretches of host code whose
// traces are equal left the tensors they made where the same code put them
// before (a graph's check that the eager work around it did not move what
// it reads; blocks freed again in the stretch cannot be read, and their
// order in the cache may vary).
//
// Thread-safe (one mutex): FakeWorld ranks are threads that may share a
// context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace scalemoe {

class Storage;

struct AllocatorStats {
  int64_t system_allocs = 0;  // malloc / cudaMalloc calls
  int64_t system_frees = 0;   // free / cudaFree calls
  int64_t cache_hits = 0;
  int64_t in_use_bytes = 0;    // handed out and not returned
  int64_t peak_in_use_bytes = 0;
  int64_t cached_bytes = 0;    // returned, kept for reuse
};

// Whether SCALEMOE_POISON_ALLOCATIONS=1 (read once).
bool PoisonAllocationsFromEnv();

// The system side of an allocator: where blocks come from and go back to.
class BlockSource {
 public:
  virtual ~BlockSource() = default;
  virtual Device device() const = 0;
  // nbytes > 0; fails with a message naming the size and the fix.
  virtual StatusOr<void*> Allocate(size_t nbytes) = 0;
  virtual void Free(void* ptr) = 0;
  // Fills a block handed out in poison mode (CPU only does anything).
  virtual void Poison(void* ptr, size_t nbytes) = 0;
};

// Host memory, 64-byte aligned.
std::unique_ptr<BlockSource> HostBlockSource();

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  // Use Create: blocks hold a shared_ptr back to the allocator.
  static std::shared_ptr<CachingAllocator> Create(std::unique_ptr<BlockSource> source,
                                                  bool poison);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  Device device() const { return source_->device(); }
  bool poison() const { return poison_; }
  // A block of at least nbytes (0 is fine) as Storage; back to the cache when
  // the Storage dies.
  StatusOr<std::shared_ptr<Storage>> Allocate(size_t nbytes);
  // Returns every cached block to the system.
  void ReleaseCache();
  AllocatorStats stats() const;

  // See "Private pools" above. BeginPrivatePool returns the new pool's id
  // (> 0), EndPrivatePool the id of the pool it closes; one pool takes
  // requests at a time.
  int BeginPrivatePool();
  int EndPrivatePool();
  void RetirePrivatePool(int pool);
  void StartTrace();
  // The trace since StartTrace (blocks still in use); tracing stops.
  std::vector<void*> TakeTrace();
  // What holds the memory, for an out-of-memory message: "in use 47.5 GiB
  // in 1210 blocks (the largest: 1 x 32 GiB, 2 x 4 GiB, ...), cached 0 B,
  // peak 47.5 GiB". A failed Allocate appends it to the source's message.
  std::string InUseSummary() const;
  // The blocks in use when the peak was reached, the same way: "peak 20.1
  // GiB in 830 blocks (the largest: ...)" (where the memory estimate's
  // parts can be checked against a run).
  std::string PeakSummary() const;

 private:
  using FreeLists = std::map<size_t, std::vector<void*>>;  // rounded size -> cached blocks
  CachingAllocator(std::unique_ptr<BlockSource> source, bool poison)
      : source_(std::move(source)), poison_(poison) {}
  void Release(void* ptr, size_t rounded, int pool);

  std::unique_ptr<BlockSource> source_;
  const bool poison_;
  mutable std::mutex mu_;
  FreeLists free_;                          // the shared pool (0)
  std::map<int, FreeLists> private_free_;   // live private pools
  int active_pool_ = 0, last_pool_ = 0;
  bool tracing_ = false;
  std::vector<void*> trace_;
  using BlockCounts = std::map<size_t, int64_t>;  // rounded size -> blocks
  BlockCounts in_use_blocks_;                     // handed out, not returned
  BlockCounts peak_blocks_;                       // in_use_blocks_ at the peak
  AllocatorStats stats_;
};

// The rounded size a request of nbytes occupies (cache key).
size_t RoundAllocation(size_t nbytes);

// "512 B", "3.4 MiB", "1.2 GiB", "7.3 TiB", "6.4e+03 PiB": the largest
// binary unit the count reaches, three significant digits.
std::string FormatBytes(double bytes);

}  // namespace scalemoe
