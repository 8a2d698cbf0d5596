// The two sides of scale_vectors.fold_just_in_time on the GPU, per preset:
// what forming every W_eff of the model once costs in time (the fold as
// ScaledLinear does it under train.precision BF16: diag(u)·W·diag(γ) from
// the fp32 master into fp32, rounded once to bf16), and what keeping them
// for the step costs in memory. A kept fold forms each W_eff once per step;
// just in time forms it twice per micro-batch (forward and the backward's
// d_x) and keeps only the one in use.
//
// Timing: CUDA events around one sweep over every folded weight, median of
// kSamples after kWarmup sweeps. The weights are the whole model's as one
// rank holds it (under expert parallelism a rank holds 1/ep of the
// experts' share).
// Output, per config: parameters folded, kept bf16 W_eff bytes, the largest
// single W_eff, ms per sweep, and the micro-batch's training FLOPs (so the
// sweep can be set against the GEMM time at a measured TFLOP/s).
// usage: cuda_fold_bench CONFIG...   (run from the repository root)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "core/context.h"
#include "core/ops.h"
#include "launch/config.h"
#include "model/model.h"

namespace scalemoe {
namespace {

constexpr int kWarmup = 2, kSamples = 9;

using bench::Check;

struct Fold {
  Tensor w, u, gamma, folded, out;  // master f32, vectors f32, f32 temp, bf16 W_eff
};

void RunConfig(const ExecContext& ctx, const std::string& path) {
  StatusOr<config::RunConfig> cfg = LoadConfig(path, {});
  Check(cfg.status(), path.c_str());
  std::vector<Fold> folds;
  int64_t params = 0, largest = 0;
  {
    const std::vector<ParamSpec> specs = WholeModelSpecs(*cfg);
    uint64_t stream = 0;
    for (const ParamSpec& s : specs) {
      if (s.role != ParamRole::kLinear && s.role != ParamRole::kExpertLinear &&
          s.role != ParamRole::kLmHead) {
        continue;
      }
      Fold f;
      f.w = bench::RandomDevice(ctx, s.shape, DType::kF32, ++stream, 0.02);
      f.u = bench::RandomDevice(ctx, {s.shape[0]}, DType::kF32, ++stream, 0.02);
      f.gamma = bench::RandomDevice(ctx, {s.shape[1]}, DType::kF32, ++stream, 0.02);
      f.folded = ctx.Empty(s.shape, DType::kF32);
      f.out = ctx.Empty(s.shape, DType::kBF16);
      params += f.w.numel();
      largest = std::max(largest, f.w.numel());
      folds.push_back(std::move(f));
    }
  }
  auto sweep = [&] {
    for (const Fold& f : folds) {
      ops::ScaleRowsCols(ctx, f.w, f.u, f.gamma, f.folded);
      ops::Copy(ctx, f.folded, f.out);
    }
  };
  const double sweep_ms = bench::MedianMsPerCall(
      ctx, kWarmup, /*inner=*/1, kSamples, [&](int) { sweep(); }, "fold");
  ParamRegistry registry;
  MoeTransformer model(registry, *cfg);
  const double tokens =
      static_cast<double>(cfg->train().micro_batch_size()) * cfg->model().seq_length();
  // Bytes moved per sweep: read W (4), write and read the f32 temp (8),
  // write bf16 (2).
  const double gbps = 14.0 * static_cast<double>(params) / (sweep_ms * 1e-3) / 1e9;
  std::printf("%s\t%lld\t%.3f\t%.3f\t%.3f\t%.0f\t%.4g\n", path.c_str(),
              static_cast<long long>(params), 2.0 * params / (1 << 30), 2.0 * largest / (1 << 30),
              sweep_ms, gbps, model.Counts().train_flops_per_token * tokens);
  std::fflush(stdout);
  folds.clear();
  ctx.allocator().ReleaseCache();
}

int Main(int argc, char** argv) {
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  Check(ctx.status(), "ExecContext::Cuda(0)");
  std::printf(
      "config\tfolded_params\tkept_bf16_GiB\tlargest_GiB\tms_per_sweep\tGB/s\t"
      "train_flops_per_micro_batch\n");
  for (int i = 1; i < argc; ++i) RunConfig(*ctx, argv[i]);
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) { return scalemoe::Main(argc, argv); }
