// Internals shared by prepare.cc and prepare_corpus.cc: the validation-split
// random stream and reading the corpus file. Include only from data/prepare*.cc.
#pragma once

#include <cstdint>
#include <string>

#include "core/philox.h"
#include "core/status.h"

namespace scalemoe::prepare_internal {

inline constexpr uint64_t kValSplitStream = HashName("scalemoe/prepare/val_split");

// The whole corpus file at `path`; NotFound names the script that builds it.
StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace scalemoe::prepare_internal
