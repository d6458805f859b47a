#include "../../csrc/warp3d/warp3d.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

using G8 = std::array<int64_t, 8>;

static Warp3dGeom geom(const G8& g) { return Warp3dGeom{g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]}; }

void bind_warp3d(py::module_& m) {
  m.def(
      "warp3d_forward",
      [](uintptr_t src, A5 ss, DType dt, uintptr_t u, A5 us, uintptr_t out, G8 g, Interp it, Padding pd,
         uint64_t last) {
        warp3d_forward(ptr(src), strides5(ss), dt, ptr(u), strides5(us), ptr(out), geom(g), it, pd, launch(last));
      },
      "src, src_strides, dtype, u, u_strides, out, (N,C,Ds,Hs,Ws,D,H,W), interp, padding, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "warp3d_backward",
      [](uintptr_t go, A5 gs, uintptr_t src, A5 ss, DType dt, uintptr_t u, A5 us, uintptr_t gsrc, uintptr_t gu,
         G8 g, Interp it, Padding pd, uint64_t last) {
        warp3d_backward(ptr(go), strides5(gs), ptr(src), strides5(ss), dt, ptr(u), strides5(us), ptr(gsrc),
                        ptr(gu), geom(g), it, pd, launch(last));
      },
      "grad_out, go_strides, src, src_strides, dtype, u, u_strides, grad_src|0, grad_u|0, geom, interp, padding, "
      DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
