#include "../../csrc/regularize_field/regularize_field.h"

#include <stdexcept>
#include <vector>

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_regularize_field(py::module_& m) {
  m.def(
      "regularize_field",
      [](uintptr_t u, uintptr_t step, uintptr_t out, int64_t N, int64_t C, int64_t H, int64_t W,
         std::vector<float> taps, float coupling, int64_t groups, uint64_t last) {
        if (taps.empty() || taps.size() % 2 == 0) throw std::invalid_argument("taps must be an odd, non-empty list");
        const int64_t R = (int64_t)taps.size() / 2;
        if (taps.size() > 1 && (H <= R || W <= R)) throw std::invalid_argument("H and W must exceed the taps' radius");
        if (groups < 1 || N % groups) throw std::invalid_argument("groups must divide N");
        regularize_field(ptr<const float>(u), ptr<const float>(step), ptr<float>(out), N, C, H, W, taps, coupling,
                         groups, launch(last));
      },
      "u, step, out (float32, contiguous), N, C, H, W, taps (odd list), coupling, groups, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
