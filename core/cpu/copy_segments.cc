// CopySegments (CPU reference): ranges of one flat buffer into another, with
// dtype conversion among f32, f64 and bf16.
#include <cstring>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/multi_tensor.h"

namespace scalemoe::cpu {
namespace {

using namespace multi_tensor;

template <typename S, typename D>
void CopyRows(const S* src, D* dst, const Table& table) {
  for (int64_t s = 0; s < table.count; ++s) {
    const int64_t* r = table.row(s);
    const S* from = src + r[0];
    D* to = dst + r[1];
    if constexpr (std::is_same_v<S, D>) {
      std::memcpy(static_cast<void*>(to), static_cast<const void*>(from),
                  static_cast<size_t>(r[2]) * sizeof(S));
    } else {
      using A =
          std::conditional_t<std::is_same_v<S, double> || std::is_same_v<D, double>, double, float>;
      for (int64_t i = 0; i < r[2]; ++i) to[i] = Store<D>(Load<A>(from[i]));
    }
  }
}

}  // namespace

void CopySegments(const ExecContext&, const Tensor& src, const Tensor& dst,
                  const Tensor& segments) {
  constexpr const char* kOp = "CopySegments";
  CheckCpuContiguous(src, kOp, "src");
  CheckCpuContiguous(dst, kOp, "dst");
  const Table table = ReadTable(segments, 3, kOp);
  for (int64_t s = 0; s < table.count; ++s) {
    const int64_t* r = table.row(s);
    CheckRange(r[0], r[0] + r[2], src.numel(), kOp, "source");
    CheckRange(r[1], r[1] + r[2], dst.numel(), kOp, "destination");
  }
  DispatchStorage(src, kOp, [&](auto s) {
    using S = decltype(s);
    DispatchStorage(dst, kOp, [&](auto d) {
      using D = decltype(d);
      CopyRows(src.data<S>(), dst.data<D>(), table);
    });
  });
}

}  // namespace scalemoe::cpu
