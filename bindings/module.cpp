// The pybind11 module: engine._C (CPU) or engine._C_cuda (when DILSEG_BIND_CUDA).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "../csrc/common/common.h"

#define DILSEG_OP(name) void bind_##name(pybind11::module_& m);
#include "dilseg_ops.inc"
#undef DILSEG_OP

#ifndef DILSEG_MODULE_NAME
#error "DILSEG_MODULE_NAME must be defined by the build"
#endif

namespace py = pybind11;

PYBIND11_MODULE(DILSEG_MODULE_NAME, m) {
  // module_local: both modules register the same C++ enums without clashing
  py::enum_<dilseg::DType>(m, "DType", py::module_local())
      .value("Float32", dilseg::DType::Float32)
      .value("Float64", dilseg::DType::Float64)
      .value("Float16", dilseg::DType::Float16)
      .value("BFloat16", dilseg::DType::BFloat16)
      .value("UInt8", dilseg::DType::UInt8);
  py::enum_<dilseg::Interp>(m, "Interp", py::module_local())
      .value("Bilinear", dilseg::Interp::Bilinear)
      .value("Nearest", dilseg::Interp::Nearest);
  py::enum_<dilseg::Padding>(m, "Padding", py::module_local())
      .value("Zeros", dilseg::Padding::Zeros)
      .value("Border", dilseg::Padding::Border);

  py::list ops;
#define DILSEG_OP(name) \
  bind_##name(m);       \
  ops.append(#name);
#include "dilseg_ops.inc"
#undef DILSEG_OP
  m.attr("ops") = ops;

  m.def("build_info", []() {
    py::dict d;
#ifdef DILSEG_BIND_CUDA
    d["kind"] = "cuda";
    d["cuda_archs"] = DILSEG_CUDA_ARCHS;
#else
    d["kind"] = "cpu";
#ifdef _OPENMP
    d["openmp"] = _OPENMP;
#else
    d["openmp"] = 0;
#endif
#endif
    d["flags"] = DILSEG_BUILD_FLAGS;
    return d;
  });
}
