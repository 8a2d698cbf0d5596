// Checkpoint save/load throughput for a preset's full training state
// (parameters + AdamW m and v, f32) on one rank: the figure RESULTS.md
// records for gpu_moe_125m.
// usage: checkpoint_bench [CONFIG] [DIR]   (run from the repository root)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/params.h"
#include "launch/config.h"
#include "model/model.h"

namespace scalemoe {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int Run(const std::string& config_path, const std::string& dir) {
  StatusOr<config::RunConfig> cfg = LoadConfig(config_path, {});
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s\n", std::string(cfg.status().message()).c_str());
    return 2;
  }
  ParamRegistry registry;
  MoeTransformer model(registry, *cfg);
  auto t = Clock::now();
  if (Status s = registry.Materialize(1, DType::kF32, Device::kCPU); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::printf("%s: %lld parameters, init %.1f s\n", config_path.c_str(),
              static_cast<long long>(registry.total_local_numel()), Since(t));
  // Optimizer moments as the trainer stores them: per parameter, flattened.
  Tensor adam_m = Tensor::Zeros({registry.total_local_numel()}, DType::kF32);
  Tensor adam_v = Tensor::Zeros({registry.total_local_numel()}, DType::kF32);
  std::vector<checkpoint::NamedTensor> tensors;
  for (const auto& p : registry.params()) {
    tensors.push_back({p->spec.name, p->value, {}, {}, checkpoint::TensorRole::kModel});
    for (auto [name, flat] : {std::pair{"adam_m", adam_m}, std::pair{"adam_v", adam_v}}) {
      tensors.push_back({std::string("optimizer.") + name + "/" + p->spec.name,
                         flat.Narrow(0, p->flat_offset, p->local_numel()),
                         {p->local_numel()}, {0}, checkpoint::TensorRole::kState});
    }
  }
  const double gb = 3.0 * registry.total_local_numel() * 4 / 1e9;
  std::filesystem::remove_all(dir);
  checkpoint::SaveRequest save;
  save.root = dir;
  save.step = 1;
  save.tensors = tensors;
  t = Clock::now();
  if (Status s = checkpoint::SaveCheckpoint(save); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  const double save_s = Since(t);
  checkpoint::LoadRequest load;
  load.targets = tensors;
  t = Clock::now();
  if (Status s = checkpoint::LoadCheckpoint(dir + "/checkpoints/step_1", load).status(); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  const double load_s = Since(t);
  std::printf("state %.2f GB | save %.2f s = %.2f GB/s (fsync'd) | load %.2f s = %.2f GB/s "
              "(page cache warm, checksums verified)\n",
              gb, save_s, gb / save_s, load_s, gb / load_s);
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) {
  return scalemoe::Run(argc > 1 ? argv[1] : "configs/gpu_moe_125m.textproto",
                       argc > 2 ? argv[2] : "/tmp/scalemoe_checkpoint_bench");
}
