// warp2d: pull-back warp of a batch of 2D slices by displacement fields in pixels.
//
//   out[n,c,y,x] = src[n,c]( y + u[n,0,y,x], x + u[n,1,y,x] )
//
// sampled with bilinear or nearest interpolation (nearest: floor(p + 0.5), ties
// round up) and zeros or border padding. Equal to torch's grid_sample with
// align_corners=True on the normalised grid (see engine/ops/warp2d.py).
//
// Arguments (all sizes and strides in elements):
//   src    [N, C, Hs, Ws]  storage type `src_dtype`, any strides
//   u      [N, 2, H, W]    float32 (or float64 when src is float64), any strides;
//                          channel 0 is the row (y) displacement, 1 the column (x)
//   out    [N, C, H, W]    same storage type as src, contiguous
// Backward:
//   grad_out [N, C, H, W]  storage type `src_dtype` (uint8 not allowed), any strides
//   grad_src [N, C, Hs, Ws] accumulation type (float32, or float64 for float64
//                          inputs), contiguous, ZERO-INITIALISED by the caller;
//                          nullptr to skip
//   grad_u   [N, 2, H, W]  accumulation type, contiguous; nullptr to skip
#pragma once

#include "../common/common.h"

namespace dilseg {

struct Warp2dGeom {
  int64_t N, C, Hs, Ws, H, W;
};

// CPU (OpenMP, `on.num_threads` threads). The float32 bilinear forward runs AVX-512 /
// AVX2 gathers where the processor has them (warp2d_simd.h), the scalar code elsewhere.
void warp2d_forward(const void* src, Strides4 src_st, DType src_dtype, const void* u, Strides4 u_st,
                    void* out, Warp2dGeom g, Interp interp, Padding pad, CpuLaunch on);

void warp2d_backward(const void* grad_out, Strides4 go_st, const void* src, Strides4 src_st, DType src_dtype,
                     const void* u, Strides4 u_st, void* grad_src, void* grad_u, Warp2dGeom g, Interp interp,
                     Padding pad, CpuLaunch on);

// CUDA (one launch each, on `on.stream`).
void warp2d_forward(const void* src, Strides4 src_st, DType src_dtype, const void* u, Strides4 u_st,
                    void* out, Warp2dGeom g, Interp interp, Padding pad, CudaLaunch on);

void warp2d_backward(const void* grad_out, Strides4 go_st, const void* src, Strides4 src_st, DType src_dtype,
                     const void* u, Strides4 u_st, void* grad_src, void* grad_u, Warp2dGeom g, Interp interp,
                     Padding pad, CudaLaunch on);

}  // namespace dilseg
