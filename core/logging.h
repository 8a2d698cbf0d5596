// Rank-aware logging. Every line carries "[rank r/w]" once the launcher has
// called SetLogRank; rank-0-only helpers keep multi-rank output readable.
// The rank identity is the one piece of process-wide state here: it describes
// the process itself, is written once at start-up and read thereafter.
// (Abseil 20220623 has no absl/log, so this is ours.)
#pragma once

#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace scalemoe {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Called once by main after rank discovery. Default: rank 0 of 1.
void SetLogRank(int rank, int world_size);
// Messages below `level` are dropped. Default kInfo; SCALEMOE_LOG_LEVEL
// (debug|info|warning|error) in the environment overrides it at start-up.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
int LogRank();
int LogWorldSize();

// Writes one line to stderr: "[rank r/w] I message". Thread-safe.
void LogLine(LogLevel level, std::string_view message);

}  // namespace scalemoe

// SM_LOG(kInfo, "loaded ", n, " shards") — arguments are absl::StrCat'ed.
#define SM_LOG(level, ...)                                                  \
  do {                                                                      \
    if (::scalemoe::LogLevel::level >= ::scalemoe::GetLogLevel())           \
      ::scalemoe::LogLine(::scalemoe::LogLevel::level,                      \
                          ::absl::StrCat(__VA_ARGS__));                     \
  } while (0)

// Same, but only rank 0 prints.
#define SM_LOG_RANK0(level, ...)                                            \
  do {                                                                      \
    if (::scalemoe::LogRank() == 0) SM_LOG(level, __VA_ARGS__);             \
  } while (0)
