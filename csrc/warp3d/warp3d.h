// warp3d: pull-back warp of a batch of 3D volumes by displacement fields in voxels.
//
//   out[n,c,z,y,x] = src[n,c]( z + u[n,0,z,y,x], y + u[n,1,z,y,x], x + u[n,2,z,y,x] )
//
// sampled with trilinear ("bilinear", as torch names it) or nearest interpolation
// (nearest: floor(p + 0.5), ties round up) and zeros or border padding. The exact 3D
// twin of warp2d: equal to torch's grid_sample on 5D input with align_corners=True
// on the normalised grid (see engine/ops/warp3d.py and tests/ops/test_warp3d.py).
//
// Arguments (all sizes and strides in elements):
//   src    [N, C, Ds, Hs, Ws]  storage type `src_dtype`, any strides
//   u      [N, 3, D, H, W]     float32 (or float64 when src is float64), any strides;
//                              channel 0 is the depth (z) displacement, 1 the row (y),
//                              2 the column (x)
//   out    [N, C, D, H, W]     same storage type as src, contiguous
// Backward:
//   grad_out [N, C, D, H, W]   storage type `src_dtype` (uint8 not allowed), any strides
//   grad_src [N, C, Ds, Hs, Ws] accumulation type (float32, or float64 for float64
//                              inputs), contiguous, ZERO-INITIALISED by the caller;
//                              nullptr to skip
//   grad_u   [N, 3, D, H, W]   accumulation type, contiguous; nullptr to skip
//
// Gradient rules (shared with warp2d): w.r.t. u, the derivative of the trilinear
// interpolant (one-sided at integer positions, as grid_sample); zero for nearest;
// under border padding zero along an axis where the position was clamped (p <= 0
// or p >= size - 1). Non-finite displacements are memory-safe: they read padding
// (Python entries reject them with check_finite=True).
#pragma once

#include "../common/common.h"

namespace dilseg {

struct Warp3dGeom {
  int64_t N, C, Ds, Hs, Ws, D, H, W;
};

// CPU (OpenMP over (n, z, y) rows, `on.num_threads` threads).
void warp3d_forward(const void* src, Strides5 src_st, DType src_dtype, const void* u, Strides5 u_st,
                    void* out, Warp3dGeom g, Interp interp, Padding pad, CpuLaunch on);

void warp3d_backward(const void* grad_out, Strides5 go_st, const void* src, Strides5 src_st, DType src_dtype,
                     const void* u, Strides5 u_st, void* grad_src, void* grad_u, Warp3dGeom g, Interp interp,
                     Padding pad, CpuLaunch on);

// CUDA (one launch each, on `on.stream`).
void warp3d_forward(const void* src, Strides5 src_st, DType src_dtype, const void* u, Strides5 u_st,
                    void* out, Warp3dGeom g, Interp interp, Padding pad, CudaLaunch on);

void warp3d_backward(const void* grad_out, Strides5 go_st, const void* src, Strides5 src_st, DType src_dtype,
                     const void* u, Strides5 u_st, void* grad_src, void* grad_u, Warp3dGeom g, Interp interp,
                     Padding pad, CudaLaunch on);

}  // namespace dilseg
