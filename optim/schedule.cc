#include "optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace scalemoe {

double LearningRate(const config::ScheduleConfig& schedule, double peak_lr, double min_lr,
                    int64_t step, int64_t total_steps) {
  const double total = static_cast<double>(total_steps);
  const double t = std::min(static_cast<double>(step + 1), total);
  const double warmup = std::max(0, schedule.warmup_steps());
  const bool past_warmup = t >= warmup;
  switch (schedule.kind()) {
    case config::ScheduleConfig::COSINE: {
      if (!past_warmup) return peak_lr * t / warmup;
      const double span = total - warmup;
      const double progress = span <= 0 ? 1.0 : std::clamp((t - warmup) / span, 0.0, 1.0);
      return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
    }
    case config::ScheduleConfig::WSD: {
      const double decay = std::round(schedule.wsd_decay_fraction() * total);
      const double decay_start = total - decay;
      if (decay > 0 && t > decay_start && past_warmup) {
        return peak_lr + (min_lr - peak_lr) * (t - decay_start) / decay;
      }
      if (!past_warmup) return peak_lr * t / warmup;
      return peak_lr;
    }
    case config::ScheduleConfig::CONSTANT:
      if (!past_warmup) return peak_lr * t / warmup;
      return peak_lr;
  }
  return peak_lr;
}

}  // namespace scalemoe
