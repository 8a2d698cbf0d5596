// Execution context passed to every op: which device, which stream. Passed
// explicitly (never looked up) so that layers never branch on the device.
#pragma once

#include "core/dtype.h"

namespace scalemoe {

struct ExecContext {
  Device device = Device::kCPU;
  void* stream = nullptr;  // cudaStream_t on CUDA; unused on the CPU

  static ExecContext Cpu() { return ExecContext{}; }
};

}  // namespace scalemoe
