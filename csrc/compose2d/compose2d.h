// compose2d: composition of 2D displacement fields (pixels), for chaining the
// fields of adjacent slice pairs.
//
//   out[n,:,y,x] = (u o v)(y, x) = v[n,:,y,x] + u[n,:]( y + v[n,0,y,x], x + v[n,1,y,x] )
//
// i.e. first displace by v, then by u sampled (bilinearly) where v landed: a pull-back
// warp by `out` equals a warp by u followed by a warp by v,
//   warp(warp(I, u), v) ~= warp(I, u o v).
// u is sampled with the warp2d conventions (align_corners geometry, NaN-safe clamps):
//   padding Border (the default of the Python entry): a field extrapolates by its
//     border value (the sample position is clamped to the image; no gradient w.r.t. v
//     along a clamped axis from the sampling term);
//   padding Zeros: u reads 0 outside (corners outside contribute nothing).
//
// Arguments (all sizes and strides in elements); T = float32, or float64:
//   u     [N, 2, H, W]  T, any strides; channel 0 row (y), 1 column (x) displacement
//   v     [N, 2, H, W]  T, any strides; same channel order
//   out   [N, 2, H, W]  T, contiguous
// Backward:
//   grad_out [N, 2, H, W] T, any strides
//   grad_u   [N, 2, H, W] T, contiguous, ZERO-INITIALISED by the caller; nullptr to skip
//   grad_v   [N, 2, H, W] T, contiguous (fully written); nullptr to skip
// grad_v = grad_out + (d u(p) / d p)^T grad_out (one-sided derivatives at integer
// positions, as warp2d / grid_sample); grad_u is the bilinear scatter of grad_out.
#pragma once

#include "../common/common.h"

namespace dilseg {

struct Compose2dGeom {
  int64_t N, H, W;
};

// CPU (OpenMP over (n, row), `on.num_threads` threads). dtype: Float32 or Float64.
void compose2d_forward(const void* u, Strides4 u_st, const void* v, Strides4 v_st, void* out, DType dtype,
                       Compose2dGeom g, Padding pad, CpuLaunch on);

void compose2d_backward(const void* grad_out, Strides4 go_st, const void* u, Strides4 u_st, const void* v,
                        Strides4 v_st, void* grad_u, void* grad_v, DType dtype, Compose2dGeom g, Padding pad,
                        CpuLaunch on);

// CUDA (one launch each, on `on.stream`).
void compose2d_forward(const void* u, Strides4 u_st, const void* v, Strides4 v_st, void* out, DType dtype,
                       Compose2dGeom g, Padding pad, CudaLaunch on);

void compose2d_backward(const void* grad_out, Strides4 go_st, const void* u, Strides4 u_st, const void* v,
                        Strides4 v_st, void* grad_u, void* grad_v, DType dtype, Compose2dGeom g, Padding pad,
                        CudaLaunch on);

}  // namespace dilseg
