// Tensor: shape, strides, dtype, device, and shared storage (owning) or a
// borrowed pointer (view into a flat buffer someone else owns).
//
// Copying a Tensor copies the handle, not the data (like torch.Tensor).
// Views (View, Narrow, FromBlob) alias their source; the source must outlive
// a FromBlob view. Most ops require contiguous tensors and check it.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace scalemoe {

using Shape = std::vector<int64_t>;

int64_t NumElements(const Shape& shape);
std::string ShapeString(const Shape& shape);  // "[2, 3, 4]"

// A block of memory on one device. Frees itself unless borrowed.
class Storage {
 public:
  // Allocates `nbytes` on `device` straight from the system (malloc,
  // cudaMalloc). Contents undefined (0xFF bytes in poison mode,
  // core/allocator.h). Fails with a clear message when the CUDA backend is
  // not built or memory runs out.
  static StatusOr<std::shared_ptr<Storage>> Allocate(size_t nbytes, Device device);
  // Wraps memory owned elsewhere; never freed by us.
  static std::shared_ptr<Storage> Borrow(void* data, size_t nbytes, Device device);
  // Takes a block whose `release` gives it back when the storage dies (a
  // caching allocator's).
  static std::shared_ptr<Storage> Adopt(void* data, size_t nbytes, Device device,
                                        std::function<void(void*)> release);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release)
      : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}
  void* data_;
  size_t nbytes_;
  Device device_;
  std::function<void(void*)> release_;  // empty when borrowed
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor: defined() == false

  // New contiguous tensor straight from the system allocator, contents
  // undefined (for long-lived buffers: parameters, optimizer state; step
  // temporaries come from ExecContext::Empty). SM_CHECK-fails only for
  // programming errors; out-of-memory is reported via TryEmpty.
  static Tensor Empty(const Shape& shape, DType dtype, Device device = Device::kCPU);
  static StatusOr<Tensor> TryEmpty(const Shape& shape, DType dtype, Device device);
  static Tensor Zeros(const Shape& shape, DType dtype, Device device = Device::kCPU);
  // CPU tensor filled from values (converted to dtype).
  static Tensor FromVector(const Shape& shape, const std::vector<double>& values,
                           DType dtype);
  // Contiguous view of memory owned elsewhere.
  static Tensor FromBlob(void* data, const Shape& shape, DType dtype, Device device);
  // Contiguous tensor over the start of `storage` (an allocator's block).
  static Tensor OnStorage(std::shared_ptr<Storage> storage, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim(int i) const;  // negative i counts from the back
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return NumElements(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  bool is_contiguous() const;

  void* raw_data() const;
  // Whether both tensors start at the same element of the same memory (an
  // in-place call); never reads elements.
  bool SharesDataWith(const Tensor& other) const {
    return defined() && other.defined() && raw_data() == other.raw_data();
  }
  template <typename T>
  T* data() const {
    SM_CHECK_MSG(DTypeOf<T>::value == dtype_, "tensor holds ", DTypeName(dtype_),
                 ", asked for ", DTypeName(DTypeOf<T>::value));
    return static_cast<T*>(raw_data());
  }

  // Same data, new shape (contiguous only; numel must match; one -1 allowed).
  Tensor View(const Shape& shape) const;
  // Sub-range [start, start+length) of dimension `dim`; aliases the data.
  Tensor Narrow(int dim, int64_t start, int64_t length) const;
  // This tensor's rows followed by `next`'s as one tensor [R + R', ...],
  // aliasing both, when `next` continues this one's storage right after
  // its last element (both contiguous, same dtype and trailing dims, e.g.
  // two parameters created one after the other); undefined otherwise.
  Tensor JoinRows(const Tensor& next) const;
  // Deep copy (contiguous result) on the same device.
  Tensor Clone() const;
  // Copies `src` into this tensor (same numel; CPU dtype convert). Across
  // host and device: synchronous, outside every context's stream — the
  // caller synchronises the context first (ExecContext::CopyAcross is the
  // stream-ordered copy).
  void CopyFrom(const Tensor& src);
  // CPU only: sets every element to `value`.
  void Fill(double value);
  // CPU only, slow, for tests and printing: element at flat index as double.
  double At(int64_t flat_index) const;
  std::vector<double> ToVector() const;

  std::string DebugString() const;  // "f32[2, 3] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
};

// Row-major strides for a contiguous tensor of `shape`.
Shape ContiguousStrides(const Shape& shape);

// SM_CHECKs that contiguous a and b start at the same address (an in-place
// call) or share no byte: what an op that reads each element before it
// writes it allows (a partial overlap would read values already written).
// `op` names the op in the message.
void CheckSameOrDisjoint(const char* op, const Tensor& a, const Tensor& b);

}  // namespace scalemoe
