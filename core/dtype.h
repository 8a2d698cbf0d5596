// Element types and devices. bf16 is a storage type: the CPU backend computes
// in f32 and rounds (round-to-nearest-even) on store.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#if defined(__CUDACC__)
#define SM_HOST_DEVICE __host__ __device__
#else
#define SM_HOST_DEVICE
#endif

namespace scalemoe {

enum class DType : uint8_t { kF32 = 0, kF64 = 1, kBF16 = 2, kI32 = 3, kI64 = 4 };
enum class Device : uint8_t { kCPU = 0, kCUDA = 1 };

// Brain float: the upper 16 bits of an IEEE float32.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  SM_HOST_DEVICE explicit bf16(float f) { bits = FromFloat(f); }
  SM_HOST_DEVICE explicit operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  SM_HOST_DEVICE static uint16_t FromFloat(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>((u + rounding) >> 16);
  }
};

size_t DTypeSize(DType dtype);
// The dtype of statistics over data of `data` (a norm's rstd, partial sums
// to reduce): the same, except f32 for bf16 (never rounded to bf16).
inline DType StatDType(DType data) { return data == DType::kBF16 ? DType::kF32 : data; }
const char* DTypeName(DType dtype);
const char* DeviceName(Device device);

// Maps a C++ element type to its DType (compile-time).
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kF64; };
template <> struct DTypeOf<bf16> { static constexpr DType value = DType::kBF16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kI32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kI64; };

}  // namespace scalemoe
