// GPU test: the execution seam on a CUDA context. An op still without a CUDA
// implementation is an Unimplemented Status naming the op and the device
// (never a silent host fallback); a steady-state loop of ctx.Empty and ops
// makes no cudaMalloc/cudaFree after its first iteration (the caching
// allocator's system_allocs counter, the one the issue asks for); a CUDA
// graph of ops (cuBLASLt GEMMs and allocations among them) replays the
// eager work's bits and its host effects, and refuses a capture that read
// the device from the host.
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/cuda_graph.h"
#include "core/ops_dispatch.h"
#include "core/ops_list.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::RandomHost;

// The names of the ops core/ops_list.h marks NO_CUDA.
#define SM_NAME_IF_NO_CUDA_NO_CUDA(NAME) #NAME,
#define SM_NAME_IF_NO_CUDA_CUDA(NAME)
#define SM_NAME_IF_NO_CUDA(R, NAME, PARAMS, ARGS, CUDA) SM_NAME_IF_NO_CUDA_##CUDA(NAME)
const std::set<std::string> kNoCudaOps = {SM_OPS(SM_NAME_IF_NO_CUDA)};
#undef SM_NAME_IF_NO_CUDA

class CudaContextTest : public CudaOpTest {};

TEST_F(CudaContextTest, AnOpWithoutACudaImplementationIsUnimplementedNamingOpAndDevice) {
  // Candidates, in order; the first still marked NO_CUDA is called.
  struct Candidate {
    std::string name;
    std::function<void(const ExecContext&)> call;
  };
  const std::vector<Candidate> candidates = {
      {"RmsNormalize",
       [](const ExecContext& c) {
         ops::RmsNormalize(c, c.Empty({2, 8}, DType::kF32), 1e-6, c.Empty({2, 8}, DType::kF32),
                           c.Empty({2}, DType::kF32));
       }},
      {"Rope",
       [](const ExecContext& c) {
         Tensor x = c.Empty({1, 2, 2, 8}, DType::kF32);
         ops::Rope(c, x, 10000.0, x);
       }},
      {"EmbeddingLookup",
       [](const ExecContext& c) {
         ops::EmbeddingLookup(c, c.Zeros({3}, DType::kI32), c.Empty({5, 4}, DType::kF32),
                              c.Empty({3, 4}, DType::kF32));
       }},
      {"CrossEntropy",
       [](const ExecContext& c) {
         ops::CrossEntropy(c, c.Empty({3, 5}, DType::kF32), c.Zeros({3}, DType::kI32),
                           Tensor(), c.Empty({1}, DType::kF64));
       }},
      {"GatherRows",
       [](const ExecContext& c) {
         ops::GatherRows(c, c.Empty({4, 3}, DType::kF32), c.Zeros({2}, DType::kI32), 1,
                         c.Empty({2, 3}, DType::kF32));
       }},
  };
  const Candidate* pick = nullptr;
  for (const Candidate& c : candidates) {
    if (kNoCudaOps.count(c.name) > 0) {
      pick = &c;
      break;
    }
  }
  // A context of its own: the error is sticky.
  StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
  ASSERT_TRUE(ctx.ok()) << ctx.status();
  // Every op has a CUDA kernel now: what dispatch records for a NO_CUDA mark
  // (core/ops_dispatch.cc routes every such op there) is checked directly.
  const std::string name = pick != nullptr ? pick->name : "RmsNormalize";
  if (pick != nullptr) {
    pick->call(*ctx);
  } else {
    EXPECT_TRUE(kNoCudaOps.empty());
    ops::RecordUnimplemented(*ctx, name.c_str());
  }
  const Status st = ctx->status();
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  EXPECT_NE(st.message().find(name), std::string::npos) << st;
  EXPECT_NE(st.message().find("cuda:0"), std::string::npos) << st;
  // The first error stays; later work does not clear it.
  ops::Zero(*ctx, ctx->Empty({4}, DType::kF32));
  EXPECT_EQ(ctx->status(), st);
}

TEST_F(CudaContextTest, SteadyStateStepMakesNoCudaMallocAfterTheFirst) {
  const int64_t tokens = 256, hidden = 192, ffn = 320;
  // Long-lived state: weights, a scale vector, f32 gradients, an f32 input.
  const Tensor x32 = Dev(RandomHost({tokens, hidden}, DType::kF32, 5, 1));
  const Tensor w_gate = Dev(RandomHost({ffn, hidden}, DType::kBF16, 5, 2, 0.05));
  const Tensor w_up = Dev(RandomHost({ffn, hidden}, DType::kBF16, 5, 3, 0.05));
  const Tensor gamma = Dev(RandomHost({ffn}, DType::kBF16, 5, 4, 0.1, 1.0));
  Tensor d_w_gate = ctx_.Zeros({ffn, hidden}, DType::kF32);
  Tensor d_gamma = ctx_.Zeros({ffn}, DType::kBF16);
  Tensor total = ctx_.Zeros({1}, DType::kF64);

  auto step = [&] {
    Tensor x = ctx_.Empty({tokens, hidden}, DType::kBF16);
    ops::Copy(ctx_, x32, x);
    Tensor gate = ctx_.Empty({tokens, ffn}, DType::kBF16);
    Tensor up = ctx_.Empty({tokens, ffn}, DType::kBF16);
    ops::Gemm(ctx_, x, w_gate, gate, {.trans_b = ops::Trans::kYes});
    ops::Gemm(ctx_, x, w_up, up, {.trans_b = ops::Trans::kYes});
    Tensor h = ctx_.Empty({tokens, ffn}, DType::kBF16);
    ops::SwiGlu(ctx_, gate, up, h);
    Tensor y = ctx_.Empty({tokens, ffn}, DType::kBF16);
    ops::ScaleRowsCols(ctx_, h, Tensor(), gamma, y);
    // Backward with d_y = y.
    Tensor d_h = ctx_.Empty({tokens, ffn}, DType::kBF16);
    ops::ScaleRowsColsBackward(ctx_, h, Tensor(), gamma, y, d_h, Tensor(), d_gamma);
    Tensor d_gate = ctx_.Empty({tokens, ffn}, DType::kBF16);
    Tensor d_up = ctx_.Empty({tokens, ffn}, DType::kBF16);
    ops::SwiGluBackward(ctx_, gate, up, d_h, d_gate, d_up);
    ops::Gemm(ctx_, d_gate, x, d_w_gate, {.trans_a = ops::Trans::kYes, .beta = 1.0});
    Tensor d_x = ctx_.Empty({tokens, hidden}, DType::kBF16);
    ops::Gemm(ctx_, d_up, w_up, d_x);
    Tensor d_x32 = ctx_.Empty({tokens, hidden}, DType::kF32);
    ops::Copy(ctx_, d_x, d_x32);
    ops::Axpy(ctx_, 0.5, x32, d_x32);
    ops::Scale(ctx_, 0.25, d_x32);
    Tensor s = ctx_.Empty({1}, DType::kF64);
    ops::Sum(ctx_, d_x32, s);
    ops::Axpy(ctx_, 1.0, s, total);
  };
  step();
  ASSERT_TRUE(ctx_.Synchronize().ok()) << ctx_.status();
  const AllocatorStats first = ctx_.allocator_stats();
  EXPECT_GT(first.system_allocs, 0);
  for (int i = 0; i < 10; ++i) step();
  ASSERT_TRUE(ctx_.Synchronize().ok()) << ctx_.status();
  const AllocatorStats later = ctx_.allocator_stats();
  EXPECT_EQ(later.system_allocs, first.system_allocs) << "cudaMalloc after the first step";
  EXPECT_EQ(later.system_frees, first.system_frees) << "cudaFree after the first step";
  EXPECT_GT(later.cache_hits, first.cache_hits);
  EXPECT_EQ(later.in_use_bytes, first.in_use_bytes);  // every step's block came back
  const Tensor t = Host(total);
  EXPECT_TRUE(std::isfinite(t.At(0))) << t.At(0);
}

// cudaMalloc past the device's memory (1 PiB): a ResourceExhausted status
// naming the request, the fix and what holds the memory (the 4 MiB block
// kept here), not a sticky CUDA error: the context allocates and runs on.
TEST_F(CudaContextTest, AnAllocationPastTheDeviceNamesWhatIsInUse) {
  const Tensor kept = ctx_.Empty({int64_t{1} << 20}, DType::kF32);
  const StatusOr<std::shared_ptr<Storage>> huge = ctx_.allocator().Allocate(size_t{1} << 50);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(huge.status().message());
  for (const char* part : {"cudaMalloc of 1125899906842624 bytes on cuda:",
                           "train.loss_chunk_tokens", "; in use ", " x 4 MiB"}) {
    EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
  }
  const Tensor after = ctx_.Zeros({16}, DType::kF32);
  EXPECT_EQ(Host(after).At(15), 0.0);
  EXPECT_TRUE(ctx_.status().ok()) << ctx_.status();
}

TEST_F(CudaContextTest, ACapturedGraphReplaysTheEagerWorkAndItsHostEffects) {
  const int64_t rows = 96, k = 64, cols = 80;
  const Tensor x = Dev(RandomHost({rows, k}, DType::kF32, 7, 1));
  const Tensor w = Dev(RandomHost({cols, k}, DType::kF32, 7, 2, 0.1));
  int effects = 0;
  // One "micro-batch": temporaries from the allocator, a GEMM, a reduction
  // summed into a long-lived total, and a host counter.
  auto work = [&](const Tensor& total) {
    Tensor y = ctx_.Empty({rows, cols}, DType::kF32);
    ops::Gemm(ctx_, x, w, y, {.trans_b = ops::Trans::kYes});
    ops::Scale(ctx_, 0.5, y);
    Tensor s = ctx_.Empty({1}, DType::kF64);
    ops::Sum(ctx_, y, s);
    ops::Axpy(ctx_, 1.0, s, total);
    ctx_.HostEffect([&] { ++effects; });
  };
  Tensor eager = ctx_.Zeros({1}, DType::kF64);
  for (int i = 0; i < 4; ++i) work(eager);
  ASSERT_EQ(effects, 4);

  Tensor replayed = ctx_.Zeros({1}, DType::kF64);
  ASSERT_TRUE(CudaGraph::BeginCapture(ctx_).ok());
  EXPECT_TRUE(ctx_.capturing());
  work(replayed);
  StatusOr<std::unique_ptr<CudaGraph>> graph = CudaGraph::EndCapture(ctx_);
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_FALSE(ctx_.capturing());
  EXPECT_EQ(effects, 5);  // the captured host code ran once
  ASSERT_TRUE((*graph)->Launch(/*host_effects=*/false).ok());
  ASSERT_TRUE((*graph)->Launch().ok());
  ASSERT_TRUE((*graph)->Launch().ok());
  // Eager work between replays does not disturb the graph's blocks.
  for (int i = 0; i < 4; ++i) ops::Zero(ctx_, ctx_.Empty({rows, cols}, DType::kF32));
  ASSERT_TRUE((*graph)->Launch().ok());
  EXPECT_EQ(effects, 8);
  ASSERT_TRUE(ctx_.Synchronize().ok()) << ctx_.status();
  // Four replays, four eager runs: the same terms summed in the same order.
  const double want = ctx_.ToHost(eager).At(0), got = ctx_.ToHost(replayed).At(0);
  EXPECT_EQ(got, want);
  EXPECT_NE(want, 0.0);
}

TEST_F(CudaContextTest, ACaptureThatReadsTheDeviceFromTheHostIsRefused) {
  StatusOr<ExecContext> fresh = ExecContext::Cuda(0);  // the failed read marks its context
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  const ExecContext& c = *fresh;
  const Tensor v = c.Zeros({4}, DType::kF32);
  ASSERT_TRUE(CudaGraph::BeginCapture(c).ok());
  ops::Scale(c, 2.0, v);
  (void)c.ToHost(v);
  StatusOr<std::unique_ptr<CudaGraph>> graph = CudaGraph::EndCapture(c);
  ASSERT_FALSE(graph.ok());
  EXPECT_NE(graph.status().message().find("read the device from the host 1 time"),
            std::string::npos)
      << graph.status();
  EXPECT_FALSE(c.capturing());
}

TEST_F(CudaContextTest, ACaptureOnTheCpuIsAClearError) {
  const Status st = CudaGraph::BeginCapture(ExecContext::Cpu());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("train.device: CUDA"), std::string::npos) << st;
}

}  // namespace
}  // namespace scalemoe
