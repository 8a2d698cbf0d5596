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
// Thread-safe (one mutex): FakeWorld ranks are threads that may share a
// context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
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

 private:
  CachingAllocator(std::unique_ptr<BlockSource> source, bool poison)
      : source_(std::move(source)), poison_(poison) {}
  void Release(void* ptr, size_t rounded);

  std::unique_ptr<BlockSource> source_;
  const bool poison_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;  // rounded size -> cached blocks
  AllocatorStats stats_;
};

// The rounded size a request of nbytes occupies (cache key).
size_t RoundAllocation(size_t nbytes);

}  // namespace scalemoe
