#include "core/cuda/cublaslt_api.h"

#include <dlfcn.h>

#include <mutex>

#include "absl/strings/str_cat.h"

namespace scalemoe::cuda::lt {

#define SM_CUBLASLT_DEFINE(name) decltype(&::cublasLt##name) name = nullptr;
SM_CUBLASLT_FUNCTIONS(SM_CUBLASLT_DEFINE)
#undef SM_CUBLASLT_DEFINE

namespace {

constexpr char kLibrary[] = "libcublasLt.so.13";

Status LoadOnce() {
  void* lib = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load ", kLibrary, " (", dlerror(),
                     "): install the CUDA toolkit's cuBLAS or add its lib directory to "
                     "LD_LIBRARY_PATH"));
  }
  // Kept loaded for the life of the process.
#define SM_CUBLASLT_RESOLVE(name)                                                           \
  name = reinterpret_cast<decltype(name)>(dlsym(lib, "cublasLt" #name));                    \
  if (name == nullptr) {                                                                    \
    return absl::FailedPreconditionError(                                                   \
        absl::StrCat(kLibrary, " has no cublasLt" #name ": a cuBLAS older than CUDA 13?")); \
  }
  SM_CUBLASLT_FUNCTIONS(SM_CUBLASLT_RESOLVE)
#undef SM_CUBLASLT_RESOLVE
  return absl::OkStatus();
}

}  // namespace

Status Load() {
  static const Status* status = new Status(LoadOnce());
  return *status;
}

}  // namespace scalemoe::cuda::lt
