#include "checkpoint/rank_sync.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace scalemoe::checkpoint {

Status AgreeOnStatus(Communicator* world, const Status& local, const std::string& phase,
                     double* value) {
  if (world == nullptr) return local;
  const int size = world->size();
  // [failed flag per rank..., rank 0's value]; F64 holds a pid exactly.
  Tensor flags = Tensor::Zeros({size + 1}, DType::kF64);
  double* f = flags.data<double>();
  f[world->rank()] = local.ok() ? 0.0 : 1.0;
  if (world->rank() == 0 && value != nullptr) f[size] = *value;
  Status reduced = world->AllReduceHost(flags, {ReduceOp::kSum});
  if (!reduced.ok()) {
    return absl::AbortedError(absl::StrCat("checkpoint ", phase, ": agreeing on the outcome over ",
                                           world->name(), " failed: ", reduced.message()));
  }
  if (!local.ok()) return local;
  std::vector<int> failed;
  for (int r = 0; r < size; ++r) {
    if (f[r] != 0.0) failed.push_back(r);
  }
  if (!failed.empty()) {
    return absl::AbortedError(absl::StrCat("checkpoint ", phase, " failed on rank(s) ",
                                           absl::StrJoin(failed, ","), " of ", world->name(),
                                           " (see their logs); nothing was committed or loaded"));
  }
  if (value != nullptr) *value = f[size];
  return absl::OkStatus();
}

StatusOr<std::vector<std::string>> AllGatherStrings(Communicator* world, const std::string& mine) {
  if (world == nullptr) return std::vector<std::string>{mine};
  const int size = world->size();
  Tensor my_len = Tensor::FromVector({1}, {static_cast<double>(mine.size())}, DType::kF64);
  Tensor lens = Tensor::Zeros({size}, DType::kF64);
  SM_RETURN_IF_ERROR(world->AllGatherHost(my_len, lens));
  int64_t max_len = 0;
  for (int r = 0; r < size; ++r) max_len = std::max(max_len, static_cast<int64_t>(lens.data<double>()[r]));
  // One byte per F64 element: every backend moves F64, and name lists are small.
  Tensor my_bytes = Tensor::Zeros({std::max<int64_t>(max_len, 1)}, DType::kF64);
  for (size_t i = 0; i < mine.size(); ++i) {
    my_bytes.data<double>()[i] = static_cast<unsigned char>(mine[i]);
  }
  Tensor all = Tensor::Zeros({size * my_bytes.numel()}, DType::kF64);
  SM_RETURN_IF_ERROR(world->AllGatherHost(my_bytes, all));
  std::vector<std::string> out(size);
  for (int r = 0; r < size; ++r) {
    const double* p = all.data<double>() + r * my_bytes.numel();
    const int64_t n = static_cast<int64_t>(lens.data<double>()[r]);
    for (int64_t i = 0; i < n; ++i) out[r].push_back(static_cast<char>(static_cast<unsigned char>(p[i])));
  }
  return out;
}

}  // namespace scalemoe::checkpoint
