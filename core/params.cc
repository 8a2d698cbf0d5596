#include "core/params.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <thread>

#include "core/philox.h"

#if SCALEMOE_CUDA
#include <cuda_runtime.h>
#endif

namespace scalemoe {

const char* ParamRoleName(ParamRole role) {
  switch (role) {
    case ParamRole::kLinear: return "linear";
    case ParamRole::kExpertLinear: return "expert_linear";
    case ParamRole::kRouter: return "router";
    case ParamRole::kEmbedding: return "embedding";
    case ParamRole::kLmHead: return "lm_head";
    case ParamRole::kInputNormScale: return "input_norm_scale";
    case ParamRole::kOutputNormScale: return "output_norm_scale";
    case ParamRole::kBias: return "bias";
    case ParamRole::kExpertBias: return "expert_bias";
  }
  return "?";
}

bool IsScaleVector(ParamRole role) {
  return role == ParamRole::kInputNormScale || role == ParamRole::kOutputNormScale;
}

bool IsTrainable(ParamRole role) { return role != ParamRole::kExpertBias; }

namespace {

int SplitSize(const ParamLayout& layout, const ShardCoords& c) {
  if (layout.tp_split_dim < 0) return 1;
  return layout.tp_group == TpGroup::kExpert ? c.etp_size : c.tp_size;
}
int SplitRank(const ParamLayout& layout, const ShardCoords& c) {
  if (layout.tp_split_dim < 0) return 0;
  return layout.tp_group == TpGroup::kExpert ? c.etp_rank : c.tp_rank;
}

}  // namespace

int64_t Param::SplitStart(const ShardCoords& coords) const {
  if (spec.layout.tp_split_dim < 0) return 0;
  return SplitRank(spec.layout, coords) * local_shape[spec.layout.tp_split_dim];
}

int64_t Param::GlobalIndex(int64_t local_index, const ShardCoords& coords) const {
  const int d = spec.layout.tp_split_dim;
  if (d < 0) return local_index;
  // Decompose the local row-major index, shift the split coordinate, recompose.
  const int64_t start = SplitStart(coords);
  int64_t global = 0, stride = 1, rest = local_index;
  for (int i = static_cast<int>(local_shape.size()) - 1; i >= 0; --i) {
    int64_t coord = rest % local_shape[i];
    rest /= local_shape[i];
    if (i == d) coord += start;
    global += coord * stride;
    stride *= spec.shape[i];
  }
  return global;
}

ParamRegistry::ParamRegistry(ShardCoords coords) : coords_(coords) {}

Param* ParamRegistry::Create(ParamSpec spec) {
  SM_CHECK_MSG(!materialized(), "Create(", spec.name, ") after Materialize");
  SM_CHECK_MSG(Find(spec.name) == nullptr, "duplicate parameter name ", spec.name);
  auto p = std::make_unique<Param>();
  p->local_shape = spec.shape;
  const int d = spec.layout.tp_split_dim;
  if (d >= 0) {
    SM_CHECK_MSG(d < static_cast<int>(spec.shape.size()), spec.name, ": split dim ", d);
    const int n = SplitSize(spec.layout, coords_);
    SM_CHECK_MSG(spec.shape[d] % n == 0, spec.name, ": dim ", d, " of ",
                 ShapeString(spec.shape), " not divisible by TP size ", n);
    p->local_shape[d] /= n;
  }
  // A matrix after a vector (or first) starts aligned (params.h); matrices
  // in a row stay back to back (their sizes keep them aligned).
  if (p->local_shape.size() >= 2 && (params_.empty() || params_.back()->local_shape.size() < 2)) {
    total_ = (total_ + kParamAlignment - 1) / kParamAlignment * kParamAlignment;
  }
  p->spec = std::move(spec);
  p->flat_offset = total_;
  total_ += p->local_numel();
  params_.push_back(std::move(p));
  return params_.back().get();
}

namespace {

// Elements [begin, end) of p's initial value (f64) into out[begin, end).
void FillInit(const Param& p, uint64_t seed, const ShardCoords& coords, int64_t begin, int64_t end,
              double* out) {
  const uint64_t stream = HashName(p.spec.name);
  for (int64_t i = begin; i < end; ++i) {
    switch (p.spec.init.kind) {
      case InitKind::kNormal:
        out[i] = p.spec.init.scale * PhiloxNormal(seed, stream, p.GlobalIndex(i, coords));
        break;
      case InitKind::kOnes:
        out[i] = 1.0;
        break;
      case InitKind::kZeros:
        out[i] = 0.0;
        break;
      case InitKind::kConstant:
        out[i] = p.spec.init.scale;
        break;
    }
  }
}

// Below this many elements one thread fills a parameter.
constexpr int64_t kInitElementsPerThread = int64_t{1} << 16;

}  // namespace

int ParamRegistry::InitThreads() const {
  if (init_threads_ > 0) return init_threads_;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

void ParamRegistry::InitValue(Param& p, uint64_t seed) const {
  // Initialise on the host in f64, then store in the parameter's dtype. Each
  // element is a pure function of (seed, name, global index), so threads
  // filling disjoint ranges give the same bits as one. On one core the f64
  // Box-Muller costs ~40 ns an element: ~25 s for gpu_moe_125m's 620M.
  const int64_t n = p.local_numel();
  std::vector<double> host(n);
  const int threads = static_cast<int>(
      std::clamp<int64_t>(n / kInitElementsPerThread, 1, std::max(1, InitThreads())));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back(FillInit, std::cref(p), seed, std::cref(coords_), n * t / threads,
                      n * (t + 1) / threads, host.data());
  }
  FillInit(p, seed, coords_, 0, n / threads, host.data());
  for (std::thread& t : pool) t.join();
  Tensor src = Tensor::FromBlob(host.data(), p.local_shape, DType::kF64, Device::kCPU);
  if (p.value.device() == Device::kCPU) {
    p.value.CopyFrom(src);
  } else {
    Tensor staged = Tensor::Empty(p.local_shape, p.value.dtype());
    staged.CopyFrom(src);
    p.value.CopyFrom(staged);
  }
}

Status ParamRegistry::Materialize(uint64_t seed, DType dtype, Device device) {
  if (materialized()) return absl::FailedPreconditionError("Materialize called twice");
  SM_ASSIGN_OR_RETURN(flat_values_, Tensor::TryEmpty({total_}, dtype, device));
  SM_ASSIGN_OR_RETURN(flat_grads_, Tensor::TryEmpty({total_}, dtype, device));
  ZeroFlat(flat_values_);  // the padding between parameters stays zero
  for (auto& p : params_) {
    p->value = flat_values_.Narrow(0, p->flat_offset, p->local_numel()).View(p->local_shape);
    p->grad = flat_grads_.Narrow(0, p->flat_offset, p->local_numel()).View(p->local_shape);
    InitValue(*p, seed);
  }
  ZeroGrads();
  return absl::OkStatus();
}

Param* ParamRegistry::Find(std::string_view name) const {
  for (const auto& p : params_) {
    if (p->spec.name == name) return p.get();
  }
  return nullptr;
}

void ParamRegistry::ZeroFlat(const Tensor& flat) {
  if (!flat.defined()) return;
  if (flat.device() == Device::kCPU) {
    std::memset(flat.raw_data(), 0, flat.nbytes());
  } else {
#if SCALEMOE_CUDA
    cudaMemset(flat.raw_data(), 0, flat.nbytes());
#endif
  }
}

void ParamRegistry::ZeroGrads() { ZeroFlat(flat_grads_); }

}  // namespace scalemoe
