// Helpers of the gpu-labelled CUDA op tests (tests/core/cuda_*_test.cc):
// a fixture that holds a CUDA context (or skips without a device), random
// host tensors (Philox), device copies, NaN-poisoned device outputs, and the
// per-tensor parity check against the CPU reference.
//
// Without a CUDA device every test skips with a message (CTest reports the
// gpu label's skips as skipped). With SCALEMOE_REQUIRE_GPU=1 a missing
// device fails instead, so a run on the GPU machine cannot skip silently.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "core/philox.h"
#include "gtest/gtest.h"

namespace scalemoe::testing {

// Tolerances on max|got − ref| / max|ref| (the issue's): f32 1e-5 against a
// reference computed in f64 on the same inputs, bf16 1e-2 against the CPU
// bf16 reference, f64 1e-12.
inline double ParityTolerance(DType dtype) {
  switch (dtype) {
    case DType::kF64: return 1e-12;
    case DType::kBF16: return 1e-2;
    default: return 1e-5;
  }
}

// The GEMM ops' input -> output dtypes (ops::Gemm, ops::GroupedGemm*), and
// their tolerance: bf16 -> f32 is held to 1e-4 of the f64 product of the
// same bf16 values (the f32 accumulation's error; the bf16 bound is
// 1e-2), the rest to ParityTolerance of the output.
struct GemmDTypes {
  DType in, out;
};
inline constexpr GemmDTypes kGemmDTypes[] = {{DType::kF32, DType::kF32},
                                             {DType::kF64, DType::kF64},
                                             {DType::kBF16, DType::kBF16},
                                             {DType::kBF16, DType::kF32}};
inline double GemmTolerance(GemmDTypes d) {
  if (d.in == DType::kBF16 && d.out == DType::kF32) return 1e-4;
  return ParityTolerance(d.out);
}

// Host tensor of `dtype` with N(offset, scale²) entries drawn by Philox
// (seed, stream), converted (rounded for bf16).
inline Tensor RandomHost(const Shape& shape, DType dtype, uint64_t seed, uint64_t stream,
                         double scale = 1.0, double offset = 0.0) {
  Tensor f64 = Tensor::Empty(shape, DType::kF64);
  for (int64_t i = 0; i < f64.numel(); ++i) {
    f64.data<double>()[i] = offset + scale * PhiloxNormal(seed, stream, static_cast<uint64_t>(i));
  }
  if (dtype == DType::kF64) return f64;
  Tensor out = Tensor::Empty(shape, dtype);
  out.CopyFrom(f64);
  return out;
}

// The reference's input: f64 for f32 and f64 tensors (the reference then
// measures the GPU's error alone), unchanged bf16 for bf16 (the CPU bf16
// path is the reference).
inline Tensor ReferenceInput(const Tensor& host) {
  if (!host.defined() || host.dtype() == DType::kBF16 || host.dtype() == DType::kF64) return host;
  Tensor out = Tensor::Empty(host.shape(), DType::kF64);
  out.CopyFrom(host);
  return out;
}

// An f64 copy of host tensor `host` (itself when already f64): a reference
// input that measures the GPU's error alone (bf16 values are exact in f64).
inline Tensor F64(const Tensor& host) {
  if (host.dtype() == DType::kF64) return host;
  Tensor out = Tensor::Empty(host.shape(), DType::kF64);
  out.CopyFrom(host);
  return out;
}

inline Tensor HostCopy(const Tensor& t) { return t.defined() ? t.Clone() : t; }

inline double MaxAbs(const Tensor& host) {
  double m = 0;
  for (int64_t i = 0; i < host.numel(); ++i) m = std::max(m, std::abs(host.At(i)));
  return m;
}

// max|got − ref| / max|ref| within `tol`, every element of got finite. A
// zero reference needs got == 0 to within tol.
inline void ExpectParity(const Tensor& got, const Tensor& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  double max_diff = 0;
  int64_t worst = -1;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.At(i), r = ref.At(i);
    ASSERT_TRUE(std::isfinite(r)) << what << ": reference element " << i << " is " << r;
    ASSERT_TRUE(std::isfinite(g)) << what << ": element " << i << " is " << g
                                  << " (reference " << r << ")";
    if (std::abs(g - r) > max_diff) {
      max_diff = std::abs(g - r);
      worst = i;
    }
  }
  const double ref_max = MaxAbs(ref);
  EXPECT_LE(ref_max > 0 ? max_diff / ref_max : max_diff, tol)
      << what << ": max|diff| " << max_diff << " at element " << worst << " (got "
      << (worst >= 0 ? got.At(worst) : 0.0) << ", reference " << (worst >= 0 ? ref.At(worst) : 0.0)
      << "), max|ref| " << ref_max;
}

// bf16 results against the CPU's bf16 path on the same inputs, element by
// element: within one bf16 rounding of the reference (2^-7 of it: an ulp,
// what two roundings of nearly equal f32 values can differ by), plus
// abs_frac of max|ref| (the f32 sums' order, where a reduction feeds the
// element). `inner`, if defined, is an intermediate the op rounded to bf16
// before a last add (RmsNormalizeBackwardAdd's backward): its rounding may
// differ too, by 2^-7 of it.
inline void ExpectBf16Parity(const Tensor& got, const Tensor& ref, double abs_frac,
                             const std::string& what, const Tensor& inner = Tensor()) {
  constexpr double kUlp = 1.0 / 128;
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  const double slack = abs_frac * MaxAbs(ref);
  int reported = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.At(i), r = ref.At(i);
    ASSERT_TRUE(std::isfinite(r)) << what << ": reference element " << i << " is " << r;
    const double tol =
        kUlp * std::abs(r) + (inner.defined() ? kUlp * std::abs(inner.At(i)) : 0.0) + slack;
    if (!(std::abs(g - r) <= tol) && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", reference " << r
                    << " (tolerance " << tol << ")";
    }
  }
}

// A device copy of host tensor t starting one element past a 16-byte
// boundary (kernels with 16-byte packs then take their one-element path).
inline Tensor Misaligned(const ExecContext& ctx, const Tensor& t) {
  Tensor buffer = ctx.Empty({t.numel() + 1}, t.dtype());
  Tensor view = buffer.Narrow(0, 1, t.numel()).View(t.shape());
  ops::Copy(ctx, ctx.ToDevice(t), view);
  return view;
}

inline bool BitwiseEqual(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

class CudaOpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      (void)cudaGetLastError();
      const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");
      if (require != nullptr && std::strcmp(require, "1") == 0) {
        FAIL() << "SCALEMOE_REQUIRE_GPU=1 but no CUDA device: " << cudaGetErrorString(err);
      }
      GTEST_SKIP() << "no CUDA device on this machine (" << cudaGetErrorString(err)
                   << "): gpu test skipped";
    }
    StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = *std::move(ctx);
  }

  void TearDown() override {
    if (ctx_.device() == Device::kCUDA) {
      const Status st = ctx_.Synchronize();
      EXPECT_TRUE(st.ok()) << st;
    }
  }

  // A device copy of host tensor t (undefined stays undefined).
  Tensor Dev(const Tensor& host) const { return host.defined() ? ctx_.ToDevice(host) : host; }
  // A device tensor of NaN bytes (0xFF), for outputs that must be written.
  Tensor Poisoned(const Shape& shape, DType dtype) const {
    Tensor t = ctx_.Empty(shape, dtype);
    if (t.nbytes() > 0) {
      EXPECT_EQ(cudaMemsetAsync(t.raw_data(), 0xFF, t.nbytes(),
                                static_cast<cudaStream_t>(ctx_.stream())),
                cudaSuccess);
    }
    return t;
  }
  // A host copy of device tensor t (waits for the stream).
  Tensor Host(const Tensor& dev) const { return dev.defined() ? ctx_.ToHost(dev) : dev; }
  ExecContext cpu_ = ExecContext::Cpu({.poison = false});
  ExecContext ctx_;  // the CUDA context (a CPU one until SetUp succeeds)
};

}  // namespace scalemoe::testing
