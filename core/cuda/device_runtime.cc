#include "core/cuda/device_runtime.h"

#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "core/cuda/cublaslt_api.h"

namespace scalemoe {
namespace {

class DeviceSource : public BlockSource {
 public:
  explicit DeviceSource(int ordinal) : ordinal_(ordinal) {}
  Device device() const override { return Device::kCUDA; }
  StatusOr<void*> Allocate(size_t nbytes) override {
    void* ptr = nullptr;
    const cudaError_t err = cudaMalloc(&ptr, nbytes);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // out of memory is not sticky: clear it
      return absl::ResourceExhaustedError(absl::StrCat(
          "cudaMalloc of ", nbytes, " bytes on cuda:", ordinal_, " failed (",
          cudaGetErrorString(err),
          "): lower train.micro_batch_size, turn on "
          "train.recompute (or train.loss_chunk_tokens where the logits are large), or spread "
          "the model over more GPUs"));
    }
    return ptr;
  }
  void Free(void* ptr) override { cudaFree(ptr); }
  void Poison(void*, size_t) override {}

 private:
  int ordinal_;
};

}  // namespace

Status CudaStatus(int error, const char* what, int ordinal) {
  if (error == cudaSuccess) return absl::OkStatus();
  const auto e = static_cast<cudaError_t>(error);
  return absl::InternalError(absl::StrCat(what, " on cuda:", ordinal, " failed: ",
                                          cudaGetErrorName(e), " (", cudaGetErrorString(e),
                                          ")"));
}

StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::Create(int ordinal) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError(
        "train.device is CUDA but no CUDA device is visible on this machine: set "
        "train.device: CPU, or run where a GPU is (and check CUDA_VISIBLE_DEVICES)");
  }
  if (ordinal < 0 || ordinal >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", ordinal, " requested but ",
                                                   count, " are visible"));
  }
  SM_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(ordinal), "cudaSetDevice", ordinal));
  cudaStream_t stream = nullptr;
  SM_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                                "cudaStreamCreate", ordinal));
  return std::unique_ptr<CudaDevice>(new CudaDevice(ordinal, stream));
}

CudaDevice::~CudaDevice() {
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

std::unique_ptr<BlockSource> CudaDevice::DeviceBlocks() const {
  return std::make_unique<DeviceSource>(ordinal_);
}

Status CudaDevice::MemsetZero(void* ptr, size_t nbytes) const {
  return CudaStatus(cudaMemsetAsync(ptr, 0, nbytes, static_cast<cudaStream_t>(stream_)),
                    "cudaMemsetAsync", ordinal_);
}

Status CudaDevice::CopyToDevice(void* dst, const void* host_src, size_t nbytes) const {
  return CudaStatus(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice,
                                    static_cast<cudaStream_t>(stream_)),
                    "cudaMemcpyAsync (host to device)", ordinal_);
}

Status CudaDevice::CopyOnDevice(void* dst, const void* src, size_t nbytes) const {
  return CudaStatus(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice,
                                    static_cast<cudaStream_t>(stream_)),
                    "cudaMemcpyAsync (device to device)", ordinal_);
}

Status CudaDevice::CopyToHost(void* host_dst, const void* src, size_t nbytes) const {
  SM_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(host_dst, src, nbytes, cudaMemcpyDeviceToHost,
                                                static_cast<cudaStream_t>(stream_)),
                                "cudaMemcpyAsync (device to host)", ordinal_));
  return Synchronize();
}

int CudaDevice::Count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

Status CudaDevice::Synchronize() const {
  return CudaStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)),
                    "cudaStreamSynchronize", ordinal_);
}

Status CudaDevice::BeginCapture() const {
  return CudaStatus(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream_),
                                           cudaStreamCaptureModeRelaxed),
                    "cudaStreamBeginCapture", ordinal_);
}

StatusOr<void*> CudaDevice::EndCapture() const {
  cudaGraph_t graph = nullptr;
  SM_RETURN_IF_ERROR(CudaStatus(cudaStreamEndCapture(static_cast<cudaStream_t>(stream_), &graph),
                                "cudaStreamEndCapture", ordinal_));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);  // the executable keeps what it needs
  SM_RETURN_IF_ERROR(CudaStatus(made, "cudaGraphInstantiate", ordinal_));
  return static_cast<void*>(exec);
}

Status CudaDevice::LaunchGraph(void* exec) const {
  return CudaStatus(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec),
                                    static_cast<cudaStream_t>(stream_)),
                    "cudaGraphLaunch", ordinal_);
}

void CudaDevice::DestroyGraph(void* exec) {
  cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

void CudaDevice::ClearLastError() const { (void)cudaGetLastError(); }

Status CudaDevice::LastError() const {
  return CudaStatus(cudaGetLastError(), "an earlier kernel", ordinal_);
}

CudaLibraries::~CudaLibraries() {
  cache_.clear();
  if (lt_ != nullptr) cuda::lt::Destroy(lt_);
}

StatusOr<cublasLtHandle_t> CudaLibraries::Lt() {
  if (lt_ != nullptr) return lt_;
  SM_RETURN_IF_ERROR(cuda::lt::Load());
  const cublasStatus_t st = cuda::lt::Create(&lt_);
  if (st != CUBLAS_STATUS_SUCCESS) {
    lt_ = nullptr;
    return absl::InternalError(
        absl::StrCat("cublasLtCreate failed: ", cuda::lt::GetStatusName(st)));
  }
  return lt_;
}

}  // namespace scalemoe
