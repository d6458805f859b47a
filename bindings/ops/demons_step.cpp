#include "../../csrc/demons_step/demons_step.h"

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_demons_step(py::module_& m) {
  m.def(
      "demons_step",
      [](uintptr_t fixed, uintptr_t moving, uintptr_t u, uintptr_t gfix, uintptr_t step, int64_t N, int64_t H,
         int64_t W, float inv_k, uint64_t last) {
        demons_step(ptr<const float>(fixed), ptr<const float>(moving), ptr<const float>(u), ptr<const float>(gfix),
                    ptr<float>(step), N, H, W, inv_k, launch(last));
      },
      "fixed, moving, u, g_fixed, step (float32, contiguous), N, H, W, inv_k, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
