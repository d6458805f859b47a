#include "../../csrc/warp2d/warp2d.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

using A4 = std::array<int64_t, 4>;
using G6 = std::array<int64_t, 6>;

static Warp2dGeom geom(const G6& g) { return Warp2dGeom{g[0], g[1], g[2], g[3], g[4], g[5]}; }

#ifndef DILSEG_BIND_CUDA
void bind_warp2d(py::module_& m) {
  m.def(
      "warp2d_forward",
      [](uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t out, G6 g, Interp it, Padding pd, int nt) {
        warp2d_forward_cpu(ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(out), geom(g), it, pd, nt);
      },
      "src, src_strides, dtype, u, u_strides, out, (N,C,Hs,Ws,H,W), interp, padding, num_threads",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "warp2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t gsrc, uintptr_t gu,
         G6 g, Interp it, Padding pd, int nt) {
        warp2d_backward_cpu(ptr(go), strides4(gs), ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(gsrc),
                            ptr(gu), geom(g), it, pd, nt);
      },
      "grad_out, go_strides, src, src_strides, dtype, u, u_strides, grad_src|0, grad_u|0, geom, interp, padding, "
      "num_threads",
      py::call_guard<py::gil_scoped_release>());
}
#else
void bind_warp2d(py::module_& m) {
  m.def(
      "warp2d_forward",
      [](uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t out, G6 g, Interp it, Padding pd,
         uintptr_t stream) {
        warp2d_forward_cuda(ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(out), geom(g), it, pd, stream);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "warp2d_backward",
      [](uintptr_t go, A4 gs, uintptr_t src, A4 ss, DType dt, uintptr_t u, A4 us, uintptr_t gsrc, uintptr_t gu,
         G6 g, Interp it, Padding pd, uintptr_t stream) {
        warp2d_backward_cuda(ptr(go), strides4(gs), ptr(src), strides4(ss), dt, ptr(u), strides4(us), ptr(gsrc),
                             ptr(gu), geom(g), it, pd, stream);
      },
      py::call_guard<py::gil_scoped_release>());
}
#endif
