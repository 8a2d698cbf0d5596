// The pipeline executor over real MPI ranks with activations far above
// MPI's eager limit, so Send blocks until the matching Recv (rendezvous):
// a schedule whose neighbours both send first would hang here (ctest's
// timeout), not only in the schedule simulator.
#include <cmath>
#include <map>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "parallel/pipeline_executor.h"

namespace scalemoe {
namespace {

constexpr int64_t kRows = 4096, kWidth = 32;  // 1 MiB of f64 per message

double Weight(int stage) { return 0.9 + 0.1 * stage; }
double Data(int mb, int64_t i) { return 0.01 * (mb + 1) * static_cast<double>(i % 7 - 3); }

// y = w x with a learnable scalar w; the last stage's loss is
// (0.5 / m) Σ y². With P = Π w_s: loss = (0.5 / m) P² Σ_mb |x_mb|² and
// d loss / d w_s = 2 loss / w_s.
class ScalarStage : public PipelineStage {
 public:
  ScalarStage(int stage, int stages, int m)
      : w_(Weight(stage)), first_(stage == 0), last_(stage == stages - 1), m_(m) {}

  StatusOr<Tensor> Forward(int mb, const Tensor& input) override {
    Tensor x = input;
    if (first_) {
      x = Tensor::Empty({kRows, kWidth}, DType::kF64);
      for (int64_t i = 0; i < x.numel(); ++i) x.data<double>()[i] = Data(mb, i);
    }
    inputs_[mb] = x;
    Tensor y = Tensor::Empty({kRows, kWidth}, DType::kF64);
    for (int64_t i = 0; i < x.numel(); ++i) y.data<double>()[i] = w_ * x.data<double>()[i];
    if (!last_) return y;
    for (int64_t i = 0; i < y.numel(); ++i) {
      loss_ += 0.5 / m_ * y.data<double>()[i] * y.data<double>()[i];
    }
    outputs_[mb] = y;
    return Tensor();
  }

  StatusOr<Tensor> Backward(int mb, const Tensor& d_output) override {
    const Tensor x = inputs_.at(mb);
    inputs_.erase(mb);
    Tensor dy = d_output;
    if (last_) {
      dy = outputs_.at(mb);
      outputs_.erase(mb);
      for (int64_t i = 0; i < dy.numel(); ++i) dy.data<double>()[i] /= m_;
    }
    Tensor dx = Tensor::Empty({kRows, kWidth}, DType::kF64);
    for (int64_t i = 0; i < x.numel(); ++i) {
      dw_ += x.data<double>()[i] * dy.data<double>()[i];
      dx.data<double>()[i] = w_ * dy.data<double>()[i];
    }
    return first_ ? Tensor() : dx;
  }

  double dw() const { return dw_; }
  double loss() const { return loss_; }

 private:
  double w_;
  bool first_, last_;
  int m_;
  std::map<int, Tensor> inputs_, outputs_;
  double dw_ = 0, loss_ = 0;
};

TEST(PipelineMpiTest, BothSchedulesCompleteWithBlockingSends) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  StatusOr<ProcessGroups> groups = CreateMpiProcessGroups({.pp = world});
  ASSERT_TRUE(groups.ok()) << groups.status();
  Communicator& pp = groups->Get(Axis::kPp);
  const int s = pp.rank(), p = pp.size();
  double product = 1;
  for (int t = 0; t < p; ++t) product *= Weight(t);
  for (PipelineScheduleKind kind :
       {PipelineScheduleKind::kGPipe, PipelineScheduleKind::kOneFOneB}) {
    for (int m : {1, 3, 8}) {
      SCOPED_TRACE(absl::StrCat(PipelineScheduleName(kind), " m=", m));
      double norm2 = 0;
      for (int mb = 0; mb < m; ++mb) {
        for (int64_t i = 0; i < kRows * kWidth; ++i) norm2 += Data(mb, i) * Data(mb, i);
      }
      const double expected_loss = 0.5 / m * product * product * norm2;
      ScalarStage stage(s, p, m);
      StatusOr<PipelineExecutor> executor = PipelineExecutor::Create(
          pp, {.schedule = kind, .num_microbatches = m, .activation_shape = {kRows, kWidth},
               .activation_dtype = DType::kF64});
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

}  // namespace
}  // namespace scalemoe
