// Shared by the trainer tests: a tiny synthetic corpus prepared into a
// dataset, a tiny config over it, and metrics/checkpoint readers.
#pragma once

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "core/context.h"
#include "configs/scalemoe.pb.h"
#include "core/params.h"
#include "data/prepare.h"
#include "gtest/gtest.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "model/model.h"

namespace scalemoe::testing {

// Writes a corpus of templated sentences (learnable structure) under `root`
// and prepares it (BPE of 320 ids) into root/dataset.
inline Status MakeTinyDataset(const std::filesystem::path& root) {
  const char* names[] = {"Emma", "Harriet", "Mr. Knightley", "Jane", "Frank"};
  const char* verbs[] = {"walked to", "wrote to", "spoke of", "thought of", "visited"};
  const char* places[] = {"Highbury", "Randalls", "Hartfield", "London", "Donwell"};
  std::filesystem::create_directories(root);
  {
    std::ofstream corpus(root / "corpus.txt");
    for (int doc = 0; doc < 120; ++doc) {
      for (int s = 0; s < 12; ++s) {
        const int i = (doc * 7 + s * 3) % 5, j = (doc + s) % 5, k = (doc * 3 + s) % 5;
        corpus << names[i] << " " << verbs[j] << " " << places[k] << " on day " << (s + doc) % 9
               << ". ";
      }
      corpus << "\n" << kDocumentSeparator << "\n";
    }
  }
  PrepareOptions prep;
  prep.input = (root / "corpus.txt").string();
  prep.tokenizer_dir = (root / "tokenizer").string();
  prep.out_dir = (root / "dataset").string();
  prep.train_tokenizer_vocab = 320;
  prep.val_fraction = 0.1;
  prep.threads = 1;
  return PrepareDataset(prep).status();
}

// A suite over one tiny dataset (MakeTinyDataset) in a temporary directory
// of this process, root_, made once for the suite and removed after it.
class TinyDatasetSuite : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                      ("scalemoe_tiny_suite_" + std::to_string(::getpid())));
    std::filesystem::remove_all(*root_);
    Status made = MakeTinyDataset(*root_);
    ASSERT_TRUE(made.ok()) << made;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*root_);
    delete root_;
    root_ = nullptr;
  }
  inline static std::filesystem::path* root_ = nullptr;
};

// The same for gpu-labelled tests: each test is skipped without a CUDA
// device, and fails instead under SCALEMOE_REQUIRE_GPU=1.
class TinyDatasetGpuSuite : public TinyDatasetSuite {
 protected:
  void SetUp() override {
    if (ExecContext::CudaDeviceCount() > 0) return;
    const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");
    if (require != nullptr && std::strcmp(require, "1") == 0) {
      FAIL() << "SCALEMOE_REQUIRE_GPU=1 but no CUDA device";
    }
    GTEST_SKIP() << "no CUDA device on this machine: gpu test skipped";
  }
};

// tiny_cpu's strategy on a 2-layer, 16-wide model with 4 experts over the
// dataset under `root`; `extra` overrides come last.
inline config::RunConfig TinyTrainingConfig(const std::filesystem::path& root,
                                            const std::vector<std::string>& extra = {}) {
  std::vector<std::string> overrides = {
      "model.num_layers=2", "model.hidden_size=16", "model.num_heads=2",
      "model.num_kv_heads=1", "model.ffn_hidden_size=32", "model.vocab_size=320",
      "model.seq_length=16", "moe.num_experts=4", "moe.top_k=2",
      "moe.expert_ffn_hidden_size=16", "train.micro_batch_size=2",
      "train.global_batch_size=4", "train.train_steps=8", "train.eval_interval=4",
      "train.eval_batches=2", "schedule.warmup_steps=2", "logging.log_interval=1",
      "checkpoint.interval=2", "checkpoint.keep_last=0",
      "data.dataset_dir=" + (root / "dataset").string()};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  StatusOr<config::RunConfig> cfg = LoadConfig("configs/tiny_cpu.textproto", overrides);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return cfg.ok() ? *cfg : config::RunConfig();
}

// The "loss" of every logged step of a run, in order.
inline std::vector<double> ReadLosses(const std::string& run_dir) {
  StatusOr<std::vector<nlohmann::json>> records =
      ReadMetricsFile((std::filesystem::path(run_dir) / "metrics.jsonl").string());
  EXPECT_TRUE(records.ok()) << records.status();
  std::vector<double> losses;
  if (!records.ok()) return losses;
  for (const auto& r : *records) {
    if (r.contains("loss")) losses.push_back(r["loss"].get<double>());
  }
  return losses;
}

// Every model parameter of checkpoint `dir` (written by any layout), loaded
// whole into a single-rank registry of `cfg`'s model.
struct WholeModel {
  std::unique_ptr<ParamRegistry> registry;
  std::unique_ptr<MoeTransformer> model;
};
inline StatusOr<WholeModel> LoadWholeModel(const config::RunConfig& cfg, const std::string& dir) {
  WholeModel whole;
  whole.registry = std::make_unique<ParamRegistry>();
  whole.model = std::make_unique<MoeTransformer>(*whole.registry, cfg);
  SM_RETURN_IF_ERROR(whole.registry->Materialize(0, DType::kF32, Device::kCPU));
  checkpoint::LoadRequest request;
  for (const auto& p : whole.registry->params()) {
    request.targets.push_back({p->spec.name, p->value, {}, {}, checkpoint::TensorRole::kModel});
  }
  SM_RETURN_IF_ERROR(checkpoint::LoadCheckpoint(dir, request).status());
  return whole;
}

// ‖a − b‖ / max(‖b‖, tiny) over two tensors' elements.
inline double RelativeDifference(const Tensor& a, const Tensor& b) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    diff += (a.At(i) - b.At(i)) * (a.At(i) - b.At(i));
    norm += b.At(i) * b.At(i);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

}  // namespace scalemoe::testing
