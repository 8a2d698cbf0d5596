#include "core/allocator.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/tensor.h"

namespace scalemoe {
namespace {

class HostSource : public BlockSource {
 public:
  Device device() const override { return Device::kCPU; }
  StatusOr<void*> Allocate(size_t nbytes) override {
    void* ptr = std::aligned_alloc(64, (nbytes + 63) / 64 * 64);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "host allocation of ", nbytes, " bytes failed: lower train.micro_batch_size or "
          "spread the model over more ranks"));
    }
    return ptr;
  }
  void Free(void* ptr) override { std::free(ptr); }
  void Poison(void* ptr, size_t nbytes) override { std::memset(ptr, 0xFF, nbytes); }
};

}  // namespace

bool PoisonAllocationsFromEnv() {
  static const bool poison = [] {
    const char* v = std::getenv("SCALEMOE_POISON_ALLOCATIONS");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return poison;
}

std::unique_ptr<BlockSource> HostBlockSource() { return std::make_unique<HostSource>(); }

size_t RoundAllocation(size_t nbytes) {
  // 512-byte granules (coalesced loads, cuBLAS alignment); large blocks in
  // 2 MiB so that shapes that differ a little share a block size.
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20;
  if (nbytes == 0) return kSmall;
  if (nbytes >= (size_t{16} << 20)) return (nbytes + kLarge - 1) / kLarge * kLarge;
  return (nbytes + kSmall - 1) / kSmall * kSmall;
}

std::shared_ptr<CachingAllocator> CachingAllocator::Create(std::unique_ptr<BlockSource> source,
                                                           bool poison) {
  return std::shared_ptr<CachingAllocator>(new CachingAllocator(std::move(source), poison));
}

CachingAllocator::~CachingAllocator() { ReleaseCache(); }

StatusOr<std::shared_ptr<Storage>> CachingAllocator::Allocate(size_t nbytes) {
  const size_t rounded = RoundAllocation(nbytes);
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it != free_.end() && !it->second.empty()) {
      ptr = it->second.back();
      it->second.pop_back();
      ++stats_.cache_hits;
      stats_.cached_bytes -= static_cast<int64_t>(rounded);
    }
  }
  if (ptr == nullptr) {
    StatusOr<void*> fresh = source_->Allocate(rounded);
    if (!fresh.ok()) {
      // Give the cache back and try once more before failing.
      ReleaseCache();
      fresh = source_->Allocate(rounded);
      if (!fresh.ok()) return fresh.status();
    }
    ptr = *fresh;
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.system_allocs;
  }
  if (poison_) source_->Poison(ptr, rounded);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.in_use_bytes += static_cast<int64_t>(rounded);
    stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  }
  // The block keeps its allocator alive until it comes back.
  std::shared_ptr<CachingAllocator> owner = shared_from_this();
  return Storage::Adopt(ptr, nbytes, device(),
                        [owner, rounded](void* p) { owner->Release(p, rounded); });
}

void CachingAllocator::Release(void* ptr, size_t rounded) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[rounded].push_back(ptr);
  stats_.in_use_bytes -= static_cast<int64_t>(rounded);
  stats_.cached_bytes += static_cast<int64_t>(rounded);
}

void CachingAllocator::ReleaseCache() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [size, blocks] : free_) {
    for (void* p : blocks) {
      source_->Free(p);
      ++stats_.system_frees;
      stats_.cached_bytes -= static_cast<int64_t>(size);
    }
    blocks.clear();
  }
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace scalemoe
