#include "core/host_values.h"

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

std::vector<int64_t> ReadHostInts(const ExecContext& ctx, const Tensor& t) {
  SM_CHECK_MSG(t.is_contiguous() && (t.dtype() == DType::kI32 || t.dtype() == DType::kI64),
               "ReadHostInts: a contiguous i32/i64 tensor, got ", t.DebugString());
  const Tensor host = ctx.ToHost(t);
  std::vector<int64_t> out(static_cast<size_t>(host.numel()));
  if (host.dtype() == DType::kI64) {
    const int64_t* v = host.data<int64_t>();
    out.assign(v, v + host.numel());
  } else {
    const int32_t* v = host.data<int32_t>();
    out.assign(v, v + host.numel());
  }
  return out;
}

std::vector<double> ReadHostDoubles(const ExecContext& ctx, const Tensor& t) {
  SM_CHECK_MSG(t.is_contiguous() && (t.dtype() == DType::kF32 || t.dtype() == DType::kF64 ||
                                     t.dtype() == DType::kBF16),
               "ReadHostDoubles: a contiguous f32/f64/bf16 tensor, got ", t.DebugString());
  const Tensor host = ctx.ToHost(t);
  std::vector<double> out(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) {
    switch (host.dtype()) {
      case DType::kF32: out[i] = host.data<float>()[i]; break;
      case DType::kF64: out[i] = host.data<double>()[i]; break;
      default: out[i] = static_cast<float>(host.data<bf16>()[i]); break;
    }
  }
  return out;
}

}  // namespace scalemoe
