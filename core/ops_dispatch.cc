// ops::X routes to cpu::X or cuda::X by the context's device: the one place
// that branches on it. An op the CUDA backend does not implement (or any op
// on CUDA without the backend built) records an Unimplemented error on the
// context naming the op and the device, and does nothing; callers see it at
// their next ctx.status() check. Never a silent host fallback.
#include "core/ops_dispatch.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "core/cpu/cpu_ops.h"
#include "core/op_timer.h"
#include "core/ops.h"
#if SCALEMOE_CUDA
#include "core/cuda/cuda_ops.h"
#endif

namespace scalemoe::ops {

void RecordUnimplemented(const ExecContext& ctx, const char* op) {
  ctx.Fail(absl::UnimplementedError(absl::StrCat(
      "op ", op, " has no implementation for ", DeviceName(ctx.device()), ":",
      ctx.device_ordinal(),
#if SCALEMOE_CUDA
      " yet: run on train.device: CPU until it lands"
#else
      ": scalemoe was built without the CUDA backend (rebuild where nvcc is found)"
#endif
      )));
}

namespace {

template <typename R>
R Unimplemented(const ExecContext& ctx, const char* op) {
  RecordUnimplemented(ctx, op);
  if constexpr (std::is_same_v<R, double>) return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

#if SCALEMOE_CUDA
#define SM_CUDA_CALL_CUDA(NAME, ARGS) return cuda::NAME ARGS
#else
#define SM_CUDA_CALL_CUDA(NAME, ARGS) return Unimplemented<R>(ctx, #NAME)
#endif
#define SM_CUDA_CALL_NO_CUDA(NAME, ARGS) return Unimplemented<R>(ctx, #NAME)

#define SM_DEFINE_OP(RET, NAME, PARAMS, ARGS, CUDA)                                              \
  RET NAME PARAMS {                                                                              \
    using R [[maybe_unused]] = RET;                                                              \
    /* off: one atomic load; on: also the first tensor's shape */                                \
    const op_timer::Scope timed_op(ctx, #NAME, [&] { return op_timer::FirstTensorShape ARGS; }); \
    if (ctx.device() == Device::kCPU) return cpu::NAME ARGS;                                     \
    SM_CUDA_CALL_##CUDA(NAME, ARGS);                                                             \
  }
SM_OPS(SM_DEFINE_OP)
#undef SM_DEFINE_OP

}  // namespace scalemoe::ops
