// Helpers shared by the op bindings: tensors cross as (address, strides) and named
// enums; kernels run with the GIL released.
//
// Each bindings/ops/<op>.cpp defines `void bind_<op>(pybind11::module_& m)` once. It is
// compiled into engine._C (CPU kernels) and, for ops with a CUDA kernel, again with
// DILSEG_BIND_CUDA defined into engine._C_cuda; the two differ only in the last
// argument of every function, `last` (see `Launch`): the OpenMP thread count on the
// CPU, the cudaStream_t (as an integer) on CUDA. CMake generates the list of ops.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "../csrc/common/common.h"

namespace dilseg {
namespace bind {

namespace py = pybind11;

#ifdef DILSEG_BIND_CUDA
using Launch = CudaLaunch;
inline Launch launch(uint64_t last) { return CudaLaunch{(uintptr_t)last}; }
#define DILSEG_LAST "stream"
#else
using Launch = CpuLaunch;
inline Launch launch(uint64_t last) { return CpuLaunch{(int)last}; }
#define DILSEG_LAST "num_threads"
#endif

using A3 = std::array<int64_t, 3>;
using A4 = std::array<int64_t, 4>;
using A5 = std::array<int64_t, 5>;

inline Strides4 strides4(const A4& a) { return Strides4{{a[0], a[1], a[2], a[3]}}; }
inline Strides5 strides5(const A5& a) { return Strides5{{a[0], a[1], a[2], a[3], a[4]}}; }
template <typename T = void>
inline T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace bind
}  // namespace dilseg
