#include "core/allocator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
  int pool = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pool = active_pool_;
    // A private pool's own blocks first, then the shared cache's (the block
    // joins the pool): a capture takes only the blocks it uses.
    for (FreeLists* lists : {pool == 0 ? nullptr : &private_free_[pool], &free_}) {
      if (lists == nullptr) continue;
      auto it = lists->find(rounded);
      if (it == lists->end() || it->second.empty()) continue;
      ptr = it->second.back();
      it->second.pop_back();
      ++stats_.cache_hits;
      stats_.cached_bytes -= static_cast<int64_t>(rounded);
      break;
    }
  }
  if (ptr == nullptr) {
    StatusOr<void*> fresh = source_->Allocate(rounded);
    if (!fresh.ok()) {
      // Give the shared cache back and try once more before failing.
      ReleaseCache();
      fresh = source_->Allocate(rounded);
      if (!fresh.ok()) {
        return absl::Status(fresh.status().code(),
                            absl::StrCat(fresh.status().message(), "; ", InUseSummary()));
      }
    }
    ptr = *fresh;
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.system_allocs;
  }
  if (poison_) source_->Poison(ptr, rounded);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.in_use_bytes += static_cast<int64_t>(rounded);
    ++in_use_blocks_[rounded];
    if (stats_.in_use_bytes > stats_.peak_in_use_bytes) {
      stats_.peak_in_use_bytes = stats_.in_use_bytes;
      peak_blocks_ = in_use_blocks_;  // a new peak: the first step's, rarely later
    }
    if (tracing_ && pool == 0) trace_.push_back(ptr);
  }
  // The block keeps its allocator alive until it comes back.
  std::shared_ptr<CachingAllocator> owner = shared_from_this();
  return Storage::Adopt(ptr, nbytes, device(),
                        [owner, rounded, pool](void* p) { owner->Release(p, rounded, pool); });
}

void CachingAllocator::Release(void* ptr, size_t rounded, int pool) {
  std::lock_guard<std::mutex> lock(mu_);
  if (tracing_ && pool == 0) {  // the trace lists the blocks still in use
    auto it = std::find(trace_.rbegin(), trace_.rend(), ptr);
    if (it != trace_.rend()) trace_.erase(std::next(it).base());
  }
  auto live = pool == 0 ? private_free_.end() : private_free_.find(pool);
  (live == private_free_.end() ? free_ : live->second)[rounded].push_back(ptr);
  stats_.in_use_bytes -= static_cast<int64_t>(rounded);
  stats_.cached_bytes += static_cast<int64_t>(rounded);
  if (auto it = in_use_blocks_.find(rounded); it != in_use_blocks_.end() && --it->second == 0) {
    in_use_blocks_.erase(it);
  }
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

int CachingAllocator::BeginPrivatePool() {
  std::lock_guard<std::mutex> lock(mu_);
  SM_CHECK_MSG(active_pool_ == 0, "BeginPrivatePool: pool ", active_pool_, " is still open");
  active_pool_ = ++last_pool_;
  private_free_[active_pool_];
  return active_pool_;
}

int CachingAllocator::EndPrivatePool() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(active_pool_, 0);
}

void CachingAllocator::RetirePrivatePool(int pool) {
  std::lock_guard<std::mutex> lock(mu_);
  SM_CHECK_MSG(pool != active_pool_, "RetirePrivatePool: pool ", pool, " is still open");
  auto it = private_free_.find(pool);
  if (it == private_free_.end()) return;
  for (auto& [size, blocks] : it->second) {
    std::vector<void*>& to = free_[size];
    to.insert(to.end(), blocks.begin(), blocks.end());
  }
  private_free_.erase(it);
}

void CachingAllocator::StartTrace() {
  std::lock_guard<std::mutex> lock(mu_);
  tracing_ = true;
  trace_.clear();
}

std::vector<void*> CachingAllocator::TakeTrace() {
  std::lock_guard<std::mutex> lock(mu_);
  tracing_ = false;
  return std::move(trace_);
}

namespace {

// "47.5 GiB in 1210 blocks (the largest: 1 x 32 GiB, 2 x 4 GiB, ...)": the
// six largest sizes.
std::string DescribeBlocks(int64_t bytes, const std::map<size_t, int64_t>& blocks) {
  int64_t count = 0;
  for (const auto& [size, n] : blocks) count += n;
  std::string out = absl::StrCat(FormatBytes(static_cast<double>(bytes)), " in ", count, " blocks");
  if (count == 0) return out;
  int sizes = 0;
  for (auto it = blocks.rbegin(); it != blocks.rend() && sizes < 6; ++it, ++sizes) {
    absl::StrAppend(&out, sizes > 0 ? ", " : " (the largest: ", it->second, " x ",
                    FormatBytes(static_cast<double>(it->first)));
  }
  absl::StrAppend(&out, blocks.size() > 6 ? ", ...)" : ")");
  return out;
}

}  // namespace

std::string CachingAllocator::InUseSummary() const {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrCat("in use ", DescribeBlocks(stats_.in_use_bytes, in_use_blocks_), ", cached ",
                      FormatBytes(static_cast<double>(stats_.cached_bytes)), ", peak ",
                      FormatBytes(static_cast<double>(stats_.peak_in_use_bytes)));
}

std::string CachingAllocator::PeakSummary() const {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrCat("peak ", DescribeBlocks(stats_.peak_in_use_bytes, peak_blocks_));
}

std::string FormatBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  size_t unit = 0;
  while (bytes >= 1024 && unit + 1 < std::size(kUnits)) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? absl::StrFormat("%.0f B", bytes)
                   : absl::StrFormat("%.3g %s", bytes, kUnits[unit]);
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace scalemoe
