// demons_step: one fused iteration of symmetric (ESM) demons for a batch of 2D pairs.
//
//   mw   = moving(p + u(p))                         bilinear, border padding (warp2d)
//   g    = (grad mw + g_fixed) / 2                  central differences, one-sided at
//                                                   the border, 0 along a size-1 axis
//   diff = fixed - mw
//   step = g * diff / max(|g|^2 + inv_k * diff^2, 1e-12)
//
// The reference is engine/ops/demons_step.py (demons_step_reference), itself the
// composition engine/propagate/native.py ran before this op existed.
//
// Arguments (float32, contiguous, sizes in elements):
//   fixed, moving [N, H, W]
//   u, g_fixed    [N, 2, H, W]   channel 0 rows (y), channel 1 columns (x)
//   step          [N, 2, H, W]   output
#pragma once

#include "../common/common.h"

namespace dilseg {

// CPU (OpenMP over pairs; each thread warps its pair into a scratch plane, then
// takes the stencil from it).
void demons_step(const float* fixed, const float* moving, const float* u, const float* g_fixed, float* step,
                 int64_t N, int64_t H, int64_t W, float inv_k, CpuLaunch on);

}  // namespace dilseg
