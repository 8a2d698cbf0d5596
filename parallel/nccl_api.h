// NCCL, loaded on first use (dlopen) instead of linked, as cuBLASLt is
// (core/cuda/cublaslt_api.h): a CUDA build still runs on a machine without
// libnccl (the MPI path stages device buffers through the host), and a run
// that asks for NCCL there gets a Status naming the library, not a loader
// error at start-up. Built only with the CUDA backend.
//
// Each entry is the NCCL function of the same name without "nccl".
#pragma once

#include <nccl.h>

#include <string>

#include "core/status.h"

namespace scalemoe::nccl {

// Loads libnccl.so.2 (once; later calls return the first outcome) and checks
// that it is NCCL 2.18 or newer (ncclCommSplit).
Status Load();

// "NCCL 2.28.9" of the loaded library (Load() must have succeeded).
std::string VersionText();

// ncclGetErrorString of `result` plus ncclGetLastError's detail when there
// is one (the library must be loaded).
std::string ErrorText(ncclResult_t result, ncclComm_t comm = nullptr);

#define SM_NCCL_FUNCTIONS(X)                                                                      \
  X(GetVersion)                                                                                   \
  X(GetUniqueId)                                                                                  \
  X(CommInitRank) X(CommSplit) X(CommDestroy) X(CommAbort) X(CommGetAsyncError) X(GetErrorString) \
      X(GetLastError) X(AllReduce) X(ReduceScatter) X(AllGather) X(Broadcast) X(Send) X(Recv)     \
          X(GroupStart) X(GroupEnd)

#define SM_NCCL_DECLARE(name) extern decltype(&::nccl##name) name;
SM_NCCL_FUNCTIONS(SM_NCCL_DECLARE)
#undef SM_NCCL_DECLARE

}  // namespace scalemoe::nccl
