// Parameters describe themselves. Every trainable tensor (and every state
// buffer a checkpoint must keep) is created through a ParamRegistry with a
// ParamSpec: stable global name, global shape, role, init and layout across
// ranks. The optimizer's decay policy, gradient sync, the ZeRO shard map,
// checkpoints and the parameter report read ParamSpec; nothing else matches
// on parameter names.
//
// Lifetime: layers Create() their parameters at construction and keep the
// returned Param*; Materialize() then allocates one flat value buffer and one
// flat grad buffer and fills values from (seed, name, global index). Param*
// stay valid for the registry's lifetime; the registry is neither copyable
// nor movable after the first Create.
//
// Layout: registration order, so a layer's parameters are contiguous up to
// padding. A matrix (ndim >= 2) that follows a vector or a scalar starts on a
// multiple of kParamAlignment elements, so that GEMMs and packed kernels get
// 16-byte-aligned f32 weights and gradients even behind scalar β's; matrices
// registered in a row stay back to back (gate|up's one GEMM joins two). The
// padding stays zero, belongs to no parameter and is never trained, counted
// or saved.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

// What a parameter is, for the optimizer and the reports. See
// SCALE_VECTORS.md for the two scale-vector roles.
enum class ParamRole : uint8_t {
  kLinear = 0,        // dense weight matrix (attention, dense MLP)
  kExpertLinear,      // routed or shared expert weight matrix
  kRouter,            // router weight matrix
  kEmbedding,         // token embedding (also the head when tied)
  kLmHead,            // untied output projection
  kInputNormScale,    // γ (or its α/β) feeding a linear map: decayed under IWD
  kOutputNormScale,   // γ (or u, α/β) with no linear map after: never decayed under IWD
  kBias,              // additive bias
  kExpertBias,        // aux-loss-free routing bias: a buffer, updated by rule, not by grads
};
const char* ParamRoleName(ParamRole role);
bool IsScaleVector(ParamRole role);
// Whether the optimizer updates this parameter from gradients.
bool IsTrainable(ParamRole role);

enum class InitKind : uint8_t { kNormal = 0, kOnes, kZeros, kConstant };
struct InitSpec {
  InitKind kind = InitKind::kNormal;
  double scale = 0.02;  // std for kNormal, value for kConstant
  static InitSpec Normal(double std) { return {InitKind::kNormal, std}; }
  static InitSpec Ones() { return {InitKind::kOnes, 1.0}; }
  static InitSpec Zeros() { return {InitKind::kZeros, 0.0}; }
  static InitSpec Constant(double v) { return {InitKind::kConstant, v}; }
};

// Which tensor-parallel group splits a parameter.
enum class TpGroup : uint8_t { kDense = 0, kExpert = 1 };  // TP or ETP

// How a parameter is laid out across ranks. Everything is "whole" in a world
// of one; the fields say what happens under each parallel axis.
struct ParamLayout {
  int tp_split_dim = -1;          // -1: replicated over (E)TP; else split on this dim
  TpGroup tp_group = TpGroup::kDense;
  int expert = -1;                // routed expert index (owned by one EP rank), -1 if none
  int layer = -1;                 // transformer layer, -1 for embedding/final norm/head
  int pipeline_stage = 0;         // stage that owns it (set by the model under PP)
  // Replicated over its (E)TP group, but each (E)TP rank's backward leaves
  // only its share of the gradient: the vector feeds a tensor-parallel map
  // (γ in front of a column-parallel linear, u after a row-parallel one, the
  // β of a split β·α) or sees only this rank's tokens (the MoE layer's
  // router and shared parts; norms under sequence parallelism). The model
  // sums these over the tp_group's communicator once per step, before any
  // data-parallel reduction (parallel/tp_grad_reduce.h). False for split
  // parameters and for replicated ones every (E)TP rank computes in full.
  bool tp_partial_grad = false;
  bool is_expert() const { return expert >= 0 || tp_group == TpGroup::kExpert; }
};

// What a scale-vector parameter forms and where that vector can be folded
// (SCALE_VECTORS.md, "Cost"): an export multiplies every vector that folds
// into a weight into it — Input-Norm γ's into its columns, output-side u's
// into its rows — and needs nothing else to know which is which.
enum class FoldSide : uint8_t { kColumns = 0, kRows = 1 };
struct FoldTarget {
  std::string weight;  // the weight's ParamSpec name
  FoldSide side = FoldSide::kColumns;
};
enum class VectorPart : uint8_t { kPlain = 0, kAlpha = 1, kBeta = 2 };  // γ, or γ = β·α
struct ScaleVectorInfo {
  std::string vector;  // the effective vector's name (a plain γ's own name; α and β share it)
  VectorPart part = VectorPart::kPlain;
  std::vector<FoldTarget> folds_into;  // empty: no weight follows it (kept as a norm scale)
};

struct ParamSpec {
  std::string name;  // stable global name, e.g. "layers.3.moe.experts.7.w_up"
  Shape shape;       // global shape
  ParamRole role = ParamRole::kLinear;
  InitSpec init;
  ParamLayout layout;
  ScaleVectorInfo scale_vector = {};  // scale-vector roles only
};

// Where this process sits, for slicing split parameters.
struct ShardCoords {
  int tp_rank = 0, tp_size = 1;    // dense tensor parallel
  int etp_rank = 0, etp_size = 1;  // expert tensor parallel
};

// Alignment of every matrix parameter's flat offset, in elements.
constexpr int64_t kParamAlignment = 4;

struct Param {
  ParamSpec spec;
  Shape local_shape;         // shape held on this rank
  int64_t flat_offset = 0;   // element offset in the registry's flat buffers
  Tensor value;              // view into the flat value buffer
  Tensor grad;               // view into the flat grad buffer

  int64_t local_numel() const { return NumElements(local_shape); }
  // Global element index of local element `i` (row-major), for init and
  // checkpoint slicing.
  int64_t GlobalIndex(int64_t local_index, const ShardCoords& coords) const;
  // First global coordinate held here on the split dim (0 when replicated).
  int64_t SplitStart(const ShardCoords& coords) const;
};

class ParamRegistry {
 public:
  explicit ParamRegistry(ShardCoords coords = {});
  ParamRegistry(const ParamRegistry&) = delete;
  ParamRegistry& operator=(const ParamRegistry&) = delete;

  // Registers a parameter; names must be unique and split dims divisible by
  // the TP size (SM_CHECK: layers construct specs from validated configs).
  Param* Create(ParamSpec spec);

  // Allocates flat buffers and initialises every value. Call once.
  Status Materialize(uint64_t seed, DType dtype, Device device);

  // Re-runs the init of one parameter (tests; resets to the init function).
  void InitValue(Param& p, uint64_t seed) const;
  // Host threads that fill a large parameter's initial value (the values do
  // not depend on it); 0, the default: one per hardware thread.
  void set_init_threads(int threads) { init_threads_ = threads; }

  const std::vector<std::unique_ptr<Param>>& params() const { return params_; }
  Param* Find(std::string_view name) const;  // nullptr if absent
  const ShardCoords& coords() const { return coords_; }
  bool materialized() const { return flat_values_.defined(); }

  const Tensor& flat_values() const { return flat_values_; }
  const Tensor& flat_grads() const { return flat_grads_; }
  // Elements of each flat buffer: the parameters' and the padding before
  // aligned matrices (kParamAlignment).
  int64_t total_local_numel() const { return total_; }
  void ZeroGrads();

 private:
  static void ZeroFlat(const Tensor& flat);

  int InitThreads() const;

  ShardCoords coords_;
  int init_threads_ = 0;
  std::vector<std::unique_ptr<Param>> params_;
  Tensor flat_values_;
  Tensor flat_grads_;
  int64_t total_ = 0;
};

}  // namespace scalemoe
