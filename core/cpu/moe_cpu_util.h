// Element helpers of the MoE and vocab-parallel CPU ops (core/cpu/moe_*.cc,
// vocab_parallel.cc): f32 and f64 compute in themselves, bf16 is loaded into
// f32, computed in f32 and rounded (to nearest even) on store. Only those
// files include this.
#pragma once

#include <string>
#include <type_traits>

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::cpu::moe_util {

// The type an element of storage type T is computed in.
template <typename T>
using Compute = std::conditional_t<std::is_same_v<T, bf16>, float, T>;

template <typename T>
Compute<T> Load(T v) {
  return static_cast<Compute<T>>(v);
}

template <typename T, typename V>
T Store(V v) {
  if constexpr (std::is_same_v<T, bf16>) {
    return bf16(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Calls f(T{}) with T the element type of a float dtype (f32, f64, bf16).
template <typename F>
void ForFloat(const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kBF16: f(bf16{}); return;
    default: SM_CHECK_MSG(false, "expected an f32/f64/bf16 tensor, got ", t.DebugString());
  }
}

// A contiguous CPU tensor of `dtype` (any dtype when `dtype` is null).
inline void CheckCpu(const char* op, const char* what, const Tensor& t,
                     const DType* dtype = nullptr) {
  SM_CHECK_MSG(t.defined() && t.device() == Device::kCPU && t.is_contiguous() &&
                   (dtype == nullptr || t.dtype() == *dtype),
               op, ": ", what, " must be a contiguous CPU ",
               dtype ? DTypeName(*dtype) : "", " tensor, got ",
               t.defined() ? t.DebugString() : std::string("an undefined tensor"));
}

}  // namespace scalemoe::cpu::moe_util
