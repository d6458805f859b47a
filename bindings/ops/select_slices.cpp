#include "../../csrc/select_slices/select_slices.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_select_slices(py::module_& m) {
  m.def(
      "select_slices",
      [](uintptr_t s, int64_t ss, uintptr_t a, int64_t as, uintptr_t v, int64_t vs, int64_t D, int64_t k,
         int64_t gap, uintptr_t out, uint64_t last) {
        if (D < 1 || k < 1 || gap < 0) throw KernelArgError("select_slices: need D >= 1, k >= 1, min_gap >= 0");
        SelectSlicesArgs r;
        r.scores = ptr<const float>(s);
        r.s_stride = ss;
        r.annotated = ptr<const uint8_t>(a);
        r.a_stride = as;
        r.valid = ptr<const uint8_t>(v);
        r.v_stride = vs;
        r.D = D;
        r.k = k;
        r.min_gap = gap < D ? gap : D;
        r.out = ptr<int64_t>(out);
        select_slices(r, launch(last));
      },
      "scores, s_stride, annotated|0, a_stride, valid|0, v_stride, D, k, min_gap, out[k] int64, " DILSEG_LAST
      " (CPU: serial, the count is ignored)",
      py::call_guard<py::gil_scoped_release>());
}
