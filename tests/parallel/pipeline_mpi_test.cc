// The pipeline executor over real MPI ranks with activations far above
// MPI's eager limit, so Send blocks until the matching Recv (rendezvous):
// a schedule whose neighbours both send first would hang here (ctest's
// timeout), not only in the schedule simulator.
#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "parallel/pipeline_executor.h"

namespace scalemoe {
namespace {

constexpr int64_t kRows = 4096, kWidth = 32;  // 1 MiB of f64 per message

double Weight(int virtual_stage) { return 0.9 + 0.1 * virtual_stage; }
double Data(int mb, int64_t i) { return 0.01 * (mb + 1) * static_cast<double>(i % 7 - 3); }

// y = w x with a learnable scalar w per (virtual) stage; the last stage's
// loss is (0.5 / m) Σ y². With P = Π w_j over all p*v virtual stages:
// loss = (0.5 / m) P² Σ_mb |x_mb|² and d loss / d w_j = 2 loss / w_j.
// Chunk c of rank s is virtual stage j = c*p + s (v = 1: j = s).
class ScalarStage : public PipelineStage {
 public:
  ScalarStage(int stage, int stages, int m, int chunks = 1)
      : stage_(stage), stages_(stages), chunks_(chunks), m_(m), dw_(chunks, 0.0) {}

  StatusOr<Tensor> Forward(int chunk, int mb, const Tensor& input) override {
    const int j = Virtual(chunk);
    Tensor x = input;
    if (j == 0) {
      x = Tensor::Empty({kRows, kWidth}, DType::kF64);
      for (int64_t i = 0; i < x.numel(); ++i) x.data<double>()[i] = Data(mb, i);
    }
    inputs_[{chunk, mb}] = x;
    Tensor y = Tensor::Empty({kRows, kWidth}, DType::kF64);
    const double w = Weight(j);
    for (int64_t i = 0; i < x.numel(); ++i) y.data<double>()[i] = w * x.data<double>()[i];
    if (!IsLast(chunk)) return y;
    for (int64_t i = 0; i < y.numel(); ++i) {
      loss_ += 0.5 / m_ * y.data<double>()[i] * y.data<double>()[i];
    }
    outputs_[{chunk, mb}] = y;
    return Tensor();
  }

  StatusOr<Tensor> Backward(int chunk, int mb, const Tensor& d_output) override {
    const Tensor x = inputs_.at({chunk, mb});
    inputs_.erase({chunk, mb});
    Tensor dy = d_output;
    if (IsLast(chunk)) {
      dy = outputs_.at({chunk, mb});
      outputs_.erase({chunk, mb});
      for (int64_t i = 0; i < dy.numel(); ++i) dy.data<double>()[i] /= m_;
    }
    Tensor dx = Tensor::Empty({kRows, kWidth}, DType::kF64);
    const double w = Weight(Virtual(chunk));
    for (int64_t i = 0; i < x.numel(); ++i) {
      dw_[chunk] += x.data<double>()[i] * dy.data<double>()[i];
      dx.data<double>()[i] = w * dy.data<double>()[i];
    }
    return Virtual(chunk) == 0 ? Tensor() : dx;
  }

  int Virtual(int chunk) const { return chunk * stages_ + stage_; }
  bool IsLast(int chunk) const { return Virtual(chunk) == stages_ * chunks_ - 1; }
  double dw(int chunk = 0) const { return dw_[chunk]; }
  double loss() const { return loss_; }

 private:
  int stage_, stages_, chunks_, m_;
  std::map<std::pair<int, int>, Tensor> inputs_, outputs_;  // (chunk, mb)
  std::vector<double> dw_;
  double loss_ = 0;
};

double ExpectedLoss(int virtual_stages, int m) {
  double product = 1;
  for (int j = 0; j < virtual_stages; ++j) product *= Weight(j);
  double norm2 = 0;
  for (int mb = 0; mb < m; ++mb) {
    for (int64_t i = 0; i < kRows * kWidth; ++i) norm2 += Data(mb, i) * Data(mb, i);
  }
  return 0.5 / m * product * product * norm2;
}

TEST(PipelineMpiTest, BothSchedulesCompleteWithBlockingSends) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  StatusOr<ProcessGroups> groups = CreateMpiProcessGroups({.pp = world});
  ASSERT_TRUE(groups.ok()) << groups.status();
  Communicator& pp = groups->Get(Axis::kPp);
  const int s = pp.rank(), p = pp.size();
  for (PipelineScheduleKind kind :
       {PipelineScheduleKind::kGPipe, PipelineScheduleKind::kOneFOneB}) {
    for (int m : {1, 3, 8}) {
      SCOPED_TRACE(absl::StrCat(PipelineScheduleName(kind), " m=", m));
      const double expected_loss = ExpectedLoss(p, m);
      ScalarStage stage(s, p, m);
      StatusOr<PipelineExecutor> executor =
          PipelineExecutor::Create(pp, {.schedule = kind,
                                        .num_microbatches = m,
                                        .activation_shape = {kRows, kWidth},
                                        .activation_dtype = DType::kF64,
                                        .activation_device = Device::kCPU,
                                        .ctx = ExecContext::Cpu()});
      ASSERT_TRUE(executor.ok()) << executor.status();
      StatusOr<PipelineStepStats> stats = executor->RunStep(stage);
      ASSERT_TRUE(stats.ok()) << stats.status();
      if (s == p - 1) {
        EXPECT_NEAR(stage.loss(), expected_loss, 1e-10 * expected_loss);
      }
      EXPECT_NEAR(stage.dw(), 2 * expected_loss / Weight(s), 1e-10 * expected_loss);
    }
  }
}

// Interleaved 1F1B: p*v virtual stages over the p ranks, with rank p-1
// sending back to rank 0 for the next chunk, all under rendezvous sends.
TEST(PipelineMpiTest, InterleavedCompletesWithBlockingSends) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world < 2) GTEST_SKIP() << "interleaved 1F1B needs at least 2 ranks";
  StatusOr<ProcessGroups> groups = CreateMpiProcessGroups({.pp = world});
  ASSERT_TRUE(groups.ok()) << groups.status();
  Communicator& pp = groups->Get(Axis::kPp);
  const int s = pp.rank(), p = pp.size();
  for (int v : {2, 3}) {
    for (int m : {p, 2 * p}) {
      SCOPED_TRACE(absl::StrCat("interleaved v=", v, " m=", m));
      const double expected_loss = ExpectedLoss(p * v, m);
      ScalarStage stage(s, p, m, v);
      StatusOr<PipelineExecutor> executor =
          PipelineExecutor::Create(pp, {.schedule = PipelineScheduleKind::kInterleaved1F1B,
                                        .num_microbatches = m,
                                        .num_chunks = v,
                                        .activation_shape = {kRows, kWidth},
                                        .activation_dtype = DType::kF64,
                                        .activation_device = Device::kCPU,
                                        .ctx = ExecContext::Cpu()});
      ASSERT_TRUE(executor.ok()) << executor.status();
      StatusOr<PipelineStepStats> stats = executor->RunStep(stage);
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_EQ(stats->num_chunks, v);
      if (s == p - 1) {
        EXPECT_NEAR(stage.loss(), expected_loss, 1e-10 * expected_loss);
      }
      for (int c = 0; c < v; ++c) {
        EXPECT_NEAR(stage.dw(c), 2 * expected_loss / Weight(stage.Virtual(c)),
                    1e-10 * expected_loss)
            << "chunk " << c;
      }
    }
  }
}

}  // namespace
}  // namespace scalemoe
