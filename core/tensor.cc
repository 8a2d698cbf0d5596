#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_join.h"
#include "core/allocator.h"

#if SCALEMOE_CUDA
#include <cuda_runtime.h>
#endif

namespace scalemoe {

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

StatusOr<std::shared_ptr<Storage>> Storage::Allocate(size_t nbytes, Device device) {
  if (device == Device::kCPU) {
    std::shared_ptr<BlockSource> host = HostBlockSource();
    const size_t padded = nbytes == 0 ? 64 : nbytes;
    SM_ASSIGN_OR_RETURN(void* ptr, host->Allocate(padded));
    if (PoisonAllocationsFromEnv()) host->Poison(ptr, padded);
    return Adopt(ptr, nbytes, device, [host](void* p) { host->Free(p); });
  }
#if SCALEMOE_CUDA
  void* ptr = nullptr;
  cudaError_t err = cudaMalloc(&ptr, nbytes == 0 ? 1 : nbytes);
  if (err != cudaSuccess) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cudaMalloc of ", nbytes, " bytes failed: ", cudaGetErrorString(err),
                     "; reduce micro_batch_size or raise parallelism"));
  }
  return Adopt(ptr, nbytes, device, [](void* p) { cudaFree(p); });
#else
  return absl::FailedPreconditionError(
      "CUDA tensor requested but scalemoe was built without the CUDA backend; "
      "rebuild with nvcc available (or -DSCALEMOE_CUDA=ON) or use the CPU device");
#endif
}

std::shared_ptr<Storage> Storage::Borrow(void* data, size_t nbytes, Device device) {
  return std::shared_ptr<Storage>(new Storage(data, nbytes, device, nullptr));
}

std::shared_ptr<Storage> Storage::Adopt(void* data, size_t nbytes, Device device,
                                        std::function<void(void*)> release) {
  return std::shared_ptr<Storage>(new Storage(data, nbytes, device, std::move(release)));
}

Storage::~Storage() {
  if (release_ && data_ != nullptr) release_(data_);
}

StatusOr<Tensor> Tensor::TryEmpty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape ", ShapeString(shape)));
    }
  }
  Tensor t;
  SM_ASSIGN_OR_RETURN(t.storage_,
                      Storage::Allocate(NumElements(shape) * DTypeSize(dtype), device));
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  StatusOr<Tensor> t = TryEmpty(shape, dtype, device);
  SM_CHECK_OK(t.status());
  return *std::move(t);
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  if (device == Device::kCPU) {
    std::memset(t.raw_data(), 0, t.nbytes());
  } else {
#if SCALEMOE_CUDA
    cudaMemset(t.raw_data(), 0, t.nbytes());
#endif
  }
  return t;
}

Tensor Tensor::FromVector(const Shape& shape, const std::vector<double>& values,
                          DType dtype) {
  SM_CHECK_MSG(NumElements(shape) == static_cast<int64_t>(values.size()),
               "FromVector: shape ", ShapeString(shape), " vs ", values.size(), " values");
  Tensor t = Empty(shape, dtype);
  Tensor src = FromBlob(const_cast<double*>(values.data()), shape, DType::kF64, Device::kCPU);
  t.CopyFrom(src);
  return t;
}

Tensor Tensor::FromBlob(void* data, const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.storage_ = Storage::Borrow(data, NumElements(shape) * DTypeSize(dtype), device);
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::OnStorage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype) {
  SM_CHECK_MSG(storage->nbytes() >= static_cast<size_t>(NumElements(shape)) * DTypeSize(dtype),
               "storage of ", storage->nbytes(), " bytes for ", DTypeName(dtype),
               ShapeString(shape));
  Tensor t;
  t.device_ = storage->device();
  t.storage_ = std::move(storage);
  t.shape_ = shape;
  t.strides_ = ContiguousStrides(shape);
  t.dtype_ = dtype;
  return t;
}

int64_t Tensor::dim(int i) const {
  if (i < 0) i += ndim();
  SM_CHECK_MSG(i >= 0 && i < ndim(), "dim ", i, " of ", ShapeString(shape_));
  return shape_[i];
}

bool Tensor::is_contiguous() const { return strides_ == ContiguousStrides(shape_); }

void* Tensor::raw_data() const {
  SM_CHECK_MSG(defined(), "raw_data() of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * DTypeSize(dtype_);
}

Tensor Tensor::View(const Shape& shape) const {
  SM_CHECK_MSG(is_contiguous(), "View of a non-contiguous tensor ", DebugString());
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      SM_CHECK_MSG(infer < 0, "View: more than one -1 in ", ShapeString(shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) s[infer] = known == 0 ? 0 : numel() / known;
  SM_CHECK_MSG(NumElements(s) == numel(), "View ", ShapeString(shape), " of ",
               DebugString());
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = ContiguousStrides(s);
  return t;
}

Tensor Tensor::Narrow(int d, int64_t start, int64_t length) const {
  if (d < 0) d += ndim();
  SM_CHECK_MSG(d >= 0 && d < ndim() && start >= 0 && length >= 0 &&
                   start + length <= shape_[d],
               "Narrow(", d, ", ", start, ", ", length, ") of ", DebugString());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = length;
  return t;
}

Tensor Tensor::JoinRows(const Tensor& next) const {
  if (!defined() || !next.defined() || storage_ != next.storage_ || dtype_ != next.dtype_ ||
      ndim() == 0 || next.ndim() != ndim() || !is_contiguous() || !next.is_contiguous() ||
      next.offset_ != offset_ + numel()) {
    return Tensor();
  }
  for (int d = 1; d < ndim(); ++d) {
    if (shape_[d] != next.shape_[d]) return Tensor();
  }
  Tensor t = *this;
  t.shape_[0] += next.shape_[0];
  t.strides_ = ContiguousStrides(t.shape_);
  return t;
}

namespace {

// Element at flat (row-major logical) index of a possibly strided tensor.
int64_t StorageIndex(const Shape& shape, const Shape& strides, int64_t flat) {
  int64_t idx = 0;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    idx += (flat % shape[i]) * strides[i];
    flat /= shape[i];
  }
  return idx;
}

double LoadAsDouble(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kF64: return static_cast<const double*>(base)[i];
    case DType::kBF16: return static_cast<float>(static_cast<const bf16*>(base)[i]);
    case DType::kI32: return static_cast<const int32_t*>(base)[i];
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
  }
  return 0;
}

void StoreDouble(void* base, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::kF32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::kF64: static_cast<double*>(base)[i] = v; break;
    case DType::kBF16: static_cast<bf16*>(base)[i] = bf16(static_cast<float>(v)); break;
    case DType::kI32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); break;
    case DType::kI64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
  }
}

}  // namespace

Tensor Tensor::Clone() const {
  Tensor t = Empty(shape_, dtype_, device_);
  t.CopyFrom(*this);
  return t;
}

void Tensor::CopyFrom(const Tensor& src) {
  SM_CHECK_MSG(src.numel() == numel(), "CopyFrom: ", src.DebugString(), " into ",
               DebugString());
  if (device_ == Device::kCUDA || src.device_ == Device::kCUDA) {
#if SCALEMOE_CUDA
    SM_CHECK_MSG(src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous(),
                 "device CopyFrom needs same dtype, contiguous");
    cudaMemcpy(raw_data(), src.raw_data(), nbytes(), cudaMemcpyDefault);
    // A pageable host -> device cudaMemcpy may return before its DMA lands,
    // and contexts' streams are non-blocking (no implicit order with the
    // legacy stream this copy runs on): wait for it here.
    cudaStreamSynchronize(nullptr);
    return;
#else
    SM_CHECK_MSG(false, "CUDA tensor without CUDA backend");
#endif
  }
  if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous()) {
    std::memmove(raw_data(), src.raw_data(), nbytes());
    return;
  }
  const void* s = src.storage_->data();
  void* d = storage_->data();
  for (int64_t i = 0; i < numel(); ++i) {
    double v = LoadAsDouble(s, src.dtype_, src.offset_ + StorageIndex(src.shape_, src.strides_, i));
    StoreDouble(d, dtype_, offset_ + StorageIndex(shape_, strides_, i), v);
  }
}

void Tensor::Fill(double value) {
  SM_CHECK_MSG(device_ == Device::kCPU, "Fill on ", DebugString());
  void* d = storage_->data();
  for (int64_t i = 0; i < numel(); ++i) {
    StoreDouble(d, dtype_, offset_ + StorageIndex(shape_, strides_, i), value);
  }
}

double Tensor::At(int64_t flat_index) const {
  SM_CHECK_MSG(device_ == Device::kCPU, "At on ", DebugString());
  SM_CHECK(flat_index >= 0 && flat_index < numel());
  return LoadAsDouble(storage_->data(), dtype_,
                      offset_ + StorageIndex(shape_, strides_, flat_index));
}

std::vector<double> Tensor::ToVector() const {
  std::vector<double> out(numel());
  for (int64_t i = 0; i < numel(); ++i) out[i] = At(i);
  return out;
}

std::string Tensor::DebugString() const {
  if (!defined()) return "undefined";
  return absl::StrCat(DTypeName(dtype_), ShapeString(shape_), " ", DeviceName(device_));
}

void CheckSameOrDisjoint(const char* op, const Tensor& a, const Tensor& b) {
  const auto* pa = static_cast<const char*>(a.raw_data());
  const auto* pb = static_cast<const char*>(b.raw_data());
  SM_CHECK_MSG(pa == pb || pa + a.nbytes() <= pb || pb + b.nbytes() <= pa, op, " ", a.DebugString(),
               " partly overlaps ", b.DebugString());
}

}  // namespace scalemoe
