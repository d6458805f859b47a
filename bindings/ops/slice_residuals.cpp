#include "../../csrc/slice_residuals/slice_residuals.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

static ResidualOperand operand(uintptr_t p, const A3& s, DType dt) {
  return ResidualOperand{ptr<const void>(p), {s[0], s[1], s[2]}, dt};
}

void bind_slice_residuals(py::module_& m) {
  py::enum_<ResidualWeight>(m, "ResidualWeight", py::module_local())
      .value("Unweighted", ResidualWeight::None)
      .value("PerSlice", ResidualWeight::PerSlice)
      .value("Full", ResidualWeight::Full);
  m.def(
      "slice_residuals",
      [](uintptr_t q, A3 qs, DType qd, uintptr_t p, A3 ps, DType pd, uintptr_t w, A3 ws, DType wd, ResidualWeight wm,
         uintptr_t out, A3 g, uint64_t last) {
        slice_residuals(operand(q, qs, qd), operand(p, ps, pd), operand(w, ws, wd), wm, ptr<float>(out),
                        ResidualGeom{g[0], g[1], g[2]}, launch(last));
      },
      "q, q_strides, q_dtype, p, p_strides, p_dtype, w|0, w_strides, w_dtype, weight_mode, out[D+H+W], (D,H,W), "
      DILSEG_LAST " (CUDA: one memset of out + ONE kernel launch)",
      py::call_guard<py::gil_scoped_release>());
}
