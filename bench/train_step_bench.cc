// Training-step throughput of a preset through the real trainer (Train(),
// launch/trainer.h) on synthetic data: tokens/s, step time (median, p10,
// p90 of the timed steps after warm-up), achieved TFLOP/s and MFU by
// Megatron's FLOP count (launch/megatron_flops.h), and peak device memory.
// bench/torch_reference.py prints the same fields for the PyTorch version of
// the model; bench/gpu_bench.sh runs both and tabulates them.
//
// usage: train_step_bench --config FILE [--set a.b=v]... [--steps N] [--warmup W]
//                         [--profile-steps P] [--label NAME] [--data-dir DIR]
// Run from the repository root (presets name configs/...). The steps are
// quiet (no logging, evaluation or checkpoint until the last); on CUDA each
// step end is a CUDA event on the trainer's stream, on the CPU the host clock
// (CPU ops are synchronous). With --profile-steps P > 0, P more steps run
// with the op timer (core/op_timer.h) on and a table of where their time
// went is printed; they are not among the timed steps.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/synthetic_dataset.h"
#include "core/allocator.h"
#include "core/op_timer.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "launch/megatron_flops.h"
#include "launch/trainer.h"
#include "nlohmann/json.hpp"

#if SCALEMOE_CUDA
#include <cuda_runtime.h>
#endif

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: train_step_bench --config FILE [--set a.b=v]... [--steps N] [--warmup W]\n"
    "                        [--profile-steps P] [--label NAME] [--data-dir DIR]\n"
    "  Times N training steps (default 20, at least 1; >= 20 for the issue's\n"
    "  figures) after W >= 1 warm-up steps (default 3) of the preset FILE on synthetic\n"
    "  random token ids (written to DIR, default a temporary directory).\n"
    "  --profile-steps P  P further steps with the op timer on: a table per op\n"
    "                     category (default 0 = none)\n"
    "  --label NAME       names the run in the output (default: the preset name)\n"
    "  Prints one result line (with the system allocations and host reads of the\n"
    "  timed steps), what the caching allocator held at its peak\n"
    "  (\"allocator peak ...\": block sizes and counts) and one line starting\n"
    "  BENCH_JSON.\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "train_step_bench: %s\n", message.c_str());
  return 2;
}

// Nearest-rank quantile q in [0, 1] of sorted values.
double Quantile(const std::vector<double>& sorted, double q) {
  const size_t i = static_cast<size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Marks step ends on the trainer's stream (CUDA events) or host clock (CPU),
// and reads elapsed milliseconds between marks once the run is over.
class StepClock {
 public:
  ~StepClock() {
#if SCALEMOE_CUDA
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
#endif
  }
  void Mark(const ExecContext& ctx) {
#if SCALEMOE_CUDA
    if (ctx.device() == Device::kCUDA) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      cudaEventRecord(e, static_cast<cudaStream_t>(ctx.stream()));
      events_.push_back(e);
      return;
    }
#else
    (void)ctx;
#endif
    host_.push_back(std::chrono::steady_clock::now());
  }
  size_t size() const { return events_size() + host_.size(); }
  // Milliseconds from mark i to mark j (waits for mark j on CUDA).
  double Ms(size_t i, size_t j) const {
#if SCALEMOE_CUDA
    if (!events_.empty()) {
      cudaEventSynchronize(events_[j]);
      float ms = 0;
      cudaEventElapsedTime(&ms, events_[i], events_[j]);
      return ms;
    }
#endif
    return std::chrono::duration<double, std::milli>(host_[j] - host_[i]).count();
  }

 private:
  size_t events_size() const {
#if SCALEMOE_CUDA
    return events_.size();
#else
    return 0;
#endif
  }
#if SCALEMOE_CUDA
  std::vector<cudaEvent_t> events_;
#endif
  std::vector<std::chrono::steady_clock::time_point> host_;
};

// Device memory in use (bytes) as the driver sees it; 0 on the CPU.
int64_t DeviceUsedBytes(const ExecContext* ctx) {
#if SCALEMOE_CUDA
  if (ctx == nullptr || ctx->device() == Device::kCUDA) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      return static_cast<int64_t>(total_bytes - free_bytes);
    }
  }
#else
  (void)ctx;
#endif
  return 0;
}

// The op timer's events add host work per op, so a launch-bound step runs
// slower profiled: the header gives both step times.
void PrintProfile(const std::string& label, const std::vector<op_timer::OpTime>& ops,
                  int profile_steps, double step_ms, double timed_median_ms) {
  std::map<std::string, std::pair<double, int64_t>> by_category;
  double op_ms = 0;
  for (const auto& o : ops) {
    by_category[o.category].first += o.ms / profile_steps;
    by_category[o.category].second += o.calls / profile_steps;
    op_ms += o.ms / profile_steps;
  }
  std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(by_category.begin(),
                                                                       by_category.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  std::printf(
      "where the time goes: %s, %d profiled step(s) of %.2f ms (op timer on; timed median %.2f "
      "ms)\n",
      label.c_str(), profile_steps, step_ms, timed_median_ms);
  std::printf("| category | ms/step | %% of step | ops/step |\n|---|---:|---:|---:|\n");
  nlohmann::json categories = nlohmann::json::object();
  for (const auto& [category, v] : rows) {
    std::printf("| %s | %.3f | %.1f | %lld |\n", category.c_str(), v.first, 100 * v.first / step_ms,
                static_cast<long long>(v.second));
    categories[category] = v.first;
  }
  const double gaps = std::max(0.0, step_ms - op_ms);
  std::printf("| idle/launch gaps + non-op work | %.3f | %.1f | |\n", gaps, 100 * gaps / step_ms);
  categories["gaps"] = gaps;
  std::printf("top ops:\n| op | category | ms/step | calls/step |\n|---|---|---:|---:|\n");
  for (size_t i = 0; i < std::min<size_t>(ops.size(), 15); ++i) {
    std::printf("| %s | %s | %.3f | %lld |\n", ops[i].op.c_str(), ops[i].category.c_str(),
                ops[i].ms / profile_steps, static_cast<long long>(ops[i].calls / profile_steps));
  }
  // The same calls split by their first tensor's shape: which call of an op
  // is the slow one (e.g. a norm's per-token backward among its weight-sized ones).
  struct ShapeRow {
    const op_timer::OpTime* op;
    const op_timer::ShapeTime* shape;
  };
  std::vector<ShapeRow> shape_rows;
  for (const auto& o : ops) {
    for (const auto& st : o.shapes) shape_rows.push_back({&o, &st});
  }
  std::sort(shape_rows.begin(), shape_rows.end(),
            [](const ShapeRow& a, const ShapeRow& b) { return a.shape->ms > b.shape->ms; });
  std::printf(
      "top op calls by first tensor's shape:\n| op | shape | ms/step | calls/step | us/call |\n"
      "|---|---|---:|---:|---:|\n");
  for (size_t i = 0; i < std::min<size_t>(shape_rows.size(), 15); ++i) {
    const op_timer::ShapeTime& st = *shape_rows[i].shape;
    std::printf("| %s | %s | %.3f | %lld | %.1f |\n", shape_rows[i].op->op.c_str(),
                st.shape.empty() ? "-" : st.shape.c_str(), st.ms / profile_steps,
                static_cast<long long>(st.calls / profile_steps), 1000 * st.ms / st.calls);
  }
  // Every op's calls per step (launch counts on CUDA: an op is one or a few
  // kernels), not only the top ones.
  nlohmann::json calls = nlohmann::json::object();
  for (const auto& o : ops) calls[o.op] = o.calls / profile_steps;
  // And every (op, shape) row, not only the printed top ones: where a
  // category's time goes (which Copy, which Axpy) without another device call.
  nlohmann::json shapes = nlohmann::json::array();
  for (const ShapeRow& r : shape_rows) {
    shapes.push_back({{"op", r.op->op},
                      {"shape", r.shape->shape},
                      {"ms_per_step", r.shape->ms / profile_steps},
                      {"calls_per_step", r.shape->calls / profile_steps}});
  }
  std::printf("BENCH_PROFILE_JSON %s\n", nlohmann::json{{"label", label},
                                                        {"step_ms", step_ms},
                                                        {"ms_per_step", categories},
                                                        {"calls_per_step", calls},
                                                        {"shapes", shapes}}
                                             .dump()
                                             .c_str());
}

int Main(int argc, char** argv) {
  StatusOr<ParsedFlags> flags =
      ParseFlags(std::vector<std::string>(argv + 1, argv + argc), {{"config"},
                                                                   {"set", true, true},
                                                                   {"steps"},
                                                                   {"warmup"},
                                                                   {"profile-steps"},
                                                                   {"label"},
                                                                   {"data-dir"}});
  if (!flags.ok()) return Fail(absl::StrCat(flags.status().message(), "\n", kUsage));
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  if (!flags->Has("config")) return Fail(absl::StrCat("--config is required\n", kUsage));
  const StatusOr<int64_t> steps = flags->GetInt("steps", 20);
  const StatusOr<int64_t> warmup = flags->GetInt("warmup", 3);
  const StatusOr<int64_t> profile = flags->GetInt("profile-steps", 0);
  for (const auto* v : {&steps, &warmup, &profile}) {
    if (!v->ok()) return Fail(std::string(v->status().message()));
  }
  // The first timed step starts where warm-up step W ends: W >= 1.
  if (*steps < 1 || *warmup < 1 || *profile < 0) {
    return Fail(absl::StrCat("--steps=", *steps, " --warmup=", *warmup, " --profile-steps=",
                             *profile, ": need steps >= 1, warmup >= 1, profile-steps >= 0"));
  }
  const int64_t total = *warmup + *steps + *profile;

  StatusOr<config::RunConfig> loaded = LoadConfig(flags->Get("config"), flags->All("set"));
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  config::RunConfig cfg = *std::move(loaded);
  const std::string label = flags->Get("label", cfg.name());

  // Quiet steps: nothing is logged, evaluated or saved before the last one
  // (which logs once and evaluates one batch; train_steps is reached).
  const std::string data_dir = flags->Has("data-dir")
                                   ? flags->Get("data-dir")
                                   : (std::filesystem::temp_directory_path() /
                                      absl::StrCat("scalemoe_step_bench_", ::getpid()))
                                         .string();
  for (const std::string& s :
       {absl::StrCat("train.train_steps=", total), std::string("train.eval_interval=0"),
        std::string("train.eval_batches=1"), std::string("checkpoint.interval=0"),
        std::string("checkpoint.save_at_end=false"), absl::StrCat("logging.log_interval=", total),
        std::string("logging.tensorboard=false"), "data.dataset_dir=" + data_dir,
        absl::StrCat("schedule.warmup_steps=",
                     std::min<int64_t>(cfg.schedule().warmup_steps(), total))}) {
    if (Status st = ApplyOverride(s, &cfg); !st.ok()) return Fail(st.ToString());
  }
  if (Status st = ValidateConfig(cfg, 1); !st.ok()) return Fail(st.ToString());

  const auto& train = cfg.train();
  const int64_t seq = cfg.model().seq_length();
  const int64_t global_batch =
      train.global_batch_size() > 0 ? train.global_batch_size() : train.micro_batch_size();
  const int64_t tokens_per_step = global_batch * seq;
  // Windows of T+1 tokens: 4 steps' worth for train (the loader reshuffles
  // each epoch), one global batch for the final evaluation.
  const int64_t train_windows = std::max<int64_t>(4 * global_batch, 64);
  if (Status st = bench::WriteSyntheticDataset(data_dir, cfg.model().vocab_size(),
                                               train_windows * seq + 1, global_batch * seq + 1,
                                               /*seed=*/1234);
      !st.ok()) {
    return Fail(st.ToString());
  }

  const bool cuda = train.device() == config::TrainConfig::CUDA;
#if SCALEMOE_CUDA
  if (cuda) cudaFree(nullptr);  // create the CUDA context before the baseline reading
#endif
  const int64_t used_before = cuda ? DeviceUsedBytes(nullptr) : 0;

  StepClock clock;
  int64_t device_used = 0, alloc_peak = 0;
  std::string peak_blocks;
  // System allocations (cudaMalloc/cudaFree; malloc/free on the CPU) and
  // host reads over the timed steps: the trainer's quiet_step_* fields come
  // from the last quiet step, which is an op-timed one when --profile-steps
  // is given (eager, after the graphs' replays).
  auto system_calls = [](const ExecContext& ctx) {
    const AllocatorStats s = ctx.allocator_stats();
    return s.system_allocs + s.system_frees;
  };
  int64_t timed_system_calls = 0, timed_host_reads = 0;
  TrainOptions options;
  options.config = cfg;
  options.run_dir = (std::filesystem::path(data_dir) / "run").string();
  options.quiet = true;
  options.on_step_queued = [&](int64_t done, const ExecContext& ctx) {
    if (done >= *warmup && done <= *warmup + *steps) clock.Mark(ctx);
    if (done == *warmup) {
      timed_system_calls = -system_calls(ctx);
      timed_host_reads = -ctx.counters().host_reads.load();
    }
    if (done == *warmup + *steps) {
      timed_system_calls += system_calls(ctx);
      timed_host_reads += ctx.counters().host_reads.load();
      device_used = DeviceUsedBytes(&ctx);
      alloc_peak = ctx.allocator_stats().peak_in_use_bytes;
      peak_blocks = ctx.allocator().PeakSummary();
      if (*profile > 0) op_timer::SetEnabled(true);
    }
    if (done == total && *profile > 0) {
      op_timer::SetEnabled(false);
      clock.Mark(ctx);
    }
  };
  const StatusOr<TrainResult> result = Train(options);
  op_timer::SetEnabled(false);
  if (!flags->Has("data-dir")) std::filesystem::remove_all(data_dir);
  if (!result.ok()) return Fail(result.status().ToString());

  std::vector<double> ms;
  for (int64_t i = 0; i < *steps; ++i) ms.push_back(clock.Ms(i, i + 1));
  const double profile_ms =
      *profile > 0 ? clock.Ms(*steps, *steps + 1) / static_cast<double>(*profile) : 0;
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = Quantile(sorted, 0.5), p10 = Quantile(sorted, 0.1),
               p90 = Quantile(sorted, 0.9);
  const MegatronFlops flops = CountMegatronFlops(cfg);
  const double tokens_per_s = tokens_per_step / (median * 1e-3);
  const double tflops = flops.flops_per_token * tokens_per_s * 1e-12;
  const double mfu = tflops / kH100DenseBf16Tflops;
  // The device reading comes after the timed steps. When the allocator gave
  // its cache back inside them (a cudaMalloc failed: system allocations),
  // it can be below what the steps held; its own peak in use bounds that.
  const double peak_gib =
      cuda ? std::max<double>(device_used - used_before, alloc_peak) / kGiB : 0;
  const std::string precision = config::TrainConfig::Precision_Name(train.precision());

  std::printf(
      "%s | %s %s | micro %d x global %lld x seq %lld | step %.2f ms (p10 %.2f, p90 %.2f; %lld "
      "steps) | %.0f tokens/s | %.1f TFLOP/s | MFU %.1f%% of %.0f bf16%s | peak %.2f GiB "
      "(device), caching allocator %.2f GiB | timed steps: %lld system allocations, %lld host "
      "reads\n",
      label.c_str(), result->device.c_str(), precision.c_str(), train.micro_batch_size(),
      static_cast<long long>(global_batch), static_cast<long long>(seq), median, p10, p90,
      static_cast<long long>(*steps), tokens_per_s, tflops, 100 * mfu, kH100DenseBf16Tflops,
      train.precision() == config::TrainConfig::BF16 ? "" : " (peak is bf16's: fp32 run)", peak_gib,
      alloc_peak / kGiB, static_cast<long long>(timed_system_calls),
      static_cast<long long>(timed_host_reads));
  const nlohmann::json record = {{"impl", "scalemoe"},
                                 {"label", label},
                                 {"preset", cfg.name()},
                                 {"device", result->device},
                                 {"precision", precision},
                                 {"micro_batch", train.micro_batch_size()},
                                 {"global_batch", global_batch},
                                 {"seq_length", seq},
                                 {"warmup", *warmup},
                                 {"steps", *steps},
                                 {"step_ms_median", median},
                                 {"step_ms_p10", p10},
                                 {"step_ms_p90", p90},
                                 {"tokens_per_s", tokens_per_s},
                                 {"tflops", tflops},
                                 {"mfu", mfu},
                                 {"mfu_peak_tflops", kH100DenseBf16Tflops},
                                 {"flops_per_token", flops.flops_per_token},
                                 {"active_params", flops.active_params},
                                 {"peak_gib", peak_gib},
                                 {"allocator_peak_gib", alloc_peak / kGiB},
                                 {"quiet_step_host_reads", result->quiet_step_host_reads},
                                 {"quiet_step_system_allocs", result->quiet_step_system_allocs},
                                 {"timed_steps_system_allocs", timed_system_calls},
                                 {"timed_steps_host_reads", timed_host_reads},
                                 {"cuda_graphs", train.cuda_graphs()},
                                 {"cuda_graph_replays", result->cuda_graph_replays},
                                 {"cuda_graph_captures", result->cuda_graph_captures}};
  if (train.cuda_graphs()) {
    std::printf("CUDA graphs: %lld micro-batches replayed, %lld captures, %lld eager\n",
                static_cast<long long>(result->cuda_graph_replays),
                static_cast<long long>(result->cuda_graph_captures),
                static_cast<long long>(result->cuda_graph_eager));
  }
  std::printf("allocator %s\n", peak_blocks.c_str());
  std::printf("BENCH_JSON %s\n", record.dump().c_str());
  if (*profile > 0)
    PrintProfile(label, op_timer::Collect(), static_cast<int>(*profile), profile_ms, median);
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) { return scalemoe::Main(argc, argv); }
