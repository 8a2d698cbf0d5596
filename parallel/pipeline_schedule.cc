#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <tuple>

namespace scalemoe {

const char* PipelineScheduleName(PipelineScheduleKind kind) {
  switch (kind) {
    case PipelineScheduleKind::kGPipe: return "gpipe";
    case PipelineScheduleKind::kOneFOneB: return "1f1b";
    case PipelineScheduleKind::kInterleaved1F1B: return "interleaved-1f1b";
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

// Interleaved 1F1B, built from one simulation of all ranks (see the header).
class InterleavedSimulation {
 public:
  InterleavedSimulation(int p, int m, int v) : p_(p), m_(m), v_(v) {}

  // Megatron's compute order of rank r: (is_forward, chunk, micro-batch).
  struct Compute {
    bool forward;
    int chunk, mb;
  };
  std::vector<Compute> ComputeOrder(int r) const {
    const int total = m_ * v_;
    const int warmup = std::min((p_ - r - 1) * 2 + (v_ - 1) * p_, total);
    auto mb_of = [&](int k) { return (k / (p_ * v_)) * p_ + k % p_; };
    auto fwd = [&](int k) { return Compute{true, (k / p_) % v_, mb_of(k)}; };
    auto bwd = [&](int k) { return Compute{false, v_ - 1 - (k / p_) % v_, mb_of(k)}; };
    std::vector<Compute> order;
    for (int k = 0; k < warmup; ++k) order.push_back(fwd(k));
    for (int i = 0; i < total - warmup; ++i) {
      order.push_back(fwd(warmup + i));
      order.push_back(bwd(i));
    }
    for (int k = total - warmup; k < total; ++k) order.push_back(bwd(k));
    return order;
  }

  // All ranks' action lists.
  std::vector<std::vector<PipelineAction>> Run() const {
    const int vs_count = p_ * v_;
    // f_done / b_done[virtual stage][mb]: when that Forward / Backward
    // finished, -1 if not yet.
    std::vector<std::vector<int>> f_done(vs_count, std::vector<int>(m_, -1));
    std::vector<std::vector<int>> b_done = f_done;
    std::vector<std::vector<Compute>> orders;
    for (int r = 0; r < p_; ++r) orders.push_back(ComputeOrder(r));
    std::vector<size_t> pc(p_, 0);
    // Ordered by (time, kind 0 = transfer / 1 = compute, rank, sequence).
    struct Event {
      int time, kind, rank, seq;
      PipelineOp op;  // kForward/kBackward, or kSendActivation/kSendGrad for transfers
      int chunk, mb, to_rank, to_chunk;
    };
    std::vector<Event> events;
    size_t remaining = 0;
    for (const auto& o : orders) remaining += o.size();
    for (int t = 0; remaining > 0; ++t) {
      bool started = false;
      for (int r = 0; r < p_; ++r) {
        if (pc[r] == orders[r].size()) continue;
        const Compute& c = orders[r][pc[r]];
        const int vs = c.chunk * p_ + r;
        auto ready = [&](int done_at) { return done_at >= 0 && done_at <= t; };
        if (c.forward ? (vs > 0 && !ready(f_done[vs - 1][c.mb]))
                      : (!ready(f_done[vs][c.mb]) ||
                         (vs < vs_count - 1 && !ready(b_done[vs + 1][c.mb])))) {
          continue;
        }
        started = true;
        ++pc[r];
        --remaining;
        const int seq = static_cast<int>(events.size());
        events.push_back({t, 1, r, seq, c.forward ? PipelineOp::kForward : PipelineOp::kBackward,
                          c.chunk, c.mb, -1, -1});
        (c.forward ? f_done : b_done)[vs][c.mb] = t + 1;
        const int to = c.forward ? vs + 1 : vs - 1;
        if (to >= 0 && to < vs_count) {
          events.push_back({t + 1, 0, r, seq + 1,
                            c.forward ? PipelineOp::kSendActivation : PipelineOp::kSendGrad,
                            c.chunk, c.mb, to % p_, to / p_});
        }
      }
      // A step where no rank could start means the compute orders wait on
      // each other: every compute started before t has finished by t, so
      // nothing would change later either.
      SM_CHECK_MSG(started, "interleaved compute orders stall");
    }
    std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
      return std::tie(a.time, a.kind, a.rank, a.seq) < std::tie(b.time, b.kind, b.rank, b.seq);
    });
    std::vector<std::vector<PipelineAction>> lists(p_);
    for (const Event& e : events) {
      lists[e.rank].push_back({e.op, e.mb, e.chunk});
      if (e.kind == 0) {
        const PipelineOp recv = e.op == PipelineOp::kSendActivation ? PipelineOp::kRecvActivation
                                                                    : PipelineOp::kRecvGrad;
        lists[e.to_rank].push_back({recv, e.mb, e.to_chunk});
      }
    }
    return lists;
  }

 private:
  int p_, m_, v_;
};

}  // namespace

StatusOr<std::vector<PipelineAction>> BuildPipelineSchedule(PipelineScheduleKind kind, int stage,
                                                            int num_stages,
                                                            int num_microbatches,
                                                            int num_chunks) {
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
        "train.global_batch_size to a positive multiple of micro_batch_size * dp"));
  }
  if (kind == PipelineScheduleKind::kInterleaved1F1B) {
    if (num_stages < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the interleaved-1f1b schedule needs parallel.pp >= 2, got parallel.pp = ", num_stages,
          ": use the 1f1b schedule (or no pipeline) on one stage"));
    }
    if (num_chunks < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the interleaved-1f1b schedule needs parallel.virtual_stages >= 2 model chunks per "
          "rank, got ", num_chunks, ": set parallel.virtual_stages >= 2 or use the 1f1b "
          "schedule"));
    }
    if (num_microbatches % num_stages != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the interleaved-1f1b schedule needs the micro-batch count to be a multiple of "
          "parallel.pp = ", num_stages, ", got ", num_microbatches,
          " micro-batches: set train.global_batch_size so that global_batch_size / "
          "(micro_batch_size * dp) is a multiple of parallel.pp"));
    }
    return InterleavedSimulation(num_stages, num_microbatches, num_chunks).Run()[stage];
  }
  if (num_chunks != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.virtual_stages = ", num_chunks, " but the ", PipelineScheduleName(kind),
        " schedule runs one model chunk per rank: set parallel.virtual_stages = 1 or use the "
        "interleaved-1f1b schedule"));
  }
  switch (kind) {
    case PipelineScheduleKind::kInterleaved1F1B: break;  // handled above
    case PipelineScheduleKind::kGPipe: return GPipe(stage, num_stages, num_microbatches);
    case PipelineScheduleKind::kOneFOneB:
      return OneFOneB(stage, num_stages, num_microbatches);
  }
  return absl::InvalidArgumentError("unknown pipeline schedule kind");
}

double PipelineBubbleFraction(int num_stages, int num_microbatches, int num_chunks) {
  SM_CHECK(num_stages >= 1 && num_microbatches >= 1 && num_chunks >= 1);
  return static_cast<double>(num_stages - 1) /
         (static_cast<double>(num_chunks) * num_microbatches + num_stages - 1);
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
    if (a.chunk != 0) absl::StrAppend(&out, ".", a.chunk);
  }
  return out;
}

}  // namespace scalemoe
