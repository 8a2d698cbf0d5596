#include "core/host_table.h"

namespace scalemoe {
namespace {

template <typename V>
Tensor Upload(const ExecContext& ctx, const Shape& shape, const std::vector<V>& values,
              DType dtype) {
  SM_CHECK_MSG(NumElements(shape) == static_cast<int64_t>(values.size()),
               "TableToDevice: ", values.size(), " values for shape ", ShapeString(shape));
  Tensor out = ctx.Empty(shape, dtype);
  if (values.empty()) return out;
  const Tensor host = Tensor::FromBlob(const_cast<V*>(values.data()), shape, dtype, Device::kCPU);
  ctx.Fail(ctx.CopyAcross(host, out));
  if (ctx.device() != Device::kCPU) {
    // The copy reads `values` asynchronously; they die with this call.
    ctx.Fail(ctx.Synchronize());
  }
  return out;
}

}  // namespace

Tensor TableToDevice(const ExecContext& ctx, const Shape& shape,
                     const std::vector<int64_t>& values) {
  return Upload(ctx, shape, values, DType::kI64);
}

Tensor TableToDevice(const ExecContext& ctx, const Shape& shape,
                     const std::vector<double>& values) {
  return Upload(ctx, shape, values, DType::kF64);
}

double ReadScalar(const ExecContext& ctx, const Tensor& t) {
  SM_CHECK_MSG(t.defined() && t.numel() == 1, "ReadScalar of ", t.DebugString(),
               ": needs one element");
  return ctx.ToHost(t).At(0);
}

std::vector<double> ReadValues(const ExecContext& ctx, const Tensor& t) {
  return ctx.ToHost(t).ToVector();
}

}  // namespace scalemoe
