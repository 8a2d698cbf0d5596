// TFLOP/s of ops::Gemm (cuBLASLt) on the linear layers of the gpu_moe_125m
// and gpu_finegrained_64e presets (micro-batch 8 x 1024 tokens, hidden 768),
// bf16 and f32 (exact, no TF32), for the three GEMMs of a linear layer
// y = x·Wᵀ (x [M, K] tokens, W [N, K]):
//   fwd    y[M, N]   = x · Wᵀ                 (trans_b)
//   dgrad  dx[M, K]  = dy · W
//   wgrad  dW[N, K] += dyᵀ · x                 (trans_a, beta 1; f32 dW for bf16)
// Expert layers are batched over the experts (each with its own W), with the
// tokens an expert sees when routing is balanced (tokens · top_k / experts):
// in bf16 twice, as a strided batch through cuBLASLt (forms fwd, dgrad,
// wgrad) and as the trainer runs them, row-stacked through ops::GroupedGemm
// and ops::GroupedGemmWeightGrad with device offsets (gfwd, gdgrad, gwgrad),
// and for the experts' first GEMMs once more with their input rows read
// through a shuffled token permutation (ops::GroupedGemmGathered and
// ops::GroupedGemmWeightGradGathered, moe.fuse_permute: gxfwd, gxwgrad),
// and as the stacked gate|up product [2F, C] (F = the case's out) followed
// by ops::SwiGluPacked (gglu) against ops::GroupedGemmSwiGlu, SwiGLU in the
// product's epilogue (moe.fuse_swiglu: gswiglu); and for the down
// projections the data gradient into d_h followed by
// ops::SwiGluPackedBackward (gdglu) against ops::GroupedGemmSwiGluBackward
// (gdswiglu). Their TFLOP/s count the product's FLOPs.
//
// Timing: CUDA events around kInner back-to-back calls, rotating over
// kSets input sets (so that repeated runs do not just hit L2), kSamples
// samples after kWarmup calls; the median sample / kInner per call.
// Output: one tab-separated row per case (bench/gemm_vs_torch.sh joins it
// with bench/torch_matmul_bench.py's):
//   case dtype form batch m n k ms tflops
// usage: cuda_gemm_bench            time every case
//        cuda_gemm_bench PREFIX     time the cases whose name starts with PREFIX
//        cuda_gemm_bench --list     print the cases (name batch tokens in out)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_bench_util.h"
#include "core/context.h"
#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

struct BenchCase {
  const char* name;
  int64_t batch;   // experts (1: a dense layer)
  int64_t tokens;  // M per batch
  int64_t in;      // K
  int64_t out;     // N
};

// micro_batch_size 8 x seq_length 1024 = 8192 tokens; hidden 768.
constexpr BenchCase kCases[] = {
    {"qkv_125m", 1, 8192, 768, 2304},       // 12 heads + 12 kv heads of 64
    {"qkv_64e", 1, 8192, 768, 1280},        // 12 heads + 4 kv heads of 64 (GQA)
    {"attn_out", 1, 8192, 768, 768},
    {"dense_up_64e", 1, 8192, 768, 2048},   // layer 0's gate/up
    {"dense_down_64e", 1, 8192, 2048, 768},
    {"lm_head", 1, 8192, 768, 32768},       // vocab 32768
    {"router_125m", 1, 8192, 768, 16},      // 16 experts (the router stays f32)
    {"router_64e", 1, 8192, 768, 64},       // 64 experts
    {"experts_up_125m", 16, 1024, 768, 1280},   // 16 experts, top-2
    {"experts_down_125m", 16, 1024, 1280, 768},
    {"experts_up_64e", 64, 1024, 768, 256},     // 64 experts, top-8
    {"experts_down_64e", 64, 1024, 256, 768},
};

constexpr int kSets = 3, kWarmup = 3, kInner = 4, kSamples = 25;

enum class Form {
  kFwd,
  kDgrad,
  kWgrad,
  kGroupedFwd,
  kGroupedDgrad,
  kGroupedWgrad,
  kGatheredFwd,
  kGatheredWgrad,
  kGateUpThenSwiGlu,
  kGateUpSwiGlu,
  kDgradThenSwiGluBackward,
  kDgradSwiGluBackward
};
const char* FormName(Form f) {
  constexpr const char* kNames[] = {"fwd",   "dgrad",   "wgrad", "gfwd",    "gdgrad", "gwgrad",
                                    "gxfwd", "gxwgrad", "gglu",  "gswiglu", "gdglu",  "gdswiglu"};
  return kNames[static_cast<int>(f)];
}
// The gathered and SwiGLU forms are the experts' first GEMMs: only the up
// projections (input = hidden).
bool FirstGemmOnly(Form f) { return f >= Form::kGatheredFwd && f <= Form::kGateUpSwiGlu; }
// The SwiGLU backward forms are the down projections' data gradients.
bool DownOnly(Form f) { return f >= Form::kDgradThenSwiGluBackward; }
bool Gathered(Form f) { return f == Form::kGatheredFwd || f == Form::kGatheredWgrad; }
bool GateUp(Form f) { return f == Form::kGateUpThenSwiGlu || f == Form::kGateUpSwiGlu; }
bool Grouped(Form f) { return f >= Form::kGroupedFwd; }

using bench::Check;
using bench::RandomDevice;

struct Set {
  Tensor x, w, y, dx, dw;  // y doubles as dy
};

double TimeCase(const ExecContext& ctx, const BenchCase& bc, DType dtype, Form form) {
  const bool batched = bc.batch > 1;
  auto shape = [&](int64_t r, int64_t c) {
    return batched ? Shape{bc.batch, r, c} : Shape{r, c};
  };
  std::vector<Set> sets;
  for (int s = 0; s < kSets; ++s) {
    Set set;
    const uint64_t base = 100 * static_cast<uint64_t>(s);
    set.x = RandomDevice(ctx, shape(bc.tokens, bc.in), dtype, base + 1, 1.0);
    set.w = RandomDevice(ctx, shape(bc.out, bc.in), dtype, base + 2, 0.02);
    set.y = RandomDevice(ctx, shape(bc.tokens, bc.out), dtype, base + 3, 1.0);
    set.dx = ctx.Empty(shape(bc.tokens, bc.in), dtype);
    set.dw = RandomDevice(ctx, shape(bc.out, bc.in), DType::kF32, base + 4, 1.0);  // f32 grads
    sets.push_back(std::move(set));
  }
  auto call = [&](int i) {
    const Set& s = sets[i % kSets];
    switch (form) {
      case Form::kFwd: ops::Gemm(ctx, s.x, s.w, s.y, {.trans_b = ops::Trans::kYes}); break;
      case Form::kDgrad: ops::Gemm(ctx, s.y, s.w, s.dx); break;
      case Form::kWgrad:
        ops::Gemm(ctx, s.y, s.x, s.dw, {.trans_a = ops::Trans::kYes, .beta = 1.0});
        break;
      default:
        break;
    }
  };
  return bench::MedianMsPerCall(ctx, kWarmup, kInner, kSamples, call, "Gemm");
}

// The grouped forms: the experts' rows stacked [E·T, ·], balanced offsets,
// each expert's W (and f32 dW) its own tensor of a MatrixGroup.
struct GroupedSet {
  Tensor x, y, dx, offsets;
  ops::MatrixGroup w, dw;
  Tensor tokens, rows;  // gathered forms: x = tokens[rows[i] / top_k]
  Tensor gate_up, h;    // gate|up forms: W [2F, C], gate_up [rows, 2F], h [rows, F]
};
constexpr int64_t kTokens = 8192;  // a micro-batch: rows = kTokens · top_k

double TimeGroupedCase(const ExecContext& ctx, const BenchCase& bc, Form form) {
  const int64_t rows = bc.batch * bc.tokens;
  const int top_k = static_cast<int>(rows / kTokens);
  std::vector<int64_t> offsets;
  for (int64_t e = 0; e <= bc.batch; ++e) offsets.push_back(e * bc.tokens);
  std::vector<GroupedSet> sets;
  for (int s = 0; s < kSets; ++s) {
    GroupedSet set;
    const uint64_t base = 100 * static_cast<uint64_t>(s);
    set.x = RandomDevice(ctx, {rows, bc.in}, DType::kBF16, base + 1, 1.0);
    set.y = RandomDevice(ctx, {rows, bc.out}, DType::kBF16, base + 3, 1.0);
    set.dx = ctx.Empty({rows, bc.in}, DType::kBF16);
    set.offsets = TableToDevice(ctx, {bc.batch + 1}, offsets);
    if (Gathered(form)) {
      std::vector<int32_t> slots(rows);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), std::mt19937_64(base + 5));
      Tensor host = Tensor::Empty({rows}, DType::kI32);
      std::copy(slots.begin(), slots.end(), host.data<int32_t>());
      set.rows = ctx.ToDevice(host);
      set.tokens = RandomDevice(ctx, {kTokens, bc.in}, DType::kBF16, base + 2, 1.0);
    }
    std::vector<Tensor> w, dw;
    const int64_t w_rows = GateUp(form) ? 2 * bc.out : bc.out;
    if (GateUp(form)) {
      set.gate_up = ctx.Empty({rows, 2 * bc.out}, DType::kBF16);
      set.h = ctx.Empty({rows, bc.out}, DType::kBF16);
    }
    if (DownOnly(form)) {  // the forward's gate|up of the down projection's F = in
      set.gate_up = RandomDevice(ctx, {rows, 2 * bc.in}, DType::kBF16, base + 6, 1.0);
      set.h = ctx.Empty({rows, 2 * bc.in}, DType::kBF16);  // d_gate_up
    }
    for (int64_t e = 0; e < bc.batch; ++e) {
      w.push_back(RandomDevice(ctx, {w_rows, bc.in}, DType::kBF16, base + 10 + 2 * e, 0.02));
      dw.push_back(RandomDevice(ctx, {bc.out, bc.in}, DType::kF32, base + 11 + 2 * e, 1.0));
    }
    set.w = ops::MakeMatrixGroup(ctx, std::move(w));
    set.dw = ops::MakeMatrixGroup(ctx, std::move(dw));
    sets.push_back(std::move(set));
  }
  auto call = [&](int i) {
    const GroupedSet& s = sets[i % kSets];
    switch (form) {
      case Form::kGroupedFwd:
        ops::GroupedGemm(ctx, s.x, s.w, s.offsets, s.y, {.trans_b = ops::Trans::kYes});
        break;
      case Form::kGroupedDgrad:
        ops::GroupedGemm(ctx, s.y, s.w, s.offsets, s.dx, {.trans_b = ops::Trans::kNo});
        break;
      case Form::kGroupedWgrad:
        ops::GroupedGemmWeightGrad(ctx, s.y, s.x, s.offsets, s.dw, 1.0);
        break;
      case Form::kGatheredFwd:
        ops::GroupedGemmGathered(ctx, s.tokens, s.rows, top_k, s.w, s.offsets, s.y,
                                 {.trans_b = ops::Trans::kYes});
        break;
      case Form::kGatheredWgrad:
        ops::GroupedGemmWeightGradGathered(ctx, s.y, s.tokens, s.rows, top_k, s.offsets, s.dw, 1.0);
        break;
      case Form::kGateUpThenSwiGlu:
        ops::GroupedGemm(ctx, s.x, s.w, s.offsets, s.gate_up, {.trans_b = ops::Trans::kYes});
        ops::SwiGluPacked(ctx, s.gate_up, s.h);
        break;
      case Form::kGateUpSwiGlu:
        ops::GroupedGemmSwiGlu(ctx, s.x, Tensor(), 1, s.w, s.offsets, s.gate_up, s.h);
        break;
      case Form::kDgradThenSwiGluBackward:
        ops::GroupedGemm(ctx, s.y, s.w, s.offsets, s.dx, {.trans_b = ops::Trans::kNo});
        ops::SwiGluPackedBackward(ctx, s.gate_up, s.dx, s.h);
        break;
      case Form::kDgradSwiGluBackward:
        ops::GroupedGemmSwiGluBackward(ctx, s.y, s.w, s.offsets, s.gate_up, s.h);
        break;
      default:
        break;
    }
  };
  return bench::MedianMsPerCall(ctx, kWarmup, kInner, kSamples, call, "GroupedGemm");
}

int Main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--list") == 0) {
    for (const BenchCase& bc : kCases) {
      std::printf("%s\t%lld\t%lld\t%lld\t%lld\n", bc.name, static_cast<long long>(bc.batch),
                  static_cast<long long>(bc.tokens), static_cast<long long>(bc.in),
                  static_cast<long long>(bc.out));
    }
    return 0;
  }
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  Check(ctx.status(), "ExecContext::Cuda(0)");
  const std::string prefix = argc > 1 ? argv[1] : "";
  std::printf("case\tdtype\tform\tbatch\tm\tn\tk\tms\ttflops\n");
  for (const BenchCase& bc : kCases) {
    if (std::string(bc.name).rfind(prefix, 0) != 0) continue;
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      for (Form form :
           {Form::kFwd, Form::kDgrad, Form::kWgrad, Form::kGroupedFwd, Form::kGroupedDgrad,
            Form::kGroupedWgrad, Form::kGatheredFwd, Form::kGatheredWgrad, Form::kGateUpThenSwiGlu,
            Form::kGateUpSwiGlu, Form::kDgradThenSwiGluBackward, Form::kDgradSwiGluBackward}) {
        if (Grouped(form) && (bc.batch == 1 || dtype != DType::kBF16)) continue;
        if (FirstGemmOnly(form) && std::string(bc.name).rfind("experts_up", 0) != 0) continue;
        if (DownOnly(form) && std::string(bc.name).rfind("experts_down", 0) != 0) continue;
        // The product's M x N x K for this form.
        int64_t m = bc.tokens, n = bc.out, k = bc.in;  // fwd: [M, K] x [K, N]
        if (form == Form::kDgrad || form == Form::kGroupedDgrad || DownOnly(form))
          std::swap(n, k);                                          // [M, N] x [N, K]
        if (form == Form::kWgrad || form == Form::kGroupedWgrad ||
            form == Form::kGatheredWgrad) {  // [N, M] x [M, K]
          m = bc.out;
          n = bc.in;
          k = bc.tokens;
        }
        if (GateUp(form)) n = 2 * bc.out;  // the stacked gate|up product
        const double ms =
            Grouped(form) ? TimeGroupedCase(*ctx, bc, form) : TimeCase(*ctx, bc, dtype, form);
        const double tflops = 2.0 * bc.batch * m * n * k / (ms * 1e-3) / 1e12;
        std::printf("%s\t%s\t%s\t%lld\t%lld\t%lld\t%lld\t%.4f\t%.1f\n", bc.name,
                    dtype == DType::kBF16 ? "bf16" : "fp32", FormName(form),
                    static_cast<long long>(bc.batch), static_cast<long long>(m),
                    static_cast<long long>(n), static_cast<long long>(k), ms, tflops);
        std::fflush(stdout);
      }
      ctx->allocator().ReleaseCache();  // this case's buffers back to the system
    }
  }
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) { return scalemoe::Main(argc, argv); }
