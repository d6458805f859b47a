// The pybind11 module: engine._C (CPU) or engine._C_cuda (when DILSEG_BIND_CUDA).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "../csrc/common/common.h"
#include "../csrc/common/cpu_isa.h"

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

#ifndef DILSEG_BIND_CUDA
  m.def(
      "cpu_isa",
      [](const std::string& ceiling) {
        if (ceiling == "avx512") dilseg::cpu_isa_ceiling() = (int)dilseg::CpuIsa::Avx512;
        else if (ceiling == "avx2") dilseg::cpu_isa_ceiling() = (int)dilseg::CpuIsa::Avx2;
        else if (ceiling == "scalar") dilseg::cpu_isa_ceiling() = (int)dilseg::CpuIsa::Scalar;
        else if (!ceiling.empty()) throw std::invalid_argument("cpu_isa: expected 'avx512', 'avx2' or 'scalar'");
        return std::string(dilseg::cpu_isa_name(dilseg::cpu_isa()));
      },
      py::arg("ceiling") = std::string(),
      "The instruction set the vector kernels use now ('avx512', 'avx2', 'scalar'): the best this CPU has, "
      "capped by `ceiling` when given (tests pin each path; the default ceiling is the best).");
#endif

  m.def("build_info", []() {
    py::dict d;
#ifdef DILSEG_BIND_CUDA
    d["kind"] = "cuda";
    d["cuda_archs"] = DILSEG_CUDA_ARCHS;
#else
    d["kind"] = "cpu";
    d["isa"] = dilseg::cpu_isa_name(dilseg::cpu_isa());
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
