// CollectiveWatchdog with a recording handler: a call that outlives the
// timeout fires it once with a message naming rank, node, call and group; a
// call that returns in time, or no call at all, never fires it.
#include "parallel/collective_watchdog.h"

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// Collects the handler's messages (the handler runs on the watchdog thread).
struct Recorder {
  std::mutex mu;
  std::vector<std::string> messages;
  std::vector<std::string> Get() {
    std::lock_guard<std::mutex> lock(mu);
    return messages;
  }
};

CollectiveWatchdogOptions Options(Recorder* recorder, milliseconds timeout) {
  return {.timeout = timeout,
          .world_rank = 3,
          .host = "node2",
          .timeout_setting = "parallel.collective_timeout_s",
          .on_timeout = [recorder](const std::string& m) {
            std::lock_guard<std::mutex> lock(recorder->mu);
            recorder->messages.push_back(m);
          }};
}

TEST(CollectiveWatchdogTest, CallPastTheTimeoutFiresOnceNamingRankNodeCallAndGroup) {
  Recorder recorder;
  CollectiveWatchdog watchdog(Options(&recorder, milliseconds(100)));
  const std::string group = "dp[1,3]";
  {
    CollectiveWatchdog::Scope scope = CollectiveWatchdog::Watch(&watchdog, "AllReduce", group, 1);
    std::this_thread::sleep_for(milliseconds(400));
  }
  ASSERT_EQ(recorder.Get().size(), 1u);
  EXPECT_TRUE(watchdog.fired());
  const std::string m = recorder.Get()[0];
  EXPECT_THAT(m, HasSubstr("rank 3 on node node2"));
  EXPECT_THAT(m, HasSubstr("AllReduce on dp[1,3] (group rank 1) has not returned"));
  EXPECT_THAT(m, HasSubstr("parallel.collective_timeout_s = 0.1 s"));
  EXPECT_THAT(m, HasSubstr("ending this rank so that the launcher stops the job"));
  // Later slow calls do not fire it again.
  {
    CollectiveWatchdog::Scope scope = CollectiveWatchdog::Watch(&watchdog, "Barrier", group, 1);
    std::this_thread::sleep_for(milliseconds(300));
  }
  EXPECT_EQ(recorder.Get().size(), 1u);
}

TEST(CollectiveWatchdogTest, CallsThatReturnInTimeNeverFire) {
  Recorder recorder;
  // Generous against a loaded machine: each call takes 20 ms of 1 s.
  CollectiveWatchdog watchdog(Options(&recorder, milliseconds(1000)));
  const std::string group = "world[0,1]";
  for (int i = 0; i < 10; ++i) {
    CollectiveWatchdog::Scope scope = CollectiveWatchdog::Watch(&watchdog, "Send", group, 0);
    std::this_thread::sleep_for(milliseconds(20));
  }
  // Idle time between calls does not count.
  std::this_thread::sleep_for(milliseconds(1500));
  EXPECT_TRUE(recorder.Get().empty());
  EXPECT_FALSE(watchdog.fired());
}

TEST(CollectiveWatchdogTest, NullWatchdogIsANoOp) {
  const std::string group = "tp[0]";
  CollectiveWatchdog::Scope scope = CollectiveWatchdog::Watch(nullptr, "AllGather", group, 0);
  SUCCEED();
}

}  // namespace
}  // namespace scalemoe
