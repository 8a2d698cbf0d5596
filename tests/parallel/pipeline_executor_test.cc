#include "parallel/pipeline_executor.h"

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;
using testing::RandomTensor;

constexpr int64_t kRows = 3;  // B*T
constexpr int64_t kWidth = 4;  // C

// y = tanh(x W), W [C, C]. The first stage's x is its own data for the
// micro-batch; the last stage adds loss (0.5 / m) Σ (y - target)². Backward
// needs x and y of *that* micro-batch, so a stage that mixed up its caches
// (or an executor that fed it the wrong micro-batch) gives wrong gradients.
class ToyStage : public PipelineStage {
 public:
  ToyStage(Tensor weight, bool first, bool last, const std::vector<Tensor>& data,
           const std::vector<Tensor>& targets)
      : weight_(weight), d_weight_(Tensor::Zeros(weight.shape(), DType::kF64)), first_(first),
        last_(last), data_(data), targets_(targets) {}

  StatusOr<Tensor> Forward(int mb, const Tensor& input) override {
    if (cache_.count(mb)) return absl::InternalError(absl::StrCat("second Forward of ", mb));
    const Tensor x = first_ ? data_[mb] : input;
    Tensor y = Tensor::Zeros({kRows, kWidth}, DType::kF64);
    const double* xs = x.data<double>();
    const double* w = weight_.data<double>();
    for (int64_t n = 0; n < kRows; ++n) {
      for (int64_t j = 0; j < kWidth; ++j) {
        double h = 0;
        for (int64_t i = 0; i < kWidth; ++i) h += xs[n * kWidth + i] * w[i * kWidth + j];
        y.data<double>()[n * kWidth + j] = std::tanh(h);
      }
    }
    cache_[mb] = {x, y};
    peak_cache_ = std::max(peak_cache_, static_cast<int>(cache_.size()));
    if (!last_) return y;
    double loss = 0;
    for (int64_t k = 0; k < y.numel(); ++k) {
      const double r = y.At(k) - targets_[mb].At(k);
      loss += 0.5 * r * r / static_cast<double>(data_.size());
    }
    loss_ += loss;
    return Tensor();
  }

  StatusOr<Tensor> Backward(int mb, const Tensor& d_output) override {
    auto it = cache_.find(mb);
    if (it == cache_.end()) {
      return absl::InternalError(absl::StrCat("Backward before Forward ", mb));
    }
    const auto [x, y] = it->second;
    cache_.erase(it);
    Tensor dh = Tensor::Zeros({kRows, kWidth}, DType::kF64);
    for (int64_t k = 0; k < dh.numel(); ++k) {
      const double dy = last_ ? (y.At(k) - targets_[mb].At(k)) / static_cast<double>(data_.size())
                              : d_output.At(k);
      dh.data<double>()[k] = dy * (1 - y.At(k) * y.At(k));
    }
    const double* xs = x.data<double>();
    const double* w = weight_.data<double>();
    double* dw = d_weight_.data<double>();
    Tensor dx = Tensor::Zeros({kRows, kWidth}, DType::kF64);
    for (int64_t n = 0; n < kRows; ++n) {
      for (int64_t i = 0; i < kWidth; ++i) {
        for (int64_t j = 0; j < kWidth; ++j) {
          const double g = dh.data<double>()[n * kWidth + j];
          dw[i * kWidth + j] += xs[n * kWidth + i] * g;
          dx.data<double>()[n * kWidth + i] += g * w[i * kWidth + j];
        }
      }
    }
    return first_ ? Tensor() : dx;
  }

  const Tensor& d_weight() const { return d_weight_; }
  double loss() const { return loss_; }
  int peak_cache() const { return peak_cache_; }

 private:
  Tensor weight_, d_weight_;
  bool first_, last_;
  std::vector<Tensor> data_, targets_;
  std::map<int, std::pair<Tensor, Tensor>> cache_;  // mb -> (x, y)
  double loss_ = 0;
  int peak_cache_ = 0;
};

struct ToyProblem {
  std::vector<Tensor> weights, data, targets;
};

ToyProblem MakeProblem(int stages, int m) {
  ToyProblem p;
  for (int s = 0; s < stages; ++s) p.weights.push_back(RandomTensor({kWidth, kWidth}, 10 + s, 0.7));
  for (int mb = 0; mb < m; ++mb) {
    p.data.push_back(RandomTensor({kRows, kWidth}, 100 + mb));
    p.targets.push_back(RandomTensor({kRows, kWidth}, 200 + mb, 0.5));
  }
  return p;
}

struct Reference {
  double loss = 0;
  std::vector<Tensor> d_weights;
};

// The whole toy model on one rank: every micro-batch forward through all
// layers, then backward, gradients accumulated.
Reference RunSingleRank(const ToyProblem& p) {
  const int stages = static_cast<int>(p.weights.size());
  std::vector<std::unique_ptr<ToyStage>> layers;
  for (int s = 0; s < stages; ++s) {
    layers.push_back(std::make_unique<ToyStage>(p.weights[s], s == 0, s == stages - 1, p.data,
                                                p.targets));
  }
  for (size_t mb = 0; mb < p.data.size(); ++mb) {
    Tensor x;
    for (auto& layer : layers) x = *layer->Forward(static_cast<int>(mb), x);
    Tensor d;
    for (int s = stages - 1; s >= 0; --s) d = *layers[s]->Backward(static_cast<int>(mb), d);
  }
  Reference ref;
  ref.loss = layers.back()->loss();
  for (auto& layer : layers) ref.d_weights.push_back(layer->d_weight());
  return ref;
}

FakeWorldOptions Fast() { return {.timeout = std::chrono::milliseconds(3000)}; }

PipelineExecutorOptions Options(PipelineScheduleKind kind, int m) {
  return {.schedule = kind, .num_microbatches = m, .activation_shape = {kRows, kWidth},
          .activation_dtype = DType::kF64};
}

// The toy's backward is right: the reference gradients match central
// differences of the reference loss (so the equivalence below means
// something).
TEST(PipelineToyTest, ReferenceGradientsMatchFiniteDifferences) {
  const ToyProblem p = MakeProblem(3, 2);
  const Reference ref = RunSingleRank(p);
  for (size_t s = 0; s < p.weights.size(); ++s) {
    const double err =
        testing::GradError([&] { return RunSingleRank(p).loss; }, p.weights[s], ref.d_weights[s]);
    EXPECT_LT(err, testing::kGradTolerance) << "stage " << s;
  }
}

class PipelineExecutorTest
    : public ::testing::TestWithParam<std::tuple<PipelineScheduleKind, int, int>> {};

// Every stage on its own thread (FakeWorld pp group): the step completes
// (a deadlock would time out and fail), the loss and every stage's gradient
// equal the single-rank run, and the counters match the schedule.
TEST_P(PipelineExecutorTest, MatchesSingleRankRun) {
  const auto [kind, p, m] = GetParam();
  const ToyProblem problem = MakeProblem(p, m);
  const Reference ref = RunSingleRank(problem);
  std::vector<Tensor> d_weights(p);
  std::vector<PipelineStepStats> stats(p);
  std::vector<int> peak_cache(p);
  double loss = 0;
  Status status = FakeWorld(Fast()).Run(p, {.pp = p}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    const int s = pp.rank();
    ToyStage stage(problem.weights[s], s == 0, s == p - 1, problem.data, problem.targets);
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor, PipelineExecutor::Create(pp, Options(kind, m)));
    SM_ASSIGN_OR_RETURN(stats[s], executor.RunStep(stage));
    d_weights[s] = stage.d_weight();
    peak_cache[s] = stage.peak_cache();
    if (s == p - 1) loss = stage.loss();
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_DOUBLE_EQ(loss, ref.loss);
  for (int s = 0; s < p; ++s) {
    SCOPED_TRACE(absl::StrCat("stage ", s));
    for (int64_t k = 0; k < d_weights[s].numel(); ++k) {
      EXPECT_DOUBLE_EQ(d_weights[s].At(k), ref.d_weights[s].At(k)) << k;
    }
    const bool first = s == 0, last = s == p - 1;
    EXPECT_EQ(stats[s].sends, m * ((first ? 0 : 1) + (last ? 0 : 1)));
    EXPECT_EQ(stats[s].recvs, stats[s].sends);
    EXPECT_DOUBLE_EQ(stats[s].bubble_fraction, static_cast<double>(p - 1) / (m + p - 1));
    const int expected_peak = kind == PipelineScheduleKind::kOneFOneB ? std::min(p - s, m) : m;
    EXPECT_EQ(stats[s].peak_stashed_microbatches, expected_peak);
    EXPECT_EQ(peak_cache[s], expected_peak);
    EXPECT_EQ(stats[s].peak_stashed_bytes,
              first ? 0 : expected_peak * kRows * kWidth * static_cast<int64_t>(sizeof(double)));
    if (kind == PipelineScheduleKind::kOneFOneB) {
      EXPECT_LE(stats[s].peak_stashed_microbatches, p);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, PipelineExecutorTest,
    ::testing::Combine(::testing::Values(PipelineScheduleKind::kGPipe,
                                         PipelineScheduleKind::kOneFOneB),
                       ::testing::Values(2, 4), ::testing::Values(1, 2, 4, 8)),
    [](const auto& info) {
      return absl::StrCat(PipelineScheduleName(std::get<0>(info.param)), "_pp",
                          std::get<1>(info.param), "_mb", std::get<2>(info.param));
    });

// A world of one: the executor is a plain accumulation loop, no messages.
TEST(PipelineExecutorSingleTest, WorldOfOneEqualsPlainLoop) {
  const ToyProblem problem = MakeProblem(1, 4);
  const Reference ref = RunSingleRank(problem);
  Status status = FakeWorld(Fast()).Run(1, {}, [&](ProcessGroups& pg) -> Status {
    ToyStage stage(problem.weights[0], true, true, problem.data, problem.targets);
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor,
                        PipelineExecutor::Create(pg.Get(Axis::kPp),
                                                 Options(PipelineScheduleKind::kOneFOneB, 4)));
    SM_ASSIGN_OR_RETURN(PipelineStepStats stats, executor.RunStep(stage));
    EXPECT_EQ(stats.sends + stats.recvs, 0);
    EXPECT_EQ(stats.bubble_fraction, 0.0);
    EXPECT_EQ(stats.peak_stashed_microbatches, 1);
    EXPECT_DOUBLE_EQ(stage.loss(), ref.loss);
    EXPECT_DOUBLE_EQ(stage.d_weight().At(5), ref.d_weights[0].At(5));
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
}

// Two steps in a row reuse the tags; gradients accumulate over both.
TEST(PipelineExecutorSingleTest, ConsecutiveStepsAccumulate) {
  const int p = 2, m = 3;
  const ToyProblem problem = MakeProblem(p, m);
  const Reference ref = RunSingleRank(problem);
  std::vector<double> d0(p);
  Status status = FakeWorld(Fast()).Run(p, {.pp = p}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    const int s = pp.rank();
    ToyStage stage(problem.weights[s], s == 0, s == p - 1, problem.data, problem.targets);
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor,
                        PipelineExecutor::Create(pp, Options(PipelineScheduleKind::kOneFOneB, m)));
    SM_RETURN_IF_ERROR(executor.RunStep(stage).status());
    // The toy's cache is keyed by micro-batch and empty again after a step.
    SM_RETURN_IF_ERROR(executor.RunStep(stage).status());
    d0[s] = stage.d_weight().At(0);
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  for (int s = 0; s < p; ++s) EXPECT_DOUBLE_EQ(d0[s], 2 * ref.d_weights[s].At(0));
}

// A rank that fails a Send/Recv ends the step on every stage with an error
// naming the action, not a hang.
TEST(PipelineExecutorSingleTest, FailedRankEndsStepWithError) {
  const int p = 4, m = 4;
  const ToyProblem problem = MakeProblem(p, m);
  FakeWorld world(Fast());
  world.FailCollective(2, 3);
  const auto start = std::chrono::steady_clock::now();
  Status status = world.Run(p, {.pp = p}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    const int s = pp.rank();
    ToyStage stage(problem.weights[s], s == 0, s == p - 1, problem.data, problem.targets);
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor,
                        PipelineExecutor::Create(pp, Options(PipelineScheduleKind::kOneFOneB, m)));
    return executor.RunStep(stage).status();
  });
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(world.rank_statuses()[2].message()), HasSubstr("pipeline stage 2 of 4"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(2500));
}

// A stage returning the wrong activation shape is an InvalidArgument that
// names the expected shape.
class WrongShapeStage : public PipelineStage {
 public:
  StatusOr<Tensor> Forward(int, const Tensor&) override {
    return Tensor::Zeros({kRows, kWidth + 1}, DType::kF64);
  }
  StatusOr<Tensor> Backward(int, const Tensor&) override { return Tensor(); }
};

TEST(PipelineExecutorSingleTest, WrongActivationShapeIsAnError) {
  FakeWorld world(Fast());
  Status status = world.Run(2, {.pp = 2}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor,
                        PipelineExecutor::Create(pp, Options(PipelineScheduleKind::kOneFOneB, 2)));
    if (pp.rank() == 1) {
      // The receiving side sees its peer give up, not a timeout.
      return executor.RunStep(*std::make_unique<WrongShapeStage>()).status();
    }
    WrongShapeStage stage;
    return executor.RunStep(stage).status();
  });
  const Status& first = world.rank_statuses()[0];
  EXPECT_EQ(first.code(), absl::StatusCode::kInvalidArgument) << first;
  EXPECT_THAT(std::string(first.message()), HasSubstr("f64[3, 4]"));
  EXPECT_THAT(std::string(first.message()), HasSubstr("Forward of micro-batch 0"));
  EXPECT_FALSE(status.ok());
}

TEST(PipelineExecutorSingleTest, CreateRejectsBadOptions) {
  Status status = FakeWorld(Fast()).Run(1, {}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    PipelineExecutorOptions no_mb = Options(PipelineScheduleKind::kOneFOneB, 0);
    EXPECT_THAT(std::string(PipelineExecutor::Create(pp, no_mb).status().message()),
                HasSubstr("training.global_batch_size"));
    PipelineExecutorOptions no_shape = Options(PipelineScheduleKind::kGPipe, 2);
    no_shape.activation_shape = {};
    EXPECT_THAT(std::string(PipelineExecutor::Create(pp, no_shape).status().message()),
                HasSubstr("activation shape"));
    PipelineExecutorOptions ints = Options(PipelineScheduleKind::kGPipe, 2);
    ints.activation_dtype = DType::kI32;
    EXPECT_FALSE(PipelineExecutor::Create(pp, ints).ok());
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
}

}  // namespace
}  // namespace scalemoe
