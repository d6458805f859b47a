#include "../../csrc/compose2d/compose2d.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

using A4 = std::array<int64_t, 4>;
using G3 = std::array<int64_t, 3>;

static Compose2dGeom geom(const G3& g) { return Compose2dGeom{g[0], g[1], g[2]}; }

#ifndef DILSEG_BIND_CUDA
void bind_compose2d(py::module_& m) {
  m.def(
      "compose2d_forward",
      [](uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t out, DType dt, G3 g, Padding pd, int nt) {
        compose2d_forward_cpu(ptr(u), strides4(us), ptr(v), strides4(vs), ptr(out), dt, geom(g), pd, nt);
      },
      "u, u_strides, v, v_strides, out, dtype, (N,H,W), padding, num_threads",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "compose2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t gu, uintptr_t gv, DType dt, G3 g,
         Padding pd, int nt) {
        compose2d_backward_cpu(ptr(go), strides4(gs), ptr(u), strides4(us), ptr(v), strides4(vs), ptr(gu), ptr(gv),
                               dt, geom(g), pd, nt);
      },
      "grad_out, go_strides, u, u_strides, v, v_strides, grad_u|0, grad_v|0, dtype, (N,H,W), padding, num_threads",
      py::call_guard<py::gil_scoped_release>());
}
#else
void bind_compose2d(py::module_& m) {
  m.def(
      "compose2d_forward",
      [](uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t out, DType dt, G3 g, Padding pd, uintptr_t stream) {
        compose2d_forward_cuda(ptr(u), strides4(us), ptr(v), strides4(vs), ptr(out), dt, geom(g), pd, stream);
      },
      "u, u_strides, v, v_strides, out, dtype, (N,H,W), padding, stream",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "compose2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t gu, uintptr_t gv, DType dt, G3 g,
         Padding pd, uintptr_t stream) {
        compose2d_backward_cuda(ptr(go), strides4(gs), ptr(u), strides4(us), ptr(v), strides4(vs), ptr(gu),
                                ptr(gv), dt, geom(g), pd, stream);
      },
      "grad_out, go_strides, u, u_strides, v, v_strides, grad_u|0, grad_v|0, dtype, (N,H,W), padding, stream",
      py::call_guard<py::gil_scoped_release>());
}
#endif
