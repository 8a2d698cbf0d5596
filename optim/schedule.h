// Learning-rate schedules (ScheduleConfig): linear warm-up, then cosine decay,
// warm-up–stable–decay (WSD) or constant.
//
// Convention: the rate used by step `step` (0-based) is the schedule curve
// f(t) evaluated at t = step + 1, the number of steps completed once this one
// is done. f(0) = 0, f(warmup_steps) = peak_lr, and f(total_steps) = min_lr
// for COSINE and WSD, so step 0 trains at peak/warmup (never at 0), step
// warmup-1 at peak, and the last step (total_steps-1) at exactly min_lr.
//   COSINE    t <= W: peak·t/W; then min + (peak-min)·(1 + cos(π·p))/2 with
//             p = (t-W)/(T-W) clamped to [0, 1].
//   WSD       t <= W: warm-up; then peak until t = T-D with
//             D = round(wsd_decay_fraction·T); then linear from peak at T-D
//             to min at T. If the warm-up runs into the decay window the
//             decay line applies from t = W on (continuous only if W <= T-D).
//   CONSTANT  t <= W: warm-up; then peak.
// Beyond T the rate stays at its value at T. warmup_steps = 0 means none.
// The fields it relies on are checked by ValidateOptimizerConfig
// (optim/optimizer_config.h).
#pragma once

#include <cstdint>

#include "configs/scalemoe.pb.h"
#include "core/status.h"

namespace scalemoe {

double LearningRate(const config::ScheduleConfig& schedule, double peak_lr, double min_lr,
                    int64_t step, int64_t total_steps);

}  // namespace scalemoe
