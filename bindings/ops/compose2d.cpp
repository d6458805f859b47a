#include "../../csrc/compose2d/compose2d.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

static Compose2dGeom geom(const A3& g) { return Compose2dGeom{g[0], g[1], g[2]}; }

void bind_compose2d(py::module_& m) {
  m.def(
      "compose2d_forward",
      [](uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t out, DType dt, A3 g, Padding pd, uint64_t last) {
        compose2d_forward(ptr(u), strides4(us), ptr(v), strides4(vs), ptr(out), dt, geom(g), pd, launch(last));
      },
      "u, u_strides, v, v_strides, out, dtype, (N,H,W), padding, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "compose2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t u, A4 us, uintptr_t v, A4 vs, uintptr_t gu, uintptr_t gv, DType dt, A3 g,
         Padding pd, uint64_t last) {
        compose2d_backward(ptr(go), strides4(gs), ptr(u), strides4(us), ptr(v), strides4(vs), ptr(gu), ptr(gv), dt,
                           geom(g), pd, launch(last));
      },
      "grad_out, go_strides, u, u_strides, v, v_strides, grad_u|0, grad_v|0, dtype, (N,H,W), padding, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
