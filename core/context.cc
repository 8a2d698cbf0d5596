#include "core/context.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/context_state.h"

namespace scalemoe {

ExecContext::ExecContext() : ExecContext(Cpu()) {}

ExecContext ExecContext::Cpu(const CpuContextOptions& options) {
  auto state = std::make_shared<State>();
  state->allocator = CachingAllocator::Create(HostBlockSource(), options.poison);
  return ExecContext(std::move(state));
}

StatusOr<ExecContext> ExecContext::Cuda(int ordinal) {
#if SCALEMOE_CUDA
  auto state = std::make_shared<State>();
  SM_ASSIGN_OR_RETURN(state->cuda, CudaDevice::Create(ordinal));
  state->device = Device::kCUDA;
  state->ordinal = ordinal;
  state->stream = state->cuda->stream();
  state->allocator = CachingAllocator::Create(state->cuda->DeviceBlocks(), /*poison=*/false);
  return ExecContext(std::move(state));
#else
  return absl::FailedPreconditionError(absl::StrCat(
      "CUDA device ", ordinal, " requested but scalemoe was built without the CUDA backend: "
      "rebuild where nvcc is found (or -DSCALEMOE_CUDA=ON), or set train.device: CPU"));
#endif
}

int ExecContext::CudaDeviceCount() {
#if SCALEMOE_CUDA
  return CudaDevice::Count();
#else
  return 0;
#endif
}

Device ExecContext::device() const { return state_->device; }
void* ExecContext::stream() const { return state_->stream; }
int ExecContext::device_ordinal() const { return state_->ordinal; }
ExecCounters& ExecContext::counters() const { return state_->counters; }

void ExecContext::HostEffect(const std::function<void()>& effect) const {
  effect();
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->capturing) state_->capture_effects.push_back(effect);
}

bool ExecContext::capturing() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->capturing;
}
CachingAllocator& ExecContext::allocator() const { return *state_->allocator; }
AllocatorStats ExecContext::allocator_stats() const { return state_->allocator->stats(); }

CudaLibraries* ExecContext::cuda_libraries() const {
#if SCALEMOE_CUDA
  if (state_->cuda) return &state_->cuda->libraries();
#endif
  return nullptr;
}

Tensor ExecContext::Empty(const Shape& shape, DType dtype) const {
  for (int64_t d : shape) SM_CHECK_MSG(d >= 0, "negative dimension in ", ShapeString(shape));
  StatusOr<std::shared_ptr<Storage>> storage =
      state_->allocator->Allocate(static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype));
  SM_CHECK_MSG(storage.ok(), "out of memory on ", DeviceName(device()), " for ",
               DTypeName(dtype), ShapeString(shape), ": ", storage.status().message());
  return Tensor::OnStorage(*std::move(storage), shape, dtype);
}

Tensor ExecContext::Zeros(const Shape& shape, DType dtype) const {
  Tensor t = Empty(shape, dtype);
  if (device() == Device::kCPU) {
    std::memset(t.raw_data(), 0, t.nbytes());
  } else {
#if SCALEMOE_CUDA
    Fail(state_->cuda->MemsetZero(t.raw_data(), t.nbytes()));
#endif
  }
  return t;
}

void* ExecContext::Workspace(size_t nbytes) const {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!state_->workspace || state_->workspace->nbytes() < nbytes) {
    state_->workspace.reset();  // back to the cache first: stream-ordered reuse
    StatusOr<std::shared_ptr<Storage>> s = state_->allocator->Allocate(nbytes);
    SM_CHECK_MSG(s.ok(), "out of memory for a ", nbytes, "-byte workspace on ",
                 DeviceName(device()), ": ", s.status().message());
    state_->workspace = *std::move(s);
  }
  return state_->workspace->data();
}

Status ExecContext::status() const {
#if SCALEMOE_CUDA
  if (state_->cuda) Fail(state_->cuda->LastError());
#endif
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->error;
}

void ExecContext::Fail(const Status& status) const {
  if (status.ok()) return;
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->error.ok()) state_->error = status;
}

Tensor ExecContext::ToHost(const Tensor& t) const {
  counters().host_reads.fetch_add(1, std::memory_order_relaxed);
  counters().host_read_bytes.fetch_add(static_cast<int64_t>(t.nbytes()),
                                       std::memory_order_relaxed);
  if (t.device() == Device::kCPU) return t;
#if SCALEMOE_CUDA
  Tensor host = Tensor::Empty(t.shape(), t.dtype(), Device::kCPU);
  Fail(state_->cuda->CopyToHost(host.raw_data(), t.raw_data(), t.nbytes()));
  return host;
#else
  SM_CHECK_MSG(false, "a CUDA tensor without the CUDA backend");
  return t;
#endif
}

Tensor ExecContext::ToDevice(const Tensor& t) const {
  if (device() == Device::kCPU || t.device() != Device::kCPU) return t;
#if SCALEMOE_CUDA
  counters().host_uploads.fetch_add(1, std::memory_order_relaxed);
  Tensor dev = Empty(t.shape(), t.dtype());
  Fail(state_->cuda->CopyToDevice(dev.raw_data(), t.raw_data(), t.nbytes()));
  return dev;
#else
  return t;
#endif
}

Status ExecContext::CopyAcross(const Tensor& src, const Tensor& dst) const {
  SM_CHECK_MSG(src.dtype() == dst.dtype() && src.numel() == dst.numel() && src.is_contiguous() &&
                   dst.is_contiguous(),
               "CopyAcross ", src.DebugString(), " -> ", dst.DebugString());
  if (src.device() == Device::kCPU && dst.device() == Device::kCPU) {
    if (src.raw_data() != dst.raw_data())
      std::memmove(dst.raw_data(), src.raw_data(), src.nbytes());
    return absl::OkStatus();
  }
#if SCALEMOE_CUDA
  SM_CHECK_MSG(state_->cuda != nullptr, "CopyAcross of a CUDA tensor on a CPU context");
  if (dst.device() == Device::kCPU) {
    return state_->cuda->CopyToHost(dst.raw_data(), src.raw_data(), src.nbytes());
  }
  if (src.device() == Device::kCPU) {
    counters().host_uploads.fetch_add(1, std::memory_order_relaxed);
    return state_->cuda->CopyToDevice(dst.raw_data(), src.raw_data(), src.nbytes());
  }
  return state_->cuda->CopyOnDevice(dst.raw_data(), src.raw_data(), src.nbytes());
#else
  return absl::FailedPreconditionError("a CUDA tensor without the CUDA backend");
#endif
}

Status ExecContext::Synchronize() const {
#if SCALEMOE_CUDA
  if (state_->cuda) SM_RETURN_IF_ERROR(state_->cuda->Synchronize());
#endif
  return status();
}

}  // namespace scalemoe
