// cuBLASLt, loaded on first use (dlopen) instead of linked: linking it (and
// cuBLAS) made every CPU-only process map and relocate ~200 MiB of library
// at start-up (bench/RESULTS.md, "CPU step before and after the seam"). A
// CUDA context loads it when its first GEMM needs the handle; a machine
// without the library gets a Status naming it, not a loader error at start.
//
// Each entry is the cuBLASLt function of the same name without "cublasLt".
#pragma once

#include <cublasLt.h>

#include "core/status.h"

namespace scalemoe::cuda::lt {

// Loads libcublasLt.so.13 (once; later calls return the first outcome).
Status Load();

#define SM_CUBLASLT_FUNCTIONS(X)                                                                   \
  X(Create)                                                                                        \
  X(Destroy) X(GetStatusName) X(GetStatusString) X(Matmul) X(MatmulAlgoGetHeuristic)               \
      X(MatmulDescCreate) X(MatmulDescDestroy) X(MatmulDescSetAttribute) X(MatmulPreferenceCreate) \
          X(MatmulPreferenceDestroy) X(MatmulPreferenceSetAttribute) X(MatrixLayoutCreate)         \
              X(MatrixLayoutDestroy) X(MatrixLayoutSetAttribute)

#define SM_CUBLASLT_DECLARE(name) extern decltype(&::cublasLt##name) name;
SM_CUBLASLT_FUNCTIONS(SM_CUBLASLT_DECLARE)
#undef SM_CUBLASLT_DECLARE

}  // namespace scalemoe::cuda::lt
