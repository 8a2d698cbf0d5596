#include "core/op_timer.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/status.h"

#if SCALEMOE_CUDA
#include <cuda_runtime.h>
#endif

namespace scalemoe::op_timer {
namespace {

using Clock = std::chrono::steady_clock;

bool FromEnv() {
  const char* v = std::getenv("SCALEMOE_OP_TIMER");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// One op call being timed or waiting for Collect.
struct Record {
  const char* op;
  std::string shape;  // of the first tensor argument
#if SCALEMOE_CUDA
  int event = -1;  // index of its start event in Timer::events (end = +1); -1 = host timed
#endif
  double host_ms = 0;
};

struct Timer {
  std::mutex mu;
  std::vector<Record> records;
#if SCALEMOE_CUDA
  std::vector<cudaEvent_t> events;  // reused across Collects
  size_t events_used = 0;
#endif
};

Timer& TheTimer() {
  static Timer* timer = new Timer;  // never destroyed: ops may run at exit
  return *timer;
}

// Per thread: nesting depth (only the outermost op is timed) and the open call.
thread_local int depth = 0;
thread_local Record open_record;
thread_local Clock::time_point open_start;
#if SCALEMOE_CUDA
thread_local cudaStream_t open_stream = nullptr;
#endif

}  // namespace

namespace internal {
std::atomic<bool> enabled{FromEnv()};

void Start(const ExecContext& ctx, const char* op, std::string shape) {
  if (depth++ > 0) return;
  open_record = Record{op, std::move(shape)};
#if SCALEMOE_CUDA
  if (ctx.device() == Device::kCUDA) {
    Timer& t = TheTimer();
    std::lock_guard<std::mutex> lock(t.mu);
    if (t.events_used + 2 > t.events.size()) {
      for (int i = 0; i < 2; ++i) {
        cudaEvent_t e;
        SM_CHECK_MSG(cudaEventCreate(&e) == cudaSuccess, "op timer: cudaEventCreate failed");
        t.events.push_back(e);
      }
    }
    open_record.event = static_cast<int>(t.events_used);
    t.events_used += 2;
    open_stream = static_cast<cudaStream_t>(ctx.stream());
    cudaEventRecord(t.events[open_record.event], open_stream);
    return;
  }
#else
  (void)ctx;
#endif
  open_start = Clock::now();
}

void Stop() {
  if (--depth > 0) return;
  Timer& t = TheTimer();
#if SCALEMOE_CUDA
  if (open_record.event >= 0) {
    cudaEventRecord(t.events[open_record.event + 1], open_stream);
  } else
#endif
  {
    open_record.host_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - open_start).count();
  }
  std::lock_guard<std::mutex> lock(t.mu);
  t.records.push_back(open_record);
}
}  // namespace internal

void SetEnabled(bool on) { internal::enabled.store(on, std::memory_order_relaxed); }

std::vector<OpTime> Collect() {
  Timer& t = TheTimer();
  std::lock_guard<std::mutex> lock(t.mu);
  std::map<std::string, OpTime> by_op;
  std::map<std::pair<std::string, std::string>, ShapeTime> by_shape;
  for (const Record& r : t.records) {
    double ms = r.host_ms;
#if SCALEMOE_CUDA
    if (r.event >= 0) {
      float event_ms = 0;
      cudaEventSynchronize(t.events[r.event + 1]);
      cudaEventElapsedTime(&event_ms, t.events[r.event], t.events[r.event + 1]);
      ms = event_ms;
    }
#endif
    OpTime& o = by_op[r.op];
    o.op = r.op;
    o.calls += 1;
    o.ms += ms;
    ShapeTime& st = by_shape[{r.op, r.shape}];
    st.shape = r.shape;
    st.calls += 1;
    st.ms += ms;
  }
  for (auto& [key, st] : by_shape) by_op[key.first].shapes.push_back(std::move(st));
  t.records.clear();
#if SCALEMOE_CUDA
  t.events_used = 0;
#endif
  std::vector<OpTime> out;
  for (auto& [name, o] : by_op) {
    o.category = CategoryOf(name);
    std::sort(o.shapes.begin(), o.shapes.end(),
              [](const ShapeTime& a, const ShapeTime& b) { return a.ms > b.ms; });
    out.push_back(std::move(o));
  }
  std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  return out;
}

const char* CategoryOf(const std::string& op) {
  static const auto* categories = new std::map<std::string, std::set<std::string>>{
      {"GEMM", {"Gemm", "SplitBf16", "AddParts"}},
      {"expert GEMM",
       {"GroupedGemm", "GroupedGemmWeightGrad", "GroupedGemmGathered",
        "GroupedGemmWeightGradGathered", "GroupedGemmSwiGlu", "GroupedGemmSwiGluBackward"}},
      {"attention", {"CausalAttention", "CausalAttentionBackward"}},
      {"routing",
       {"RouterScores", "RouterScoresBackward", "TopKRouting", "TopKRoutingBackward",
        "TopKWeightsAt", "CapacityDrop", "LoadBalancingLoss", "LoadBalancingLossBackward", "ZLoss",
        "ZLossBackward", "AssignmentCounts", "LoadBalancingLossShare",
        "LoadBalancingLossShareBackward", "ZLossShare", "ZLossShareBackward", "SelectedScores",
        "AccumulateExpertLoads", "ExpertBiasUpdate"}},
      {"permutation",
       {"SortByExpert", "GatherRows", "GatherScaledRows", "ScatterAddRows", "GatheredRowDot",
        "InvertRowIndex", "TiledRowIndex", "SourceToExpertOrder", "SumSourceCounts", "CountOffsets",
        "CombineSlots", "SlotRowDot"}},
      {"norms+elementwise",
       {"Copy",
        "CopyHeads",
        "Axpy",
        "Scale",
        "Zero",
        "Sum",
        "ScaleRowsCols",
        "ScaleRowsColsBackward",
        "ScaleRowsColsGroup",
        "ScaleRowsColsBackwardGroup",
        "SwiGlu",
        "SwiGluBackward",
        "SwiGluPacked",
        "SwiGluPackedBackward",
        "RmsNormalize",
        "RmsNormalizeBackward",
        "AddRmsNormalize",
        "RmsNormalizeBackwardAdd",
        "ScaledRmsNormalize",
        "ScaledRmsNormalizeBackward",
        "ScaledRmsNormalizeRope",
        "ScaledRmsNormalizeRopeBackward",
        "Rope",
        "RopeBackward",
        "RopeTable",
        "Dot",
        "MagnitudeDirection",
        "MagnitudeDirectionBackward",
        "MagnitudeDirectionGroup",
        "MagnitudeDirectionBackwardGroup"}},
      {"embedding+loss",
       {"EmbeddingLookup", "EmbeddingBackward", "CrossEntropy", "VocabRowMax", "VocabSoftmaxStats",
        "VocabCrossEntropyLoss", "VocabCrossEntropyBackward", "VocabShardRows", "CountOutOfRange"}},
      {"optimizer",
       {"CopySegments", "SegmentSumOfSquares", "GradNormControl", "AdamWUpdate", "MuonMomentum",
        "FrobeniusNormalize", "MuonApply", "TrackNonFinite"}},
  };
  for (const auto& [category, ops] : *categories) {
    if (ops.count(op) > 0) return category.c_str();
  }
  return "other";
}

}  // namespace scalemoe::op_timer
