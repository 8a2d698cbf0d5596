// Checkpoints of tensor-parallel runs over the in-process FakeWorld:
// parameters and ZeRO-0/1 optimizer state saved at one (tp, dp, etp, zero)
// layout load at any other with identical values (checkpoint/
// training_tensors.h writes split tensors as slices and state as boxes of
// the parameter's global shape), and resuming at the same layout is
// bit-exact.
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/training_tensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "optim/distributed_optimizer.h"
#include "parallel/fake_communicator.h"
#include "tests/checkpoint/temp_dir.h"

namespace scalemoe::checkpoint {
namespace {

using ::testing::HasSubstr;

config::RunConfig Config(int zero_stage) {
  config::RunConfig c;
  c.mutable_optimizer()->set_type(config::OptimizerConfig::ADAMW);
  c.mutable_optimizer()->set_lr(1e-2);
  c.mutable_optimizer()->set_min_lr(1e-3);
  c.mutable_optimizer()->set_weight_decay(0.1);
  c.mutable_optimizer()->set_grad_clip(1.0);
  c.mutable_schedule()->set_warmup_steps(1);
  c.mutable_train()->set_train_steps(10);
  c.mutable_parallel()->set_zero_stage(zero_stage);
  c.mutable_parallel()->set_grad_bucket_elements(5);
  return c;
}

// Dense split on either dim, replicated dense, expert-TP split and
// replicated: every case CheckpointTensors distinguishes.
void Build(ParamRegistry& reg) {
  auto add = [&](const std::string& name, Shape shape, ParamRole role, int split,
                 TpGroup group = TpGroup::kDense, int expert = -1) {
    ParamLayout layout;
    layout.tp_split_dim = split;
    layout.tp_group = group;
    layout.expert = expert;
    reg.Create({name, std::move(shape), role, InitSpec::Normal(0.5), layout});
  };
  add("w_col", {8, 5}, ParamRole::kLinear, 0);
  add("gamma", {5}, ParamRole::kInputNormScale, -1);
  add("w_row", {3, 8}, ParamRole::kLinear, 1);
  add("b_col", {8}, ParamRole::kBias, 0);
  add("w_rep", {3, 3}, ParamRole::kLinear, -1);
  add("experts.0.w_up", {3, 4}, ParamRole::kExpertLinear, 1, TpGroup::kExpert, 0);
  add("experts.0.gamma", {3}, ParamRole::kInputNormScale, -1, TpGroup::kExpert, 0);
  add("experts.0.w_down", {4, 3}, ParamRole::kExpertLinear, 0, TpGroup::kExpert, 0);
  add("out_u", {3}, ParamRole::kOutputNormScale, -1);
  SM_CHECK_OK(reg.Materialize(5, DType::kF32, Device::kCPU));
}

struct Layout {
  int tp = 1, dp = 1, etp = 1, zero = 0;
  int world() const { return tp * dp; }
  GridSizes Sizes() const { return {.tp = tp, .dp = dp, .etp = etp, .ep = 1, .edp = world() / etp}; }
  std::string Name() const { return absl::StrCat("tp", tp, " dp", dp, " etp", etp, " zero", zero); }
};

double Grad(const std::string& name, int64_t gi, int dp, int t) {
  const double salt = static_cast<double>(std::hash<std::string>{}(name) % 89);
  return std::sin(0.41 * gi + 0.7 * t + 1.9 * dp + 0.13 * salt) * (1 + gi % 3);
}

// Replicas of a tensor must get identical gradients: dense ones by dp
// replica, expert-layout ones summed over the ETP group's replicas.
void SetGrads(const ProcessGroups& pg, ParamRegistry& reg, int t) {
  for (const auto& p : reg.params()) {
    std::vector<double> g(p->local_numel(), 0.0);
    for (int64_t i = 0; i < p->local_numel(); ++i) {
      const int64_t gi = p->GlobalIndex(i, reg.coords());
      if (!p->spec.layout.is_expert()) {
        g[i] = Grad(p->spec.name, gi, pg.coords.dp, t);
        continue;
      }
      for (int q : pg.grid.GroupOf(Axis::kEtp, pg.coords.global)) {
        g[i] += Grad(p->spec.name, gi, pg.grid.Coords(q).dp, t) / pg.grid.sizes().tp;
      }
    }
    p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
  }
}

// Every parameter and state tensor by global element; NaN where no rank
// holds it (there should be none).
using Global = std::map<std::string, std::vector<double>>;

class TpCheckpointTest : public ::testing::Test {
 protected:
  // Runs on every rank of `layout`: build, `before` steps, then `body`.
  template <typename Fn>
  void RunRanks(const Layout& layout, Fn body) {
    FakeWorld world;
    const Status status = world.Run(layout.world(), layout.Sizes(), [&](ProcessGroups& pg) -> Status {
      ParamRegistry reg(ShardCoords{pg.coords.tp, layout.tp, pg.coords.etp, layout.etp});
      Build(reg);
      SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(Config(layout.zero), reg, pg));
      return body(pg, reg, *opt);
    });
    ASSERT_TRUE(status.ok()) << layout.Name() << ": " << status;
  }

  static Status Steps(const ProcessGroups& pg, ParamRegistry& reg, DistributedOptimizer& opt,
                      int from, int to) {
    for (int t = from; t < to; ++t) {
      SetGrads(pg, reg, t);
      SM_ASSIGN_OR_RETURN(const StepResult result, opt.Step(ExecContext::Cpu(), t));
      const StepStats stats = ReadStepStats(ExecContext::Cpu(), result);
      if (!stats.applied) return absl::InternalError("step not applied");
    }
    return absl::OkStatus();
  }

  // Adds this rank's view to `out`, checking replicas agree.
  void Collect(const ParamRegistry& reg, const DistributedOptimizer& opt, Global* out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto put = [&](const std::string& name, const Param& p, int64_t local, double v) {
      std::vector<double>& g = (*out)[name];
      g.resize(NumElements(p.spec.shape), NAN);
      const int64_t gi = p.GlobalIndex(local, reg.coords());
      if (!std::isnan(g[gi])) {
        EXPECT_EQ(g[gi], v) << name << "[" << gi << "]: replicas disagree";
      }
      g[gi] = v;
    };
    for (const auto& p : reg.params()) {
      const std::vector<double> v = p->value.ToVector();
      for (int64_t i = 0; i < p->local_numel(); ++i) put(p->spec.name, *p, i, v[i]);
    }
    for (const StateSlice& s : opt.StateSlices()) {
      const std::vector<double> v = s.data.ToVector();
      for (int64_t i = 0; i < s.data.numel(); ++i) put(s.name, *s.param, s.start + i, v[i]);
    }
  }

  // Saves at `from` after `steps` steps; returns what was saved.
  Global Save(const Layout& from, int steps) {
    Global saved;
    RunRanks(from, [&](ProcessGroups& pg, ParamRegistry& reg, DistributedOptimizer& opt) -> Status {
      SM_RETURN_IF_ERROR(Steps(pg, reg, opt, 0, steps));
      SaveRequest request;
      request.root = dir_.path();
      request.step = steps;
      request.layout = {from.tp, 1, from.dp, 1, from.etp, from.world(), from.zero};
      request.rank = pg.coords.global;
      request.tensors = TrainingTensors(reg, opt.StateSlices(), pg.coords, true);
      SM_RETURN_IF_ERROR(SaveCheckpoint(request, pg.world.get()));
      Collect(reg, opt, &saved);
      return absl::OkStatus();
    });
    return saved;
  }

  static Status Load(const std::string& dir, const ProcessGroups& pg, ParamRegistry& reg,
                     DistributedOptimizer& opt) {
    LoadRequest request;
    request.targets = TrainingTensors(reg, opt.StateSlices(), pg.coords, false);
    SM_RETURN_IF_ERROR(LoadCheckpoint(dir, request, pg.world.get()).status());
    opt.LoadMasterFromParams();
    return absl::OkStatus();
  }

  void ExpectLoadsAs(const Layout& to, int step, const Global& want) {
    SCOPED_TRACE(to.Name());
    Global got;
    const std::string dir = dir_.path() + "/checkpoints/step_" + std::to_string(step);
    RunRanks(to, [&](ProcessGroups& pg, ParamRegistry& reg, DistributedOptimizer& opt) -> Status {
      SM_RETURN_IF_ERROR(Load(dir, pg, reg, opt));
      Collect(reg, opt, &got);
      return absl::OkStatus();
    });
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [name, values] : want) {
      const std::vector<double>& g = got.at(name);
      ASSERT_EQ(g.size(), values.size()) << name;
      for (size_t i = 0; i < values.size(); ++i) {
        ASSERT_FALSE(std::isnan(values[i])) << name << "[" << i << "] not saved";
        EXPECT_EQ(g[i], values[i]) << name << "[" << i << "]";
      }
    }
  }

  testing::TempDir dir_;
  std::mutex mu_;
};

TEST_F(TpCheckpointTest, Tp2SaveLoadsAtEveryLayout) {
  const Global saved = Save({.tp = 2, .dp = 2, .etp = 2, .zero = 1}, 2);
  for (const Layout& to : {Layout{.tp = 1, .dp = 1, .etp = 1, .zero = 0},
                           Layout{.tp = 2, .dp = 2, .etp = 2, .zero = 1},
                           Layout{.tp = 2, .dp = 1, .etp = 1, .zero = 0},
                           Layout{.tp = 1, .dp = 4, .etp = 2, .zero = 1},
                           Layout{.tp = 4, .dp = 1, .etp = 2, .zero = 1},
                           Layout{.tp = 2, .dp = 2, .etp = 1, .zero = 0}}) {
    ExpectLoadsAs(to, 2, saved);
  }
}

TEST_F(TpCheckpointTest, Tp1SaveLoadsUnderTp) {
  const Global saved = Save({.tp = 1, .dp = 1, .etp = 1, .zero = 0}, 2);
  ExpectLoadsAs({.tp = 2, .dp = 2, .etp = 2, .zero = 1}, 2, saved);
  ExpectLoadsAs({.tp = 4, .dp = 1, .etp = 4, .zero = 0}, 2, saved);
}

TEST_F(TpCheckpointTest, ZeroOneStateAtDp4LoadsUnderTp2) {
  const Global saved = Save({.tp = 1, .dp = 4, .etp = 1, .zero = 1}, 3);
  ExpectLoadsAs({.tp = 2, .dp = 2, .etp = 2, .zero = 1}, 3, saved);
}

// Save at step 2 and run on to step 4; a fresh run of the same layout that
// loads step 2 and runs on ends with the same bits.
TEST_F(TpCheckpointTest, ResumeAtTheSameTpLayoutIsBitExact) {
  for (int zero : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("zero ", zero));
    testing::TempDir dir;
    const Layout layout{.tp = 2, .dp = 2, .etp = 2, .zero = zero};
    Global straight, resumed;
    RunRanks(layout, [&](ProcessGroups& pg, ParamRegistry& reg, DistributedOptimizer& opt) -> Status {
      SM_RETURN_IF_ERROR(Steps(pg, reg, opt, 0, 2));
      SaveRequest request;
      request.root = dir.path();
      request.step = 2;
      request.layout = {layout.tp, 1, layout.dp, 1, layout.etp, layout.world(), layout.zero};
      request.rank = pg.coords.global;
      request.tensors = TrainingTensors(reg, opt.StateSlices(), pg.coords, true);
      SM_RETURN_IF_ERROR(SaveCheckpoint(request, pg.world.get()));
      SM_RETURN_IF_ERROR(Steps(pg, reg, opt, 2, 4));
      Collect(reg, opt, &straight);
      return absl::OkStatus();
    });
    RunRanks(layout, [&](ProcessGroups& pg, ParamRegistry& reg, DistributedOptimizer& opt) -> Status {
      SM_RETURN_IF_ERROR(Load(dir.path() + "/checkpoints/step_2", pg, reg, opt));
      opt.set_num_updates(2);
      SM_RETURN_IF_ERROR(Steps(pg, reg, opt, 2, 4));
      Collect(reg, opt, &resumed);
      return absl::OkStatus();
    });
    EXPECT_EQ(straight, resumed);
  }
}

// The manifest records the layout, split tensors as slices of their global
// shape and a state shard cut into several boxes of one name.
TEST_F(TpCheckpointTest, DescribeShowsGlobalShapesAndSlices) {
  Save({.tp = 2, .dp = 2, .etp = 2, .zero = 1}, 1);
  StatusOr<std::string> text = DescribeCheckpoint(dir_.path() + "/checkpoints/step_1");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(*text, HasSubstr("w_row"));
  EXPECT_THAT(*text, HasSubstr("optimizer.adam_m/w_row"));
  EXPECT_THAT(*text, ::testing::Not(HasSubstr("BAD")));
  // Some rank's ZeRO shard of a split matrix is more than one box.
  std::ifstream in(dir_.path() + "/checkpoints/step_1/manifest.txt");
  const std::string manifest((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(manifest, HasSubstr("key: \"optimizer.adam_"));
}

}  // namespace
}  // namespace scalemoe::checkpoint
