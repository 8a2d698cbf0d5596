// Pipeline schedules: for one stage of a pipeline, the ordered list of
// actions of one training step (every micro-batch forward and backward once).
// Pure functions, no communication; the executor (parallel/pipeline_executor.h)
// runs the list.
//
// Stage s of p, m micro-batches:
// - GPipe: all forwards (RecvActivation, Forward, SendActivation per
//   micro-batch), then all backwards (RecvGrad, Backward, SendGrad) in the
//   same micro-batch order. Holds m micro-batches' activations.
// - 1F1B (PipeDream-flush, Megatron's non-interleaved schedule): w =
//   min(p - s - 1, m) warm-up forwards, then alternate one forward / one
//   backward, then the remaining m - w backwards (cool-down). Holds at most
//   min(p - s, m) micro-batches' activations. m < p is fine: the warm-up is
//   shorter and the steady phase may be empty.
// Both have the same bubble fraction (p - 1) / (m + p - 1).
//
// Point-to-point order: the first stage has no RecvActivation/SendGrad, the
// last no SendActivation/RecvGrad. Where two neighbours swap data in the
// steady phase (stage s sends an activation and receives a gradient while
// stage s+1 receives that activation and sends a gradient), the lower stage
// sends first and the upper stage receives first, so the lists are free of
// deadlock even when Send blocks until the matching Recv (MPI's rendezvous
// protocol for large messages), not only with eager sends.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

enum class PipelineScheduleKind : uint8_t { kGPipe = 0, kOneFOneB = 1 };
const char* PipelineScheduleName(PipelineScheduleKind kind);  // "gpipe", "1f1b"

enum class PipelineOp : uint8_t {
  kRecvActivation = 0,  // from stage - 1: input of Forward(microbatch)
  kForward,
  kSendActivation,  // to stage + 1: output of Forward(microbatch)
  kRecvGrad,        // from stage + 1: gradient of Forward(microbatch)'s output
  kBackward,
  kSendGrad,  // to stage - 1: gradient of Forward(microbatch)'s input
};
const char* PipelineOpName(PipelineOp op);  // "RecvActivation", ...

struct PipelineAction {
  PipelineOp op = PipelineOp::kForward;
  int microbatch = 0;
  bool operator==(const PipelineAction&) const = default;
};

// The action list of `stage` (0 <= stage < num_stages). InvalidArgument,
// naming parallel.pp or the global batch, for num_stages < 1, a stage out
// of range, or num_microbatches < 1.
StatusOr<std::vector<PipelineAction>> BuildPipelineSchedule(PipelineScheduleKind kind, int stage,
                                                            int num_stages,
                                                            int num_microbatches);

// Idle share of a step when every forward and backward takes the same time:
// (p - 1) / (m + p - 1); 0 for one stage. Same for GPipe and 1F1B.
double PipelineBubbleFraction(int num_stages, int num_microbatches);

// The most micro-batches whose Forward has run and whose Backward has not,
// at any point of `actions`: how many activation sets the stage stashes.
int PeakInFlightMicrobatches(const std::vector<PipelineAction>& actions);

// "F0 SA0 RG0 B0 SG0 ..." (RA/F/SA/RG/B/SG + micro-batch), for logs and tests.
std::string ScheduleString(const std::vector<PipelineAction>& actions);

}  // namespace scalemoe
