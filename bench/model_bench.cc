// Forward+backward throughput of the tiny CPU preset for each scale-vector
// variant, against the shared-γ baseline (SCALE_VECTORS.md: the paper
// reports <= 1.04x time and <= 1.01x memory for the unified strategy).
//
// Counters per variant: tokens/s (items_per_second), TFLOP/s (from the
// model's training FLOPs per token), parameters, and peak_MiB = the
// process's peak resident memory. Run each variant in its own process
// (bench/run_model_bench.sh does) so that peak_MiB is that variant's.
#include <fstream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/allocator.h"
#include "core/context.h"
#include "core/params.h"
#include "core/philox.h"
#include "launch/config.h"
#include "model/model.h"

namespace scalemoe {
namespace {

struct Variant {
  const char* name;
  std::vector<std::string> overrides;
};

const std::vector<Variant>& Variants() {
  static const std::vector<Variant>* v = new std::vector<Variant>{
      {"baseline_shared",
       {"scale_vectors.mode=SHARED", "scale_vectors.placement=INPUT_ONLY",
        "scale_vectors.reparam=PLAIN"}},
      {"none",
       {"scale_vectors.mode=NONE", "scale_vectors.placement=INPUT_ONLY",
        "scale_vectors.reparam=PLAIN"}},
      {"hg",
       {"scale_vectors.mode=PER_BRANCH", "scale_vectors.placement=INPUT_ONLY",
        "scale_vectors.reparam=PLAIN"}},
      {"dp",
       {"scale_vectors.mode=SHARED", "scale_vectors.placement=DUAL",
        "scale_vectors.reparam=PLAIN"}},
      {"dnp",
       {"scale_vectors.mode=SHARED", "scale_vectors.placement=DUAL_NORMALIZED",
        "scale_vectors.reparam=PLAIN"}},
      {"or",
       {"scale_vectors.mode=SHARED", "scale_vectors.placement=INPUT_ONLY",
        "scale_vectors.reparam=MAGNITUDE_DIRECTION"}},
      {"unified_hg_dnp_or",
       {"scale_vectors.mode=PER_BRANCH", "scale_vectors.placement=DUAL_NORMALIZED",
        "scale_vectors.reparam=MAGNITUDE_DIRECTION"}},
      {"unified_per_token",
       {"scale_vectors.mode=PER_BRANCH", "scale_vectors.placement=DUAL_NORMALIZED",
        "scale_vectors.reparam=MAGNITUDE_DIRECTION", "scale_vectors.fold_into_weights=false"}},
      {"unified_fold_just_in_time",
       {"scale_vectors.mode=PER_BRANCH", "scale_vectors.placement=DUAL_NORMALIZED",
        "scale_vectors.reparam=MAGNITUDE_DIRECTION", "scale_vectors.fold_just_in_time=true"}},
      {"unified_bf16_operands",
       {"scale_vectors.mode=PER_BRANCH", "scale_vectors.placement=DUAL_NORMALIZED",
        "scale_vectors.reparam=MAGNITUDE_DIRECTION", "train.precision=BF16"}},
  };
  return *v;
}

// VmHWM of /proc/self/status: the process's peak resident set.
double PeakResidentMiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

void BM_TinyForwardBackward(benchmark::State& state) {
  const Variant& variant = Variants()[state.range(0)];
  state.SetLabel(variant.name);
  StatusOr<config::RunConfig> cfg = LoadConfig("configs/tiny_cpu.textproto", variant.overrides);
  if (!cfg.ok()) {
    state.SkipWithError(std::string(cfg.status().message()).c_str());
    return;
  }
  const int64_t batch = cfg->train().micro_batch_size(), seq = cfg->model().seq_length();
  ParamRegistry registry;
  MoeTransformer model(registry, *cfg);
  if (!registry.Materialize(1, DType::kF32, Device::kCPU).ok()) {
    state.SkipWithError("materialize failed");
    return;
  }
  std::vector<int32_t> tokens(batch * seq), targets(batch * seq);
  for (int64_t i = 0; i < batch * seq; ++i) {
    tokens[i] = static_cast<int32_t>(PhiloxUniform(3, 1, i) * cfg->model().vocab_size());
    targets[i] = static_cast<int32_t>(PhiloxUniform(3, 2, i) * cfg->model().vocab_size());
  }
  const Tensor t = Tensor::FromBlob(tokens.data(), {batch, seq}, DType::kI32, Device::kCPU);
  const Tensor y = Tensor::FromBlob(targets.data(), {batch, seq}, DType::kI32, Device::kCPU);
  const ExecContext ctx;
  for (auto _ : state) {
    SM_CHECK_OK(model.PrepareStep(ctx));
    registry.ZeroGrads();
    benchmark::DoNotOptimize(model.Forward(ctx, t, y));
    SM_CHECK_OK(model.Backward(ctx, 1.0));
    SM_CHECK_OK(model.FinishBackward(ctx));
  }
  const double processed = static_cast<double>(state.iterations() * batch * seq);
  state.SetItemsProcessed(state.iterations() * batch * seq);
  state.counters["TFLOPs"] = benchmark::Counter(
      processed * model.Counts().train_flops_per_token * 1e-12, benchmark::Counter::kIsRate);
  state.counters["params"] = static_cast<double>(registry.total_local_numel());
  state.counters["peak_MiB"] = PeakResidentMiB();
  // The context's caching allocator: its peak of blocks in use, and what it
  // holds at the end (in use + cached for the next step).
  const AllocatorStats alloc = ctx.allocator().stats();
  state.counters["alloc_peak_MiB"] = static_cast<double>(alloc.peak_in_use_bytes) / (1 << 20);
  state.counters["alloc_held_MiB"] =
      static_cast<double>(alloc.in_use_bytes + alloc.cached_bytes) / (1 << 20);
}
BENCHMARK(BM_TinyForwardBackward)->DenseRange(0, 9)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace scalemoe

BENCHMARK_MAIN();
