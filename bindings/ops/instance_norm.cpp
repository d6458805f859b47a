#include "../../csrc/instance_norm/instance_norm.h"

#include <stdexcept>

#include "../binding.h"

using namespace dilseg;
using namespace dilseg::bind;

void bind_instance_norm(py::module_& m) {
  m.def(
      "instance_norm_forward",
      [](uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, uintptr_t mean, uintptr_t rstd, int64_t N, int64_t C,
         int64_t S, bool channels_last, float eps, uint64_t last) {
        if (N < 1 || C < 1 || S < 1) throw std::invalid_argument("N, C and S must be >= 1");
        instance_norm_forward(ptr<const float>(x), ptr<const float>(w), ptr<const float>(b), ptr<float>(y),
                              ptr<float>(mean), ptr<float>(rstd), N, C, S, channels_last, eps, launch(last));
      },
      "x, weight, bias, y, mean, rstd (float32), N, C, S, channels_last, eps, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "instance_norm_backward",
      [](uintptr_t dy, uintptr_t x, uintptr_t mean, uintptr_t rstd, uintptr_t w, uintptr_t dx, uintptr_t dw,
         uintptr_t db, int64_t N, int64_t C, int64_t S, bool channels_last, uint64_t last) {
        if (N < 1 || C < 1 || S < 1) throw std::invalid_argument("N, C and S must be >= 1");
        instance_norm_backward(ptr<const float>(dy), ptr<const float>(x), ptr<const float>(mean),
                               ptr<const float>(rstd), ptr<const float>(w), ptr<float>(dx), ptr<float>(dw),
                               ptr<float>(db), N, C, S, channels_last, launch(last));
      },
      "dy, x, mean, rstd, weight, dx, dweight, dbias (float32), N, C, S, channels_last, " DILSEG_LAST,
      py::call_guard<py::gil_scoped_release>());
}
