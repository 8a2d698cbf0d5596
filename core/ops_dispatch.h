// What ops dispatch (core/ops_dispatch.cc) does with an op that the
// context's device has no kernel for: records an Unimplemented error on the
// context naming the op and the device, and the op does nothing. Exposed so
// that a test can check the error itself when every op has a kernel.
#pragma once

#include "core/context.h"

namespace scalemoe::ops {

void RecordUnimplemented(const ExecContext& ctx, const char* op);

}  // namespace scalemoe::ops
