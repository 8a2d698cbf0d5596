// Save/load throughput of SaveCheckpoint/LoadCheckpoint on this disk.
// Usage: checkpoint_throughput [ROOT_DIR] [MB]  (default /tmp, 512 MB of f32)
// "cold" load evicts the files from the page cache first (posix_fadvise
// DONTNEED after fsync), so it reads from the device.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <filesystem>

#include "checkpoint/checkpoint.h"

namespace ckpt = scalemoe::checkpoint;
using scalemoe::DType;
using scalemoe::Tensor;

namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Process CPU seconds: on a shared machine wall time includes waiting for a
// core; CPU time shows what the code itself costs.
double CpuSeconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

void Evict(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    int fd = ::open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string base = argc > 1 ? argv[1] : "/tmp";
  const int64_t mb = argc > 2 ? std::atoll(argv[2]) : 512;
  const std::string root = base + "/scalemoe_ckpt_throughput_" + std::to_string(::getpid());
  // 16 MB tensors (4M f32), like a mid-sized model's matrices.
  const int64_t per_tensor = 4 << 20;
  const int64_t count = mb / 16;
  ckpt::SaveRequest req;
  req.root = root;
  req.step = 1;
  for (int64_t i = 0; i < count; ++i) {
    Tensor t = Tensor::Empty({per_tensor / 1024, 1024}, DType::kF32);
    float* p = t.data<float>();
    for (int64_t j = 0; j < per_tensor; ++j) p[j] = static_cast<float>(i + j);
    req.tensors.push_back({"layers." + std::to_string(i) + ".w", t, {}, {}, ckpt::TensorRole::kModel});
  }
  const double gb = static_cast<double>(count * per_tensor * 4) / 1e9;

  auto start = std::chrono::steady_clock::now();
  double cpu_start = CpuSeconds();
  scalemoe::Status saved = ckpt::SaveCheckpoint(req);
  const double save_s = Seconds(start);
  const double save_cpu = CpuSeconds() - cpu_start;
  if (!saved.ok()) {
    std::fprintf(stderr, "save failed: %s\n", saved.ToString().c_str());
    return 1;
  }
  const std::string dir = root + "/checkpoints/step_1";
  ckpt::LoadRequest load;
  for (const auto& t : req.tensors) {
    load.targets.push_back({t.name, Tensor::Empty(t.tensor.shape(), DType::kF32), {}, {}, t.role});
  }
  double load_s[2], load_cpu[2];
  for (int cold = 1; cold >= 0; --cold) {
    if (cold) Evict(dir);
    start = std::chrono::steady_clock::now();
    cpu_start = CpuSeconds();
    auto loaded = ckpt::LoadCheckpoint(dir, load);
    load_s[cold] = Seconds(start);
    load_cpu[cold] = CpuSeconds() - cpu_start;
    if (!loaded.ok()) {
      std::fprintf(stderr, "load failed: %s\n", loaded.status().ToString().c_str());
      return 1;
    }
  }
  std::printf("%.3f GB in %lld f32 tensors under %s\n", gb, static_cast<long long>(count), base.c_str());
  std::printf("save (fsync'd):    %.2f s  %.2f GB/s  (cpu %.2f s)\n", save_s, gb / save_s, save_cpu);
  std::printf("load (cold cache): %.2f s  %.2f GB/s  (cpu %.2f s)\n", load_s[1], gb / load_s[1],
              load_cpu[1]);
  std::printf("load (warm cache): %.2f s  %.2f GB/s  (cpu %.2f s)\n", load_s[0], gb / load_s[0],
              load_cpu[0]);
  std::filesystem::remove_all(root);
  return 0;
}
