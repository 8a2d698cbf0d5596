// ConfigProblems: the collector every config validator appends to, so that
// one run of `scalemoe check-config` lists every rule a config breaks.
//
// One validation path: launch/config_validate.cc makes one collector and
// hands it to each module's validator in turn (model/model_config.h,
// moe/moe_config.h, norm/scale_options.h, optim/optimizer_config.h), then
// adds its own rules (layout, training, memory). Nothing else checks config
// rules; layer constructors keep only SM_CHECKs of what a validator already
// reported. Each problem reads "field=value ...: fix".
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"

namespace scalemoe {

class ConfigProblems {
 public:
  // Records the concatenated message when `ok` is false; returns `ok`.
  template <typename... Parts>
  bool Check(bool ok, const Parts&... parts) {
    if (!ok) list_.push_back(absl::StrCat(parts...));
    return ok;
  }
  bool Positive(const char* field, int64_t value) {
    return Check(value > 0, field, "=", value, " must be > 0: set a positive value");
  }
  bool NonNegative(const char* field, double value) {
    return Check(value >= 0 && std::isfinite(value), field, "=", value,
                 " must be a finite value >= 0: set 0 to disable it or a positive value");
  }
  bool InUnitInterval(const char* field, double value) {
    return Check(value >= 0 && value < 1, field, "=", value, " must be in [0, 1): e.g. 0.9");
  }

  bool empty() const { return list_.empty(); }
  const std::vector<std::string>& list() const { return list_; }

  // OK, or one InvalidArgument: "<what>, N problem(s):" and one per line.
  Status ToStatus(const std::string& what) const {
    if (list_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(what, ", ", list_.size(), " problem",
                                                   list_.size() == 1 ? "" : "s", ":\n  ",
                                                   absl::StrJoin(list_, "\n  ")));
  }

 private:
  std::vector<std::string> list_;
};

}  // namespace scalemoe
