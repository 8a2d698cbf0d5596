// Router-side MoE ops on the CPU: the capacity priority (SelectedScores),
// the per-step load statistics (AccumulateExpertLoads) and the aux-loss-free
// expert-bias update (ExpertBiasUpdate). Counts are i64 and exact.
#include "core/cpu/cpu_ops.h"
#include "core/cpu/moe_cpu_util.h"

namespace scalemoe::cpu {
namespace {

using moe_util::CheckCpu;
using moe_util::ForFloat;

constexpr DType kI32 = DType::kI32;
constexpr DType kI64 = DType::kI64;

}  // namespace

void SelectedScores(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                    const Tensor& out) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "SelectedScores: CUDA path not in this build");
  CheckCpu("SelectedScores", "scores", scores);
  CheckCpu("SelectedScores", "expert_ids", expert_ids, &kI32);
  CheckCpu("SelectedScores", "out", out);
  SM_CHECK_MSG(scores.ndim() == 2 && expert_ids.ndim() == 2 &&
                   expert_ids.dim(0) == scores.dim(0) && out.numel() == expert_ids.numel() &&
                   out.dtype() == scores.dtype(),
               "SelectedScores: scores ", scores.DebugString(), " expert_ids ",
               expert_ids.DebugString(), " out ", out.DebugString());
  const int64_t n = scores.dim(0), e = scores.dim(1), k = expert_ids.dim(1);
  const int32_t* ids = expert_ids.data<int32_t>();
  ForFloat(scores, [&](auto zero) {
    using T = decltype(zero);
    const T* s = scores.data<T>();
    T* o = out.data<T>();
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        const int32_t id = ids[t * k + j];
        SM_CHECK_MSG(id >= 0 && id < e, "SelectedScores: expert id ", id, " not in [0, ", e, ")");
        o[t * k + j] = s[t * e + id];
      }
    }
  });
}

void AccumulateExpertLoads(const ExecContext& ctx, const Tensor& counts, int64_t assignments,
                           const Tensor& step) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU,
               "AccumulateExpertLoads: CUDA path not in this build");
  CheckCpu("AccumulateExpertLoads", "counts", counts, &kI64);
  CheckCpu("AccumulateExpertLoads", "step", step, &kI64);
  const int64_t e = counts.numel();
  SM_CHECK_MSG(step.numel() == e + 1, "AccumulateExpertLoads: step ", step.DebugString(),
               " must be [E + 1] for counts ", counts.DebugString());
  const int64_t* c = counts.data<int64_t>();
  int64_t* s = step.data<int64_t>();
  int64_t kept = 0;
  for (int64_t i = 0; i < e; ++i) {
    s[i] += c[i];
    kept += c[i];
  }
  SM_CHECK_MSG(kept <= assignments, "AccumulateExpertLoads: ", kept,
               " kept assignments of only ", assignments);
  s[e] += assignments - kept;
}

void ExpertBiasUpdate(const ExecContext& ctx, const Tensor& loads, double rate,
                      const Tensor& skip, const Tensor& bias) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "ExpertBiasUpdate: CUDA path not in this build");
  CheckCpu("ExpertBiasUpdate", "loads", loads, &kI64);
  CheckCpu("ExpertBiasUpdate", "bias", bias);
  const int64_t e = loads.numel();
  SM_CHECK_MSG(bias.numel() == e && e > 0 &&
                   (bias.dtype() == DType::kF32 || bias.dtype() == DType::kF64),
               "ExpertBiasUpdate: bias ", bias.DebugString(), " for loads ",
               loads.DebugString());
  if (skip.defined()) {
    SM_CHECK_MSG(skip.dtype() == DType::kI32 && skip.numel() == 1, "ExpertBiasUpdate: skip ",
                 skip.DebugString());
    if (skip.data<int32_t>()[0] != 0) return;
  }
  const int64_t* l = loads.data<int64_t>();
  double mean = 0;
  for (int64_t i = 0; i < e; ++i) mean += static_cast<double>(l[i]);
  mean /= static_cast<double>(e);
  for (int64_t i = 0; i < e; ++i) {
    const double load = static_cast<double>(l[i]);
    const double step = rate * (load < mean ? 1.0 : load > mean ? -1.0 : 0.0);
    if (bias.dtype() == DType::kF64) {
      bias.data<double>()[i] += step;
    } else {
      bias.data<float>()[i] += static_cast<float>(step);
    }
  }
}

}  // namespace scalemoe::cpu
