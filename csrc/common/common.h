// Shared definitions for dilseg's framework-agnostic kernels.
//
// Kernels take raw pointers, sizes and strides (in elements) and where to run (a
// launch tag, below); they know nothing about torch. The bindings turn tensors into
// these.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define DILSEG_HD __host__ __device__ __forceinline__
#else
#define DILSEG_HD inline
#endif

namespace dilseg {

// Element types a kernel may see. Names, never bare integers, cross the binding.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3, UInt8 = 4 };

// Interpolation of a pull-back warp.
enum class Interp : int { Bilinear = 0, Nearest = 1 };

// What a sample outside the source reads: zeros, or the nearest border value
// (the coordinate is clamped to [0, size-1] before interpolation).
enum class Padding : int { Zeros = 0, Border = 1 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::UInt8: return "uint8";
  }
  return "unknown";
}

// Where a kernel runs: the one argument in which an op's CPU and CUDA entries differ.
// Each op declares `void <fn>(<args>..., CpuLaunch on)` (csrc/<op>/<op>_cpu.cpp) and,
// where it has a CUDA kernel, the same function with `CudaLaunch on` (csrc/<op>/<op>.cu);
// one binding serves both (bindings/binding.h: Launch).
struct CpuLaunch {
  int num_threads;  // OpenMP threads
};
struct CudaLaunch {
  uintptr_t stream;  // a cudaStream_t passed as an integer handle; the current device runs it
};

// Thrown for argument combinations a kernel does not implement; the bindings turn
// it into a Python ValueError. Python entries validate first, so users never see it.
struct KernelArgError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// ---------------------------------------------------------------------------
// Host-side 16-bit float storage types (CPU kernels). Bit-exact round-to-nearest-
// even conversions, so CPU results match torch's own casts.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // subnormal: value = mant * 2^-24
    float v = (float)mant * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or nan
    return (uint16_t)(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
  }
  if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // overflow -> inf
  if (x < 0x38800000u) {                                       // subnormal or zero in half
    // value * 2^24 rounded to nearest even gives the subnormal mantissa
    float v = bits_to_float(x) * 16777216.0f;
    float r = v;
    // round half to even without <cmath> dependence on rounding mode
    float fl = (float)(uint32_t)r;
    float frac = r - fl;
    uint32_t m = (uint32_t)fl;
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m += 1;
    return (uint16_t)(sign | m);
  }
  // normal: rebias exponent, round mantissa from 23 to 10 bits (nearest even)
  uint32_t mant = x & 0x7fffffu;
  uint32_t exp = (x >> 23) - 112u;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;  // may carry into exponent: fine
  return (uint16_t)(sign | h);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet nan
  uint32_t lsb = (x >> 16) & 1u;
  x += 0x7fffu + lsb;  // round to nearest even
  return (uint16_t)(x >> 16);
}

// Load/store any storage type as the accumulation type A (float or double).
template <typename T, typename A>
struct Cvt {
  static inline A load(T v) { return (A)v; }
  static inline T store(A v) { return (T)v; }
};
template <typename A>
struct Cvt<Half, A> {
  static inline A load(Half v) { return (A)half_to_float(v.bits); }
  static inline Half store(A v) { return Half{float_to_half((float)v)}; }
};
template <typename A>
struct Cvt<BFloat16, A> {
  static inline A load(BFloat16 v) { return (A)bf16_to_float(v.bits); }
  static inline BFloat16 store(A v) { return BFloat16{float_to_bf16((float)v)}; }
};
template <typename A>
struct Cvt<uint8_t, A> {
  static inline A load(uint8_t v) { return (A)v; }
  // only nearest-mode copies store into uint8: values are exact small integers
  static inline uint8_t store(A v) { return (uint8_t)(v < (A)0 ? (A)0 : (v > (A)255 ? (A)255 : v + (A)0.5)); }
};

// A strided 4D view: element (i0,i1,i2,i3) at ptr[i0*s0 + i1*s1 + i2*s2 + i3*s3].
struct Strides4 {
  int64_t s[4];
};
struct Strides5 {
  int64_t s[5];
};

}  // namespace dilseg
