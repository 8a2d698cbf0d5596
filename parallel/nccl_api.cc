#include "parallel/nccl_api.h"

#include <dlfcn.h>

#include "absl/strings/str_cat.h"

namespace scalemoe::nccl {

#define SM_NCCL_DEFINE(name) decltype(&::nccl##name) name = nullptr;
SM_NCCL_FUNCTIONS(SM_NCCL_DEFINE)
#undef SM_NCCL_DEFINE

namespace {

constexpr char kLibrary[] = "libnccl.so.2";
constexpr int kMinVersion = 21800;  // 2.18: ncclCommSplit

int loaded_version = 0;

Status LoadOnce() {
  void* lib = dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
#ifdef SCALEMOE_NCCL_LIBRARY_HINT
  // Beside the header the build found (pip's nvidia-nccl keeps it off the
  // loader's path).
  if (lib == nullptr) lib = dlopen(SCALEMOE_NCCL_LIBRARY_HINT, RTLD_NOW | RTLD_LOCAL);
#endif
  if (lib == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot load ", kLibrary, " (", dlerror(),
        "): install NCCL (libnccl2) or add its lib directory to LD_LIBRARY_PATH, or set "
        "parallel.communicator: MPI to stage device buffers through the host"));
  }
  // Kept loaded for the life of the process.
#define SM_NCCL_RESOLVE(name)                                                            \
  name = reinterpret_cast<decltype(name)>(dlsym(lib, "nccl" #name));                     \
  if (name == nullptr) {                                                                 \
    return absl::FailedPreconditionError(                                                \
        absl::StrCat(kLibrary, " has no nccl" #name ": NCCL older than 2.18? install a " \
                               "newer libnccl2"));                                       \
  }
  SM_NCCL_FUNCTIONS(SM_NCCL_RESOLVE)
#undef SM_NCCL_RESOLVE
  if (GetVersion(&loaded_version) != ncclSuccess || loaded_version < kMinVersion) {
    return absl::FailedPreconditionError(absl::StrCat(kLibrary, " reports version code ",
                                                      loaded_version, "; scalemoe needs NCCL ",
                                                      "2.18 or newer (code ", kMinVersion, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

Status Load() {
  static const Status* status = new Status(LoadOnce());
  return *status;
}

std::string VersionText() {
  // Codes since 2.9: major * 10000 + minor * 100 + patch.
  return absl::StrCat("NCCL ", loaded_version / 10000, ".", loaded_version / 100 % 100, ".",
                      loaded_version % 100);
}

std::string ErrorText(ncclResult_t result, ncclComm_t comm) {
  std::string text = GetErrorString != nullptr ? GetErrorString(result) : "NCCL error";
  absl::StrAppend(&text, " (ncclResult_t ", static_cast<int>(result), ")");
  if (GetLastError != nullptr) {
    const char* last = GetLastError(comm);
    if (last != nullptr && last[0] != '\0') absl::StrAppend(&text, ": ", last);
  }
  return text;
}

}  // namespace scalemoe::nccl
