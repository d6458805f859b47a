// Helpers shared by the op bindings: tensors cross as (address, strides) and named
// enums; kernels run with the GIL released.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "../csrc/common/common.h"

namespace dilseg {
namespace bind {

namespace py = pybind11;

inline Strides4 strides4(const std::array<int64_t, 4>& a) { return Strides4{{a[0], a[1], a[2], a[3]}}; }
inline Strides5 strides5(const std::array<int64_t, 5>& a) { return Strides5{{a[0], a[1], a[2], a[3], a[4]}}; }
template <typename T = void>
inline T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace bind
}  // namespace dilseg

// Each bindings/ops/<op>.cpp defines `void bind_<op>(pybind11::module_& m)`. It is
// compiled twice: into engine._C (CPU kernels) and, with DILSEG_BIND_CUDA defined,
// into engine._C_cuda (CUDA kernels). CMake generates the list of ops.
