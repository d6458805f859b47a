#include "../../csrc/confidence_map/confidence_map.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_confidence_map(py::module_& m) {
  m.def(
      "confidence_map",
      [](uintptr_t ad, int64_t sd, uintptr_t ah, int64_t sh, uintptr_t aw, int64_t sw, uintptr_t out, A3 shape,
         uint64_t last) {
        ConfidenceMapArgs a;
        a.ann[0] = ptr<const uint8_t>(ad);
        a.ann[1] = ptr<const uint8_t>(ah);
        a.ann[2] = ptr<const uint8_t>(aw);
        a.ann_stride[0] = sd;
        a.ann_stride[1] = sh;
        a.ann_stride[2] = sw;
        a.out = ptr<float>(out);
        a.D = shape[0];
        a.H = shape[1];
        a.W = shape[2];
        confidence_map(a, launch(last));
      },
      "ann_d|0, stride_d, ann_h|0, stride_h, ann_w|0, stride_w, out, (D,H,W), " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
