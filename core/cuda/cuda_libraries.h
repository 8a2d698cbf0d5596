// Library handles a CUDA ExecContext creates on first use (cuBLASLt now,
// cuDNN later) and the per-shape plans ops cache in them. Owned by the
// context's CudaDevice; used only from the context's stream.
#pragma once

#include <cublasLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "core/status.h"

namespace scalemoe {

struct CudaLibraries {
  // Opaque per-op caches keyed by a shape/dtype string (e.g. a GEMM's chosen
  // algorithm); each op defines its own entry type deriving from Entry.
  struct Entry {
    virtual ~Entry() = default;
  };

  CudaLibraries() = default;
  ~CudaLibraries();
  CudaLibraries(const CudaLibraries&) = delete;
  CudaLibraries& operator=(const CudaLibraries&) = delete;

  // The cuBLASLt handle (the library loaded and the handle created on first
  // call: core/cuda/cublaslt_api.h); an error names what failed.
  StatusOr<cublasLtHandle_t> Lt();
  // Entries are never removed before the libraries die, so a pointer to one
  // stays valid after the lock is released.
  std::map<std::string, std::unique_ptr<Entry>>& cache() { return cache_; }
  // Held while looking up or filling cache() (and creating the handle):
  // threads may share a context (core/allocator.h).
  std::mutex& mu() { return mu_; }

 private:
  std::mutex mu_;
  cublasLtHandle_t lt_ = nullptr;
  std::map<std::string, std::unique_ptr<Entry>> cache_;
};

}  // namespace scalemoe
