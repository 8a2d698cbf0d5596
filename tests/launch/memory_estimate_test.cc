// launch/memory_estimate.h and the size rules of validation: absurd sizes
// are refused (exit 2, naming the field) instead of overflowing or filling
// the machine; real models (the presets, a 7B dense model split over 8 GPUs)
// pass; the estimate's parameter count is the built model's.
#include "launch/memory_estimate.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "model/model.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

constexpr char kTinyCpu[] = "configs/tiny_cpu.textproto";

// A Llama-7B-shaped dense model in bf16.
const std::vector<std::string> kDense7b = {
    "model.num_layers=32",         "model.hidden_size=4096",       "model.num_heads=32",
    "model.num_kv_heads=32",       "model.ffn_hidden_size=11008",  "model.vocab_size=32000",
    "model.seq_length=4096",       "model.tied_embeddings=false",  "moe.num_experts=0",
    "train.micro_batch_size=1",    "train.global_batch_size=0",    "train.precision=BF16",
    "train.device=CUDA"};

config::RunConfig Load(const std::string& path, std::vector<std::string> overrides) {
  StatusOr<config::RunConfig> c = LoadConfig(path, overrides);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : config::RunConfig();
}

std::vector<std::string> With(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(MemoryEstimateTest, ParameterCountIsTheBuiltModels) {
  struct Case {
    const char* path;
    std::vector<std::string> overrides;
  };
  for (const Case& c : std::vector<Case>{
           {kTinyCpu, {}},
           {kTinyCpu, {"moe.num_shared_experts=2", "moe.shared_expert_ffn_hidden_size=96",
                       "moe.first_dense_layers=1", "moe.moe_layer_frequency=2",
                       "model.tied_embeddings=false"}},
           {"configs/gpu_moe_125m.textproto", {}},
           {"configs/gpu_finegrained_64e.textproto", {}},
           {kTinyCpu, kDense7b}}) {
    const config::RunConfig cfg = Load(c.path, c.overrides);
    SCOPED_TRACE(std::string(c.path) + " " + testing::PrintToString(c.overrides));
    ParamRegistry registry;  // never materialized: nothing is allocated
    const MoeTransformer model(registry, cfg);
    const double counted = static_cast<double>(model.Counts().total_params);
    const MemoryEstimate est = EstimateMemory(cfg, ParallelLayout{});
    // The estimate leaves out the scale vectors and norms (well under 1%).
    EXPECT_LE(est.model_params, counted);
    EXPECT_GE(est.model_params, 0.99 * counted);
    EXPECT_EQ(est.rank_params, est.model_params);  // one rank holds it all
    EXPECT_GE(est.tensors, static_cast<double>(registry.params().size()));
  }
}

TEST(MemoryEstimateTest, SplittingDividesWhatEachRankHolds) {
  const config::RunConfig cfg = Load("configs/gpu_moe_125m.textproto", {});
  const MemoryEstimate one = EstimateMemory(cfg, ParallelLayout{});
  const MemoryEstimate ep8 = EstimateMemory(cfg, ParallelLayout{.dp = 8, .ep = 8, .world = 8});
  EXPECT_LT(ep8.rank_params, one.rank_params / 3);
  config::RunConfig zero = cfg;
  zero.mutable_parallel()->set_zero_stage(1);
  EXPECT_LT(EstimateMemory(zero, ParallelLayout{.dp = 8, .ep = 8, .edp = 1, .world = 8})
                .optimizer_bytes,
            ep8.optimizer_bytes);
}

// Each of these passed check-config; inspect and train then ran at 100% CPU
// with growing memory, printed a negative parameter count, or crashed.
TEST(MemoryEstimateTest, AbsurdSizesAreRefusedNamingTheField) {
  struct Case {
    std::vector<std::string> overrides;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {{"moe.num_experts=2000000000"},
       {"moe.num_experts=2000000000", "parameter tensors", "routed experts' weights"}},
      {{"model.hidden_size=2000000000", "model.num_heads=2", "model.num_kv_heads=2"},
       {"model.hidden_size=2000000000 is above 1048576"}},
      {{"model.ffn_hidden_size=2000000000"}, {"model.ffn_hidden_size=2000000000 is above"}},
      {{"moe.expert_ffn_hidden_size=2000000000"}, {"moe.expert_ffn_hidden_size=2000000000"}},
      {{"model.seq_length=2000000000"}, {"model.seq_length=2000000000", "layer activations"}},
      {{"train.micro_batch_size=2000000000", "train.global_batch_size=0"},
       {"train.micro_batch_size=2000000000", "layer activations"}},
      {{"train.global_batch_size=2000000000"},
       {"train.global_batch_size=2000000000 x model.seq_length=128"}},
      {{"model.hidden_size=65536", "model.vocab_size=65536"},
       {"estimated memory", "attention weights", "model.hidden_size=65536"}},
      {{"model.num_layers=2000000000"}, {"model.num_layers=2000000000", "parameter tensors"}},
      {{"train.device_memory_gib=0"}, {"train.device_memory_gib=0 must be > 0"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::PrintToString(c.overrides));
    const config::RunConfig cfg = Load(kTinyCpu, c.overrides);
    const Status s = ValidateConfig(cfg, 1);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& e : c.expected) EXPECT_THAT(std::string(s.message()), HasSubstr(e));
  }
}

// Parallel degrees whose product overflows int64 are refused, not wrapped.
TEST(MemoryEstimateTest, HugeParallelDegreesAreRefusedWithoutOverflow) {
  const config::RunConfig cfg = Load(
      kTinyCpu, {"parallel.tp=2000000000", "parallel.dp=2000000000", "parallel.pp=2",
                 "parallel.ep=2000000000", "parallel.etp=2000000000"});
  EXPECT_EQ(MinimalWorldSize(cfg), INT_MAX);
  const Status s = ValidateConfig(cfg, 8);
  EXPECT_THAT(std::string(s.message()), HasSubstr("!= world size 8"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("not divisible by parallel.etp*ep*pp"));
}

TEST(MemoryEstimateTest, RealModelsFitAndTheBudgetIsTheConfigs) {
  // A 7B dense model: over one 80 GB GPU, it fits split over eight.
  const config::RunConfig one = Load(kTinyCpu, kDense7b);
  const Status s = ValidateConfig(one, 1);
  EXPECT_THAT(std::string(s.message()),
              ::testing::AllOf(HasSubstr("above train.device_memory_gib=80"),
                               HasSubstr("dense MLP weights"), HasSubstr("parallel.tp")));
  EXPECT_TRUE(ValidateConfig(Load(kTinyCpu, With(kDense7b, {"parallel.tp=8"})), 8).ok())
      << ValidateConfig(Load(kTinyCpu, With(kDense7b, {"parallel.tp=8"})), 8);
  EXPECT_TRUE(ValidateConfig(Load(kTinyCpu, With(kDense7b, {"parallel.pp=4",
                                                             "parallel.zero_stage=1",
                                                             "train.global_batch_size=64"})),
                             32)
                  .ok());
  // On a device with room for it, one rank is fine.
  EXPECT_TRUE(
      ValidateConfig(Load(kTinyCpu, With(kDense7b, {"train.device_memory_gib=256"})), 1).ok());
  // A small budget refuses even the tiny model.
  EXPECT_THAT(std::string(ValidateConfig(Load(kTinyCpu, {"train.device_memory_gib=0.01"}), 1)
                              .message()),
              HasSubstr("train.device_memory_gib=0.01"));
}

// Attention keeps a log-sum-exp per query row, not the T x T probabilities:
// its activations grow linearly with the sequence.
TEST(MemoryEstimateTest, AttentionActivationsAreLinearInTheSequence) {
  auto attention_bytes = [](const MemoryEstimate& est) {
    double bytes = -1;
    for (const MemoryPart& part : est.parts) {
      EXPECT_THAT(part.what, ::testing::Not(HasSubstr("probabilities")));
      if (part.what == "attention log-sum-exp") bytes = part.bytes;
    }
    return bytes;
  };
  const double short_seq = attention_bytes(
      EstimateMemory(Load(kTinyCpu, With(kDense7b, {"model.seq_length=4096"})), ParallelLayout{}));
  const double long_seq = attention_bytes(
      EstimateMemory(Load(kTinyCpu, With(kDense7b, {"model.seq_length=32768"})), ParallelLayout{}));
  ASSERT_GT(short_seq, 0);
  // 32 layers x 4096 tokens x 32 heads x 4 bytes.
  EXPECT_EQ(short_seq, 32.0 * 4096 * 32 * 4);
  EXPECT_EQ(long_seq, 8 * short_seq);
}

// train.recompute: NONE keeps every layer's activations of a micro-batch
// on one stage and, under 1F1B, min(pp, micro-batches) micro-batches of a
// stage's layers on the first stage; FULL keeps one layer's (one stage) or
// one micro-batch of the stage's layers (pipeline). The log-sum-exp part
// has no boundary term, so it shows the kept layers exactly.
TEST(MemoryEstimateTest, RecomputeKeepsFewerLayers) {
  auto lse_bytes = [](const std::vector<std::string>& overrides, int pp, int dp) {
    const MemoryEstimate est = EstimateMemory(Load(kTinyCpu, With(kDense7b, overrides)),
                                              ParallelLayout{.pp = pp, .dp = dp, .world = pp * dp});
    for (const MemoryPart& part : est.parts) {
      if (part.what == "attention log-sum-exp") return part.bytes;
    }
    return -1.0;
  };
  const double layer = 4096.0 * 32 * 4;  // one layer of one micro-batch: T x H x 4 bytes
  EXPECT_EQ(lse_bytes({}, 1, 1), 32 * layer);
  EXPECT_EQ(lse_bytes({"train.recompute=FULL"}, 1, 1), layer);
  // PP4 over 32 layers, 8 micro-batches: 4 in flight on stage 0 of 8 layers.
  const std::vector<std::string> pp4 = {"parallel.pp=4", "train.global_batch_size=8"};
  EXPECT_EQ(lse_bytes(pp4, 4, 1), 4 * 8 * layer);
  EXPECT_EQ(lse_bytes(With(pp4, {"train.recompute=FULL"}), 4, 1), 8 * layer);
  // Two micro-batches: only two in flight.
  EXPECT_EQ(lse_bytes({"parallel.pp=4", "train.global_batch_size=2"}, 4, 1), 2 * 8 * layer);
  // A config refused for its activations names the recompute fix.
  const Status s = ValidateConfig(
      Load(kTinyCpu, With(kDense7b, {"parallel.tp=8", "train.micro_batch_size=64"})), 8);
  EXPECT_THAT(std::string(s.message()), HasSubstr("train.recompute=FULL"));
}

// Under BF16 the residual stream and the norms' outputs are bf16 unless
// train.fp32_residual_connection: the C-wide activations cost half, the
// routers' fp32 copies of their input aside. Measured on an H200 at
// micro-batch 8, shared-γ baseline (bench/RESULTS.md): gpu_moe_125m 16.71 GiB bf16 stream,
// 17.96 fp32; gpu_finegrained_64e 15.85 and 19.90; the estimates stay above.
TEST(MemoryEstimateTest, TheBf16ResidualStreamHalvesTheStreamsActivations) {
  auto activations = [](const char* preset, bool fp32_stream) {
    const MemoryEstimate est =
        EstimateMemory(Load(preset, {"train.micro_batch_size=8", "train.global_batch_size=8",
                                     absl::StrCat("train.fp32_residual_connection=", fp32_stream)}),
                       ParallelLayout{});
    return std::pair{est.activation_bytes, est.total_bytes()};
  };
  for (const char* preset :
       {"configs/gpu_moe_125m.textproto", "configs/gpu_finegrained_64e.textproto"}) {
    SCOPED_TRACE(preset);
    const auto [bf16_act, bf16_total] = activations(preset, false);
    const auto [fp32_act, fp32_total] = activations(preset, true);
    EXPECT_LT(bf16_act, 0.9 * fp32_act);
    EXPECT_GT(bf16_act, 0.5 * fp32_act);  // the F-wide ones were bf16 already
    EXPECT_LT(bf16_total, fp32_total);
  }
  const double gib = 1024.0 * 1024 * 1024;
  EXPECT_GE(activations("configs/gpu_moe_125m.textproto", false).second, 16.71 * gib);
  EXPECT_GE(activations("configs/gpu_finegrained_64e.textproto", false).second, 15.85 * gib);
}

// moe.fuse_permute: an MoE layer no longer holds its K permuted input rows
// (bf16, C wide) — 8,192 tokens x 2 x 768 x 2 bytes on gpu_moe_125m at
// micro-batch 8 in each of the 12 kept layers; the one the backward works
// on gathers them again for its weight gradient — except where its experts
// cannot read the permutation (capacity drops here).
TEST(MemoryEstimateTest, TheFusedPermutationKeepsNoPermutedInput) {
  auto activations = [](std::vector<std::string> sets) {
    return EstimateMemory(
               Load("configs/gpu_moe_125m.textproto",
                    With({"train.micro_batch_size=8", "train.global_batch_size=8"}, sets)),
               ParallelLayout{})
        .activation_bytes;
  };
  EXPECT_EQ(activations({}) - activations({"moe.fuse_permute=true"}), 12.0 * 8192 * 2 * 768 * 2);
  EXPECT_EQ(activations({"moe.capacity_factor=1.25"}),
            activations({"moe.capacity_factor=1.25", "moe.fuse_permute=true"}));
}

// The per-head norms (DNP, QK-norm) keep their input and an rstd a head
// row: gpu_moe_125m's unified strategy normalizes q and k (12 + 12 heads
// of 64) in 12 layers, at bf16 input (the preset's
// train.fp32_head_norm_input: false) 2 bytes an element, at fp32 input 4 —
// the difference the CPU's allocator measured (bench/RESULTS.md, Dec 5).
// The shared-γ baseline has none, and model.qk_norm brings them back.
TEST(MemoryEstimateTest, ThePerHeadNormsInputsAreCountedInTheirDtype) {
  const std::vector<std::string> shape = {"train.micro_batch_size=8", "train.global_batch_size=8"};
  const std::vector<std::string> baseline = {
      "scale_vectors.mode=SHARED", "scale_vectors.placement=INPUT_ONLY",
      "scale_vectors.reparam=PLAIN", "scale_vectors.decay_policy=NONE_1D"};
  auto norm_bytes = [&](const std::vector<std::string>& sets) {
    const MemoryEstimate est =
        EstimateMemory(Load("configs/gpu_moe_125m.textproto", With(shape, sets)), ParallelLayout{});
    double bytes = 0;
    for (const MemoryPart& part : est.parts) {
      if (part.what == "per-head norms' inputs") bytes += part.bytes;
    }
    return bytes;
  };
  const double rows = 12.0 * 8 * 1024 * (12 + 12);  // layers x tokens x normed heads
  EXPECT_EQ(norm_bytes({}), rows * (64 * 2 + 4));
  EXPECT_EQ(norm_bytes({"train.fp32_head_norm_input=true"}), rows * (64 * 4 + 4));
  EXPECT_EQ(norm_bytes({"train.precision=FP32"}), rows * (64 * 4 + 4));
  EXPECT_EQ(norm_bytes(baseline), 0);
  EXPECT_EQ(norm_bytes(With(baseline, {"model.qk_norm=true"})), rows * (64 * 2 + 4));
  EXPECT_EQ(norm_bytes(With(baseline, {"model.qk_norm=true", "train.fp32_head_norm_input=true"})),
            rows * (64 * 4 + 4));
}

// The logits and their gradient: fp32 logits with a bf16 gradient under
// BF16 on one TP rank (the head's GEMMs read it as it is), bf16 both with
// train.fp32_logits off; under TP the vocab-parallel loss keeps the logits'
// dtype, so fp32 logits have an fp32 gradient and the head's bf16 copy of
// it in the backward's working set, bf16 logits neither. fp32 both under
// FP32, whatever train.fp32_logits says.
TEST(MemoryEstimateTest, TheLogitsAreCountedInTheirDtype) {
  struct Parts {
    double logits = 0, working_set = 0;
  };
  auto parts = [](const std::vector<std::string>& sets, int tp) {
    const MemoryEstimate est =
        EstimateMemory(Load("configs/gpu_moe_125m.textproto",
                            With({"train.micro_batch_size=8", "train.global_batch_size=8",
                                  "train.fp32_logits=true"},  // the preset's are bf16
                                 sets)),
                       ParallelLayout{.tp = tp, .etp = tp, .world = tp});
    Parts p;
    for (const MemoryPart& part : est.parts) {
      if (part.what == "logits and their gradient") p.logits = part.bytes;
      if (part.what == "backward working set") p.working_set = part.bytes;
    }
    return p;
  };
  const double logits = 8.0 * 1024 * 32768;  // tokens x vocabulary
  EXPECT_EQ(parts({}, 1).logits, logits * (4 + 2));
  EXPECT_EQ(parts({"train.fp32_logits=false"}, 1).logits, logits * (2 + 2));
  EXPECT_EQ(parts({"train.precision=FP32"}, 1).logits, logits * (4 + 4));
  EXPECT_EQ(parts({"train.precision=FP32", "train.fp32_logits=false"}, 1).logits, logits * (4 + 4));
  // TP2: half the vocabulary a rank.
  const Parts fp32_tp = parts({}, 2), bf16_tp = parts({"train.fp32_logits=false"}, 2);
  EXPECT_EQ(fp32_tp.logits, logits / 2 * (4 + 4));
  EXPECT_EQ(bf16_tp.logits, logits / 2 * (2 + 2));
  EXPECT_EQ(fp32_tp.working_set - bf16_tp.working_set, logits / 2 * 2);  // d_logits' bf16 copy
}

// train.loss_chunk_tokens: the logits and their gradient of one chunk, not
// of the micro-batch (gpu_moe_125m at micro-batch 256: 48 GiB of fp32
// logits and bf16 gradient, 1.5 GiB in chunks of 8192 tokens); no change
// when a micro-batch has no more tokens than a chunk. Under TP with
// sequence parallelism the head's gathered bf16 input is counted too.
TEST(MemoryEstimateTest, TheLossInChunksCountsOneChunksLogits) {
  auto estimate = [](const std::vector<std::string>& sets, ParallelLayout layout = {}) {
    return EstimateMemory(Load("configs/gpu_moe_125m.textproto",
                               With({"train.micro_batch_size=256", "train.global_batch_size=256",
                                     "train.recompute=FULL", "train.fp32_logits=true"},
                                    sets)),
                          layout);
  };
  auto part = [](const MemoryEstimate& est, const std::string& what) {
    double bytes = 0;
    for (const MemoryPart& p : est.parts) {
      if (p.what == what) bytes += p.bytes;
    }
    return bytes;
  };
  const std::string logits = "logits and their gradient";
  const double vocab = 32768, gib = 1024.0 * 1024 * 1024;
  const MemoryEstimate whole = estimate({}), chunked = estimate({"train.loss_chunk_tokens=8192"});
  EXPECT_EQ(part(whole, logits), 256 * 1024 * vocab * 6);
  EXPECT_EQ(part(whole, logits) / gib, 48);
  EXPECT_EQ(part(chunked, logits), 8192 * vocab * 6);
  EXPECT_EQ(whole.activation_bytes - chunked.activation_bytes, (256 * 1024 - 8192) * vocab * 6);
  EXPECT_EQ(part(estimate({"train.micro_batch_size=8", "train.global_batch_size=8",
                           "train.loss_chunk_tokens=8192"}),
                 logits),
            8192 * vocab * 6);
  const std::string gathered =
      "LM head's gathered input (train.loss_chunk_tokens, sequence parallel)";
  const ParallelLayout tp2{.tp = 2, .etp = 2, .world = 2};
  EXPECT_EQ(part(estimate({"train.loss_chunk_tokens=8192", "parallel.sequence_parallel=true"}, tp2),
                 gathered),
            256 * 1024 * 768 * 2);
  EXPECT_EQ(part(estimate({"train.loss_chunk_tokens=8192"}, tp2), gathered), 0);
}

// The GPU attention backward's dSᵀ scratch (core/ops.h): per sequence and
// head the causal 64 x 64 tile pairs in bf16, the batch in slices within
// ops::kAttentionDsBudgetBytes, none when one sequence exceeds it (the d_q
// pass recomputes dS then), none in fp32.
TEST(MemoryEstimateTest, TheAttentionBackwardsDsScratchIsCountedWithinItsBudget) {
  auto ds_bytes = [](const char* preset, const std::vector<std::string>& overrides) {
    const MemoryEstimate est = EstimateMemory(Load(preset, overrides), ParallelLayout{});
    for (const MemoryPart& part : est.parts) {
      if (part.what == "attention backward's dS tiles") return part.bytes;
    }
    return 0.0;
  };
  const char* moe_125m = "configs/gpu_moe_125m.textproto";
  // Micro-batch 8 x 12 heads x 136 tile pairs (T 1024) x 8 KB: 107 MB.
  EXPECT_EQ(ds_bytes(moe_125m, {"train.micro_batch_size=8", "train.global_batch_size=8"}),
            8.0 * 12 * 136 * 8192);
  // Micro-batch 128 takes slices of 80 sequences (1 GiB / 13.4 MB).
  EXPECT_EQ(ds_bytes(moe_125m, {"train.micro_batch_size=128", "train.global_batch_size=128"}),
            80.0 * 12 * 136 * 8192);
  EXPECT_LE(80.0 * 12 * 136 * 8192, ops::kAttentionDsBudgetBytes);
  EXPECT_EQ(ds_bytes(moe_125m, {"train.micro_batch_size=8", "train.global_batch_size=8",
                                "train.precision=FP32"}),
            0.0);
  // 32 heads x T 32768: 34 GB a sequence, over the budget: recomputed.
  EXPECT_EQ(ds_bytes(kTinyCpu, With(kDense7b, {"model.seq_length=32768"})), 0.0);
  // T 4096, 64 tiles: 545 MB, one sequence a slice.
  EXPECT_EQ(ds_bytes(kTinyCpu, kDense7b), 32.0 * 2080 * 8192);
}

// inspect validated the 65536 x 65536 model and printed its counts, exit 0.
TEST(MemoryEstimateTest, InspectRefusesWhatCannotFitAndPrintsTheEstimate) {
  const Subcommand inspect = InspectCommand();
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int rc = inspect.run({"--config", kTinyCpu, "--set", "model.hidden_size=65536", "--set",
                              "model.vocab_size=65536"});
  const std::string out = ::testing::internal::GetCapturedStdout();
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(err, HasSubstr("model.hidden_size=65536"));
  ::testing::internal::CaptureStdout();
  ASSERT_EQ(inspect.run({"--config", kTinyCpu}), 0);
  EXPECT_THAT(::testing::internal::GetCapturedStdout(), HasSubstr("estimated memory:"));
}

}  // namespace
}  // namespace scalemoe
