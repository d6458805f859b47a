#include "../../csrc/propagate_chain/propagate_chain.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_propagate_chain(py::module_& m) {
  py::enum_<Fuse>(m, "Fuse", py::module_local())
      .value("None_", Fuse::None)
      .value("Nearest", Fuse::Nearest)
      .value("Linear", Fuse::Linear);
  m.def(
      "propagate_chain",
      [](uintptr_t masks, A3 ms, DType dt, uintptr_t ann, int64_t ann_st, uintptr_t fwd, A4 fs, uintptr_t bwd, A4 bs,
         uintptr_t fb, uintptr_t fa, uintptr_t db, uintptr_t da, uintptr_t q, uintptr_t conf, A3 shape,
         float min_mass, Fuse fuse, uint64_t last) {
        PropagateChainArgs a;
        a.masks = ptr(masks);
        a.mask_st[0] = ms[0];
        a.mask_st[1] = ms[1];
        a.mask_st[2] = ms[2];
        a.mask_dtype = dt;
        a.annotated = ptr<const uint8_t>(ann);
        a.ann_stride = ann_st;
        a.fwd = ptr<const float>(fwd);
        a.fwd_st = strides4(fs);
        a.bwd = ptr<const float>(bwd);
        a.bwd_st = strides4(bs);
        a.from_below = ptr<float>(fb);
        a.from_above = ptr<float>(fa);
        a.dist_below = ptr<int32_t>(db);
        a.dist_above = ptr<int32_t>(da);
        a.q = ptr<float>(q);
        a.conf = ptr<float>(conf);
        a.D = shape[0];
        a.H = shape[1];
        a.W = shape[2];
        a.min_mass = min_mass;
        a.fuse = fuse;
        propagate_chain(a, launch(last));
      },
      "masks, mask_strides, dtype, annotated, annotated_stride, fwd, fwd_strides, bwd, bwd_strides, from_below, "
      "from_above, dist_below, dist_above, q|0, conf, (D,H,W), min_mass, fuse, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
