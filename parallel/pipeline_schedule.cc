#include "parallel/pipeline_schedule.h"

#include <algorithm>

namespace scalemoe {

const char* PipelineScheduleName(PipelineScheduleKind kind) {
  switch (kind) {
    case PipelineScheduleKind::kGPipe: return "gpipe";
    case PipelineScheduleKind::kOneFOneB: return "1f1b";
  }
  return "?";
}

const char* PipelineOpName(PipelineOp op) {
  switch (op) {
    case PipelineOp::kRecvActivation: return "RecvActivation";
    case PipelineOp::kForward: return "Forward";
    case PipelineOp::kSendActivation: return "SendActivation";
    case PipelineOp::kRecvGrad: return "RecvGrad";
    case PipelineOp::kBackward: return "Backward";
    case PipelineOp::kSendGrad: return "SendGrad";
  }
  return "?";
}

static const char* ShortName(PipelineOp op) {
  switch (op) {
    case PipelineOp::kRecvActivation: return "RA";
    case PipelineOp::kForward: return "F";
    case PipelineOp::kSendActivation: return "SA";
    case PipelineOp::kRecvGrad: return "RG";
    case PipelineOp::kBackward: return "B";
    case PipelineOp::kSendGrad: return "SG";
  }
  return "?";
}

namespace {

// Appends actions, dropping the point-to-point ones that have no peer on
// the first or last stage.
class ScheduleBuilder {
 public:
  ScheduleBuilder(int stage, int num_stages)
      : first_(stage == 0), last_(stage == num_stages - 1) {}

  void Add(PipelineOp op, int microbatch) {
    const bool no_prev = first_ && (op == PipelineOp::kRecvActivation ||
                                    op == PipelineOp::kSendGrad);
    const bool no_next = last_ && (op == PipelineOp::kSendActivation ||
                                   op == PipelineOp::kRecvGrad);
    if (!no_prev && !no_next) actions_.push_back({op, microbatch});
  }
  void Forward(int mb) {
    Add(PipelineOp::kRecvActivation, mb);
    Add(PipelineOp::kForward, mb);
    Add(PipelineOp::kSendActivation, mb);
  }
  void Backward(int mb) {
    Add(PipelineOp::kRecvGrad, mb);
    Add(PipelineOp::kBackward, mb);
    Add(PipelineOp::kSendGrad, mb);
  }
  std::vector<PipelineAction> Take() { return std::move(actions_); }

 private:
  bool first_, last_;
  std::vector<PipelineAction> actions_;
};

std::vector<PipelineAction> OneFOneB(int stage, int num_stages, int num_microbatches) {
  ScheduleBuilder b(stage, num_stages);
  const int warmup = std::min(num_stages - stage - 1, num_microbatches);
  const int steady = num_microbatches - warmup;
  for (int mb = 0; mb < warmup; ++mb) b.Forward(mb);
  // Steady step j: forward warmup + j, backward j. The input of the next
  // forward is received right after this step's backward, before its
  // gradient is sent: the upper side of the swap with stage - 1 receives
  // first (see the header), matching stage - 1's send-then-receive.
  if (steady > 0) b.Add(PipelineOp::kRecvActivation, warmup);
  for (int j = 0; j < steady; ++j) {
    b.Add(PipelineOp::kForward, warmup + j);
    b.Add(PipelineOp::kSendActivation, warmup + j);
    b.Add(PipelineOp::kRecvGrad, j);
    b.Add(PipelineOp::kBackward, j);
    if (j + 1 < steady) b.Add(PipelineOp::kRecvActivation, warmup + j + 1);
    b.Add(PipelineOp::kSendGrad, j);
  }
  for (int mb = steady; mb < num_microbatches; ++mb) b.Backward(mb);
  return b.Take();
}

std::vector<PipelineAction> GPipe(int stage, int num_stages, int num_microbatches) {
  ScheduleBuilder b(stage, num_stages);
  for (int mb = 0; mb < num_microbatches; ++mb) b.Forward(mb);
  for (int mb = 0; mb < num_microbatches; ++mb) b.Backward(mb);
  return b.Take();
}

}  // namespace

StatusOr<std::vector<PipelineAction>> BuildPipelineSchedule(PipelineScheduleKind kind, int stage,
                                                            int num_stages,
                                                            int num_microbatches) {
  if (num_stages < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.pp = ", num_stages, ": a pipeline needs at least 1 stage (1 = no pipeline)"));
  }
  if (stage < 0 || stage >= num_stages) {
    return absl::InvalidArgumentError(absl::StrCat("pipeline stage ", stage,
                                                   " is out of range for parallel.pp = ",
                                                   num_stages, " stages"));
  }
  if (num_microbatches < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        num_microbatches, " micro-batches per pipeline step: need at least 1; set "
        "training.global_batch_size to a positive multiple of micro_batch_size * dp"));
  }
  switch (kind) {
    case PipelineScheduleKind::kGPipe: return GPipe(stage, num_stages, num_microbatches);
    case PipelineScheduleKind::kOneFOneB:
      return OneFOneB(stage, num_stages, num_microbatches);
  }
  return absl::InvalidArgumentError("unknown pipeline schedule kind");
}

double PipelineBubbleFraction(int num_stages, int num_microbatches) {
  SM_CHECK(num_stages >= 1 && num_microbatches >= 1);
  return static_cast<double>(num_stages - 1) / (num_microbatches + num_stages - 1);
}

int PeakInFlightMicrobatches(const std::vector<PipelineAction>& actions) {
  int in_flight = 0, peak = 0;
  for (const PipelineAction& a : actions) {
    if (a.op == PipelineOp::kForward) peak = std::max(peak, ++in_flight);
    if (a.op == PipelineOp::kBackward) --in_flight;
  }
  return peak;
}

std::string ScheduleString(const std::vector<PipelineAction>& actions) {
  std::string out;
  for (const PipelineAction& a : actions) {
    if (!out.empty()) out += ' ';
    absl::StrAppend(&out, ShortName(a.op), a.microbatch);
  }
  return out;
}

}  // namespace scalemoe
