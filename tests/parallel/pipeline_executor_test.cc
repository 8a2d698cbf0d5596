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

  StatusOr<Tensor> Forward(int /*chunk*/, int mb, const Tensor& input) override {
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

  StatusOr<Tensor> Backward(int /*chunk*/, int mb, const Tensor& d_output) override {
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
    for (auto& layer : layers) x = *layer->Forward(0, static_cast<int>(mb), x);
    Tensor d;
    for (int s = stages - 1; s >= 0; --s) d = *layers[s]->Backward(0, static_cast<int>(mb), d);
  }
  Reference ref;
  ref.loss = layers.back()->loss();
  for (auto& layer : layers) ref.d_weights.push_back(layer->d_weight());
  return ref;
}

FakeWorldOptions Fast() { return {.timeout = std::chrono::milliseconds(3000)}; }

PipelineExecutorOptions Options(PipelineScheduleKind kind, int m) {
  PipelineExecutorOptions o;
  o.schedule = kind;
  o.num_microbatches = m;
  o.activation_shape = {kRows, kWidth};
  o.activation_dtype = DType::kF64;
  return o;
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

// Interleaved 1F1B. Virtual stage j computes y = a_j x + b_j elementwise
// with learnable scalars a_j, b_j; the last adds loss (0.5 / m) Σ y². Rank s
// chunk c is virtual stage j = c*p + s; the reference runs all p*v virtual
// stages as the chunks of one stage (p = 1), micro-batch by micro-batch.
double A(int j) { return 0.8 + 0.05 * j; }
double B(int j) { return 0.1 * (j + 1) - 0.2; }

class AffineStage : public PipelineStage {
 public:
  AffineStage(int rank, int p, int v, const std::vector<Tensor>& data)
      : rank_(rank), p_(p), v_(v), data_(data), da_(v, 0.0), db_(v, 0.0) {}

  StatusOr<Tensor> Forward(int chunk, int mb, const Tensor& input) override {
    const int j = Virtual(chunk);
    if (cache_.count({chunk, mb})) return absl::InternalError("second Forward");
    const Tensor x = j == 0 ? data_[mb] : input;
    if (!x.defined()) return absl::InternalError(absl::StrCat("no input at virtual stage ", j));
    Tensor y = Tensor::Zeros({kRows, kWidth}, DType::kF64);
    for (int64_t k = 0; k < y.numel(); ++k) y.data<double>()[k] = A(j) * x.At(k) + B(j);
    cache_[{chunk, mb}] = {x, y};
    peak_cache_ = std::max(peak_cache_, static_cast<int>(cache_.size()));
    outputs[{j, mb}] = y;
    if (j < p_ * v_ - 1) return y;
    for (int64_t k = 0; k < y.numel(); ++k) {
      loss += 0.5 * y.At(k) * y.At(k) / static_cast<double>(data_.size());
    }
    return Tensor();
  }

  StatusOr<Tensor> Backward(int chunk, int mb, const Tensor& d_output) override {
    const int j = Virtual(chunk);
    auto it = cache_.find({chunk, mb});
    if (it == cache_.end()) return absl::InternalError("Backward before Forward");
    const auto [x, y] = it->second;
    cache_.erase(it);
    const bool last = j == p_ * v_ - 1;
    if (last == d_output.defined()) return absl::InternalError("wrong d_output presence");
    Tensor dx = Tensor::Zeros({kRows, kWidth}, DType::kF64);
    for (int64_t k = 0; k < y.numel(); ++k) {
      const double dy = last ? y.At(k) / static_cast<double>(data_.size()) : d_output.At(k);
      da_[chunk] += dy * x.At(k);
      db_[chunk] += dy;
      dx.data<double>()[k] = A(j) * dy;
    }
    d_inputs[{j, mb}] = dx;
    return j == 0 ? Tensor() : dx;
  }

  int Virtual(int chunk) const { return chunk * p_ + rank_; }
  double da(int chunk) const { return da_[chunk]; }
  double db(int chunk) const { return db_[chunk]; }
  int peak_cache() const { return peak_cache_; }

  double loss = 0;
  std::map<std::pair<int, int>, Tensor> outputs, d_inputs;  // (virtual stage, mb)

 private:
  int rank_, p_, v_;
  std::vector<Tensor> data_;
  std::vector<double> da_, db_;
  std::map<std::pair<int, int>, std::pair<Tensor, Tensor>> cache_;  // (chunk, mb) -> (x, y)
  int peak_cache_ = 0;
};

class InterleavedExecutorTest : public ::testing::TestWithParam<std::tuple<int, int, int>> {};

// Every rank on its own thread: outputs, input gradients, the loss and the
// parameter gradients of every virtual stage and micro-batch equal the
// sequential composition; stats match the schedule. Two steps, to cover tag
// reuse across steps (gradients double).
TEST_P(InterleavedExecutorTest, MatchesSequentialComposition) {
  const auto [p, v, m] = GetParam();
  const int vs_count = p * v;
  std::vector<Tensor> data;
  for (int mb = 0; mb < m; ++mb) data.push_back(RandomTensor({kRows, kWidth}, 100 + mb));
  AffineStage ref(0, 1, vs_count, data);
  for (int mb = 0; mb < m; ++mb) {
    Tensor x;
    for (int j = 0; j < vs_count; ++j) x = *ref.Forward(j, mb, x);
    Tensor d;
    for (int j = vs_count - 1; j >= 0; --j) d = *ref.Backward(j, mb, d);
  }
  std::vector<std::unique_ptr<AffineStage>> stages(p);
  std::vector<PipelineStepStats> stats(p);
  std::vector<std::vector<PipelineAction>> schedules(p);
  Status status = FakeWorld(Fast()).Run(p, {.pp = p}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    const int s = pp.rank();
    stages[s] = std::make_unique<AffineStage>(s, p, v, data);
    PipelineExecutorOptions options = Options(PipelineScheduleKind::kInterleaved1F1B, m);
    options.num_chunks = v;
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor, PipelineExecutor::Create(pp, options));
    schedules[s] = executor.schedule();
    SM_ASSIGN_OR_RETURN(stats[s], executor.RunStep(*stages[s]));
    SM_RETURN_IF_ERROR(executor.RunStep(*stages[s]).status());
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_DOUBLE_EQ(stages[p - 1]->loss, 2 * ref.loss);
  const int64_t row_bytes = kRows * kWidth * static_cast<int64_t>(sizeof(double));
  for (int s = 0; s < p; ++s) {
    SCOPED_TRACE(absl::StrCat("rank ", s));
    const AffineStage& stage = *stages[s];
    for (int c = 0; c < v; ++c) {
      const int j = stage.Virtual(c);
      EXPECT_NEAR(stage.da(c), 2 * ref.da(j), 1e-12 * (1 + std::abs(ref.da(j)))) << "vs " << j;
      EXPECT_NEAR(stage.db(c), 2 * ref.db(j), 1e-12 * (1 + std::abs(ref.db(j)))) << "vs " << j;
      for (int mb = 0; mb < m; ++mb) {
        const Tensor& y = stage.outputs.at({j, mb});
        const Tensor& dx = stage.d_inputs.at({j, mb});
        for (int64_t k = 0; k < y.numel(); ++k) {
          EXPECT_DOUBLE_EQ(y.At(k), ref.outputs.at({j, mb}).At(k)) << "vs " << j << " mb " << mb;
          EXPECT_DOUBLE_EQ(dx.At(k), ref.d_inputs.at({j, mb}).At(k))
              << "vs " << j << " mb " << mb;
        }
      }
    }
    // Stats: the interleaved bubble, the schedule's stash (every chunk's
    // input but virtual stage 0's is a received buffer), one send per
    // boundary crossing.
    EXPECT_EQ(stats[s].num_chunks, v);
    EXPECT_DOUBLE_EQ(stats[s].bubble_fraction, static_cast<double>(p - 1) / (v * m + p - 1));
    const int peak = PeakInFlightMicrobatches(schedules[s]);
    EXPECT_EQ(stats[s].peak_stashed_microbatches, peak);
    EXPECT_EQ(stage.peak_cache(), peak);
    EXPECT_GT(peak, 1);
    EXPECT_LE(peak, v * m);
    int64_t bytes = 0, peak_bytes = 0;
    for (const PipelineAction& a : schedules[s]) {
      const bool received = !(s == 0 && a.chunk == 0);
      if (a.op == PipelineOp::kForward && received) {
        peak_bytes = std::max(peak_bytes, bytes += row_bytes);
      }
      if (a.op == PipelineOp::kBackward && received) bytes -= row_bytes;
    }
    EXPECT_EQ(stats[s].peak_stashed_bytes, peak_bytes);
    const int crossings = 2 * v - (s == 0 ? 1 : 0) - (s == p - 1 ? 1 : 0);
    EXPECT_EQ(stats[s].sends, m * crossings);
    EXPECT_EQ(stats[s].recvs, m * crossings);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, InterleavedExecutorTest,
                         ::testing::Values(std::make_tuple(2, 2, 4), std::make_tuple(4, 2, 4),
                                           std::make_tuple(2, 3, 2), std::make_tuple(3, 3, 6),
                                           std::make_tuple(4, 2, 8)),
                         [](const auto& info) {
                           return absl::StrCat("pp", std::get<0>(info.param), "_v",
                                               std::get<1>(info.param), "_mb",
                                               std::get<2>(info.param));
                         });

TEST(PipelineExecutorSingleTest, InterleavedCreateRejectsBadOptions) {
  Status status = FakeWorld(Fast()).Run(2, {.pp = 2}, [&](ProcessGroups& pg) -> Status {
    Communicator& pp = pg.Get(Axis::kPp);
    PipelineExecutorOptions options = Options(PipelineScheduleKind::kInterleaved1F1B, 3);
    options.num_chunks = 2;
    EXPECT_THAT(std::string(PipelineExecutor::Create(pp, options).status().message()),
                HasSubstr("multiple of parallel.pp = 2"));
    options.num_microbatches = 7500;  // 2 * 2 * 7500 + 1 = 30001 tags
    Status tags = PipelineExecutor::Create(pp, options).status();
    EXPECT_EQ(tags.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(tags.message()), HasSubstr("pipeline tag limit 30000"));
    options.num_microbatches = 7498;  // 29993: fine
    EXPECT_TRUE(PipelineExecutor::Create(pp, options).ok());
    PipelineExecutorOptions chunks = Options(PipelineScheduleKind::kOneFOneB, 2);
    chunks.num_chunks = 2;
    EXPECT_THAT(std::string(PipelineExecutor::Create(pp, chunks).status().message()),
                HasSubstr("parallel.virtual_stages = 2"));
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
}

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
  StatusOr<Tensor> Forward(int, int, const Tensor&) override {
    return Tensor::Zeros({kRows, kWidth + 1}, DType::kF64);
  }
  StatusOr<Tensor> Backward(int, int, const Tensor&) override { return Tensor(); }
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
                HasSubstr("train.global_batch_size"));
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
