// The vector row kernels of warp2d's CPU forward (float32, bilinear), one per
// instruction set, each in its own translation unit compiled with that ISA's flags
// (CMakeLists.txt: *_avx2.cpp, *_avx512.cpp). warp2d_cpu.cpp enters them only after
// cpu_isa() says the processor has the instructions; the scalar kernel stays the
// fallback and the definition of the semantics (warp2d.h, warp2d_cpu.cpp).
#pragma once

#include <cstdint>

#include "../common/common.h"

namespace dilseg {

// One output row y of image n, every channel.
struct Warp2dRow {
  const float* src;  // src[n, 0]
  int64_t src_c;     // channel stride of src
  int32_t sy, sx;    // row / column strides of src: (Hs-1)*sy + (Ws-1)*sx < 2^31, both >= 0
  int64_t C, Hs, Ws;
  const float* uy;   // u[n, 0, y, :], contiguous along x
  const float* ux;   // u[n, 1, y, :], contiguous along x
  int64_t y, W;
  float* out;        // out[n, 0, y, :], contiguous along x
  int64_t out_c;     // channel stride of out
};

using Warp2dRowFn = void (*)(const Warp2dRow& r, Padding pad);

// The row kernel of that ISA, or nullptr when this build could not compile it.
Warp2dRowFn warp2d_row_avx512();
Warp2dRowFn warp2d_row_avx2();

}  // namespace dilseg
