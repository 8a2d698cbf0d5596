#include "core/logging.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "absl/strings/ascii.h"

namespace scalemoe {
namespace {

struct LogState {
  int rank = 0;
  int world_size = 1;
  LogLevel level = LogLevel::kInfo;
  std::mutex mu;
  LogState() {
    const char* env = std::getenv("SCALEMOE_LOG_LEVEL");
    if (env == nullptr) return;
    std::string v = absl::AsciiStrToLower(env);
    if (v == "debug") level = LogLevel::kDebug;
    if (v == "info") level = LogLevel::kInfo;
    if (v == "warning") level = LogLevel::kWarning;
    if (v == "error") level = LogLevel::kError;
  }
};

LogState& State() {
  static LogState* state = new LogState();  // never destroyed: usable at exit
  return *state;
}

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return 'D';
    case LogLevel::kInfo: return 'I';
    case LogLevel::kWarning: return 'W';
    case LogLevel::kError: return 'E';
  }
  return '?';
}

}  // namespace

void SetLogRank(int rank, int world_size) {
  State().rank = rank;
  State().world_size = world_size;
}
void SetLogLevel(LogLevel level) { State().level = level; }
LogLevel GetLogLevel() { return State().level; }
int LogRank() { return State().rank; }
int LogWorldSize() { return State().world_size; }

void LogLine(LogLevel level, std::string_view message) {
  LogState& s = State();
  std::lock_guard<std::mutex> lock(s.mu);
  std::fprintf(stderr, "[rank %d/%d] %c %.*s\n", s.rank, s.world_size,
               LevelLetter(level), static_cast<int>(message.size()),
               message.data());
  std::fflush(stderr);
}

}  // namespace scalemoe
