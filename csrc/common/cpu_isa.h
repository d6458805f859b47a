// The CPU instruction sets a kernel may use, chosen at run time: the best the
// processor supports, capped by a ceiling a caller may lower (tests pin the scalar
// and the vector paths to the same reference on one machine). Builds stay portable:
// vector code lives in its own translation units, compiled with their ISA flags by
// CMakeLists.txt and entered only after this check.
#pragma once

#include <atomic>

namespace dilseg {

enum class CpuIsa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

inline const char* cpu_isa_name(CpuIsa i) {
  switch (i) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    case CpuIsa::Scalar: return "scalar";
  }
  return "scalar";
}

// What this processor supports (AVX2 means AVX2 + FMA; AVX-512 means AVX-512F).
inline CpuIsa cpu_isa_supported() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const CpuIsa s = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return CpuIsa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::Avx2;
    return CpuIsa::Scalar;
  }();
  return s;
#else
  return CpuIsa::Scalar;
#endif
}

inline std::atomic<int>& cpu_isa_ceiling() {
  static std::atomic<int> c{(int)CpuIsa::Avx512};
  return c;
}

// The instruction set kernels use now: min(supported, ceiling).
inline CpuIsa cpu_isa() {
  const int s = (int)cpu_isa_supported(), c = cpu_isa_ceiling().load(std::memory_order_relaxed);
  return (CpuIsa)(s < c ? s : c);
}

}  // namespace dilseg
