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
// - Interleaved 1F1B (Megatron's virtual pipeline, v = num_chunks >= 2 model
//   chunks per rank): rank s holds chunks c = 0..v-1, which are virtual
//   stages c*p + s of a p*v-stage pipeline. Forward(c, mb)'s input comes
//   from the previous virtual stage (rank s-1 chunk c, or for s == 0 rank
//   p-1 chunk c-1; virtual stage 0 = rank 0 chunk 0 reads its own tokens),
//   its output goes to the next one (rank s+1 chunk c, or for s == p-1 rank 0
//   chunk c+1; the last virtual stage = rank p-1 chunk v-1 computes the
//   loss); gradients flow the reverse way. Compute order per rank is
//   Megatron's: forward k is chunk (k / p) % v, micro-batch
//   (k / (p*v))*p + k % p; backward k is chunk v-1 - (k / p) % v, the same
//   micro-batch; w = min((p - s - 1)*2 + (v-1)*p, m*v) warm-up forwards,
//   then one forward / one backward, then the remaining backwards. Needs
//   p >= 2, v >= 2 and m % p == 0 (Megatron's rule). Bubble fraction
//   (p - 1) / (v*m + p - 1).
//
// Every action carries the model chunk it belongs to (always 0 for GPipe and
// 1F1B): the chunk whose Forward/Backward consumes a Recv or produced a Send.
//
// Point-to-point order: the first stage has no RecvActivation/SendGrad, the
// last no SendActivation/RecvGrad. Where two neighbours swap data in the
// steady phase (stage s sends an activation and receives a gradient while
// stage s+1 receives that activation and sends a gradient), the lower stage
// sends first and the upper stage receives first, so the lists are free of
// deadlock even when Send blocks until the matching Recv (MPI's rendezvous
// protocol for large messages), not only with eager sends.
//
// Interleaved lists come from one deterministic simulation of all p ranks:
// every Forward/Backward takes one time unit and starts as soon as its rank
// is free and its input has been produced (in the compute order above);
// every point-to-point transfer is one event at its producer's completion
// time. All events (transfers before computes of the same time, then by
// rank) form one global order, and each rank's list is its own events in
// that order: a transfer is a Send on the producer and a Recv on the
// consumer. So the first unfinished event of the global order always has
// both parties at it (everything before it on both lists is earlier in the
// global order, hence done): the lists cannot deadlock with blocking or
// eager sends. Receives are posted as early as the data exists, so an input
// may arrive some compute steps before the Forward that reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

enum class PipelineScheduleKind : uint8_t { kGPipe = 0, kOneFOneB = 1, kInterleaved1F1B = 2 };
// "gpipe", "1f1b", "interleaved-1f1b"
const char* PipelineScheduleName(PipelineScheduleKind kind);

enum class PipelineOp : uint8_t {
  // "Previous"/"next" stage: the neighbouring (virtual) stage, on rank
  // stage - 1 / stage + 1 (mod p under the interleaved schedule).
  kRecvActivation = 0,  // from the previous stage: input of Forward(chunk, microbatch)
  kForward,
  kSendActivation,  // to the next stage: output of Forward(chunk, microbatch)
  kRecvGrad,        // from the next stage: gradient of Forward(chunk, microbatch)'s output
  kBackward,
  kSendGrad,  // to the previous stage: gradient of Forward(chunk, microbatch)'s input
};
const char* PipelineOpName(PipelineOp op);  // "RecvActivation", ...

struct PipelineAction {
  PipelineOp op = PipelineOp::kForward;
  int microbatch = 0;
  int chunk = 0;  // model chunk of this rank (0..num_chunks-1); 0 unless interleaved
  bool operator==(const PipelineAction&) const = default;
};

// The action list of `stage` (0 <= stage < num_stages). InvalidArgument,
// naming parallel.pp, parallel.virtual_stages or the global batch, for
// num_stages < 1, a stage out of range, num_microbatches < 1, num_chunks != 1
// for GPipe/1F1B, and for the interleaved schedule p < 2, num_chunks < 2 or
// num_microbatches not a multiple of p.
StatusOr<std::vector<PipelineAction>> BuildPipelineSchedule(PipelineScheduleKind kind, int stage,
                                                            int num_stages,
                                                            int num_microbatches,
                                                            int num_chunks = 1);

// Idle share of a step when every forward and backward takes the same time:
// (p - 1) / (v*m + p - 1) with v = num_chunks (1 for GPipe and 1F1B); 0 for
// one stage.
double PipelineBubbleFraction(int num_stages, int num_microbatches, int num_chunks = 1);

// The most (chunk, micro-batch) pairs whose Forward has run and whose
// Backward has not, at any point of `actions`: how many activation sets the
// stage stashes.
int PeakInFlightMicrobatches(const std::vector<PipelineAction>& actions);

// "F0 SA0 RG0 B0 SG0 ..." (RA/F/SA/RG/B/SG + micro-batch), for logs and
// tests; an action of a nonzero chunk appends ".chunk": "F3.1" is the
// forward of micro-batch 3 on chunk 1.
std::string ScheduleString(const std::vector<PipelineAction>& actions);

}  // namespace scalemoe
