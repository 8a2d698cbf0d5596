// `scalemoe inspect` under tensor parallelism: each parameter's global and
// per-rank shape and how its (E)TP group holds it, as the training ranks'
// ParamSpecs record it.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/commands.h"

namespace scalemoe {
namespace {

// The table row of parameter `name` (name column first, then a space).
std::string Row(const std::string& table, const std::string& name) {
  const size_t at = table.find("\n" + name + " ");
  if (at == std::string::npos) return "";
  return table.substr(at + 1, table.find('\n', at + 1) - at - 1);
}

TEST(InspectTest, ShowsTensorParallelLayoutOfEveryParameter) {
  const Subcommand inspect = InspectCommand();
  ::testing::internal::CaptureStdout();
  const int rc = inspect.run({"--config", "configs/tiny_cpu.textproto", "--world", "4", "--set",
                              "parallel.tp=2", "--set", "parallel.etp=2", "--set",
                              "parallel.sequence_parallel=true", "--set",
                              "model.sandwich_norm=true"});
  const std::string out = ::testing::internal::GetCapturedStdout();
  ASSERT_EQ(rc, 0) << out;
  struct Want {
    const char* name;
    const char* per_rank;
    const char* tp;
  };
  for (const Want& w : std::vector<Want>{
           {"embedding.weight", "[2048, 128]", "split/tp"},
           {"layers.0.attn.w_q", "[64, 128]", "split/tp"},
           {"layers.0.attn.w_o", "[128, 64]", "split/tp"},
           {"layers.0.attn.gamma_q.alpha", "[128]", "sum/tp"},
           {"layers.0.attn.u_v.alpha", "[32]", "split/tp"},
           {"layers.0.attn.u_v.beta", "[1]", "sum/tp"},
           {"layers.0.post_attn_norm.scale.alpha", "[128]", "sum/tp"},  // sequence parallel
           {"layers.0.moe.router.weight", "[8, 128]", "sum/tp"},
           {"layers.0.moe.experts.3.w_gate", "[64, 128]", "split/etp"},
           {"layers.0.moe.experts.3.w_down", "[128, 64]", "split/etp"},
           {"layers.0.moe.experts.3.gamma_up.alpha", "[128]", "sum/etp"},
           {"final_norm.scale.alpha", "[128]", "sum/tp"}}) {
    const std::string row = Row(out, w.name);
    ASSERT_FALSE(row.empty()) << w.name << " missing from\n" << out;
    EXPECT_NE(row.find(std::string("  ") + w.per_rank + "  "), std::string::npos) << row;
    EXPECT_NE(row.find(std::string("  ") + w.tp + " "), std::string::npos) << row;
  }
}

}  // namespace
}  // namespace scalemoe
