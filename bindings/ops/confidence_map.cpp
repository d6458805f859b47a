#include "../../csrc/confidence_map/confidence_map.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

using A3 = std::array<int64_t, 3>;

// Arguments: ann_d|0, stride_d, ann_h|0, stride_h, ann_w|0, stride_w, out, (D,H,W),
// num_threads|stream.
static ConfidenceMapArgs make_args(uintptr_t ad, int64_t sd, uintptr_t ah, int64_t sh, uintptr_t aw, int64_t sw,
                                   uintptr_t out, A3 shape) {
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
  return a;
}

#ifndef DILSEG_BIND_CUDA
void bind_confidence_map(py::module_& m) {
  m.def(
      "confidence_map",
      [](uintptr_t ad, int64_t sd, uintptr_t ah, int64_t sh, uintptr_t aw, int64_t sw, uintptr_t out, A3 shape,
         int nt) { confidence_map_cpu(make_args(ad, sd, ah, sh, aw, sw, out, shape), nt); },
      "ann_d|0, stride_d, ann_h|0, stride_h, ann_w|0, stride_w, out, (D,H,W), num_threads",
      py::call_guard<py::gil_scoped_release>());
}
#else
void bind_confidence_map(py::module_& m) {
  m.def(
      "confidence_map",
      [](uintptr_t ad, int64_t sd, uintptr_t ah, int64_t sh, uintptr_t aw, int64_t sw, uintptr_t out, A3 shape,
         uintptr_t stream) {
        if (shape[0] + shape[1] + shape[2] > kConfidenceMapMaxAxisTotal)
          throw KernelArgError("confidence_map (cuda): D + H + W exceeds kConfidenceMapMaxAxisTotal");
        confidence_map_cuda(make_args(ad, sd, ah, sh, aw, sw, out, shape), stream);
      },
      "same as the CPU function, with a cudaStream_t (integer) last: ONE kernel launch",
      py::call_guard<py::gil_scoped_release>());
}
#endif
