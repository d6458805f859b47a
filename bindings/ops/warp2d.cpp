#include "../../csrc/warp2d/warp2d.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

using G6 = std::array<int64_t, 6>;

static Warp2dGeom geom(const G6& g) { return Warp2dGeom{g[0], g[1], g[2], g[3], g[4], g[5]}; }

void bind_warp2d(py::module_& m) {
  m.def(
      "warp2d_forward",
      [](uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t out, G6 g, Interp it, Padding pd,
         uint64_t last) {
        warp2d_forward(ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(out), geom(g), it, pd, launch(last));
      },
      "src, src_strides, dtype, u, u_strides, out, (N,C,Hs,Ws,H,W), interp, padding, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "warp2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t gsrc, uintptr_t gu,
         G6 g, Interp it, Padding pd, uint64_t last) {
        warp2d_backward(ptr(go), strides4(gs), ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(gsrc),
                        ptr(gu), geom(g), it, pd, launch(last));
      },
      "grad_out, go_strides, src, src_strides, dtype, u, u_strides, grad_src|0, grad_u|0, geom, interp, padding, "
      DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
