// CUDA kernels of compose2d (see compose2d.h for the contract): one thread per
// output pixel; a warp takes 32 consecutive x of one row (n, y), so reads of v, the
// gradient and writes of the output coalesce, and the gathers from u do for smooth
// fields. Rows stride over the grid; offsets are int64. The backward scatters into
// grad_u with atomicAdd and writes grad_v per pixel (identity term fused). One
// launch each.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "compose2d.h"

namespace dilseg {
namespace {

constexpr int kRows = 8;  // blockDim = (32, kRows)

// Clamp that maps NaN to `lo` (no non-finite value reaches an integer conversion).
template <typename A>
__device__ __forceinline__ A clampnan(A v, A lo, A hi) {
  return v > lo ? (v < hi ? v : hi) : lo;
}

// Sample position after the padding rule; *gy / *gx = 1, or 0 along an axis
// clamped by border padding (no gradient there).
template <typename A>
__device__ __forceinline__ void sample_pos(A& py, A& px, int64_t H, int64_t W, Padding pad, A* gy = nullptr,
                                           A* gx = nullptr) {
  if (pad == Padding::Border) {
    const A hmax = (A)(H - 1), wmax = (A)(W - 1);
    if (gy) {
      *gy = (py > (A)0 && py < hmax) ? (A)1 : (A)0;
      *gx = (px > (A)0 && px < wmax) ? (A)1 : (A)0;
    }
    py = clampnan(py, (A)0, hmax);
    px = clampnan(px, (A)0, wmax);
  } else {
    if (gy) *gy = *gx = (A)1;
    py = clampnan(py, (A)-2, (A)(H + 1));
    px = clampnan(px, (A)-2, (A)(W + 1));
  }
}

template <typename A>
__global__ void __launch_bounds__(32 * kRows) compose2d_forward_kernel(const A* __restrict__ u, Strides4 us,
                                                                       const A* __restrict__ v, Strides4 vs,
                                                                       A* __restrict__ out, Compose2dGeom g,
                                                                       Padding pad) {
  const int64_t H = g.H, W = g.W, rows = g.N * g.H;
  const int64_t sy = us.s[2], sx = us.s[3];
  for (int64_t r = (int64_t)blockIdx.x * kRows + threadIdx.y; r < rows; r += (int64_t)gridDim.x * kRows) {
    const int64_t y = r % H, n = r / H;
    const A* vr = v + n * vs.s[0] + y * vs.s[2];
    const A* u0 = u + n * us.s[0];
    const A* u1 = u0 + us.s[1];
    A* o0 = out + (n * 2 * H + y) * W;
    A* o1 = o0 + H * W;
    for (int64_t x = threadIdx.x; x < W; x += 32) {
      const A dy = __ldg(vr + x * vs.s[3]), dx = __ldg(vr + vs.s[1] + x * vs.s[3]);
      A py = (A)y + dy, px = (A)x + dx;
      sample_pos(py, px, H, W, pad);
      const A fy = floor(py), fx = floor(px);
      const int64_t y0 = (int64_t)fy, x0 = (int64_t)fx;
      const A wy = py - fy, wx = px - fx;
      const A w00 = ((A)1 - wy) * ((A)1 - wx), w01 = ((A)1 - wy) * wx, w10 = wy * ((A)1 - wx), w11 = wy * wx;
      A s0, s1;
      if (y0 >= 0 && y0 + 1 < H && x0 >= 0 && x0 + 1 < W) {
        const int64_t o = y0 * sy + x0 * sx;  // all four corners inside
        s0 = w00 * __ldg(u0 + o) + w01 * __ldg(u0 + o + sx) + w10 * __ldg(u0 + o + sy) + w11 * __ldg(u0 + o + sy + sx);
        s1 = w00 * __ldg(u1 + o) + w01 * __ldg(u1 + o + sx) + w10 * __ldg(u1 + o + sy) + w11 * __ldg(u1 + o + sy + sx);
      } else {
        // corners outside read zero (under border padding only the weight-0 corner
        // past the last row / column)
        const bool iy0 = y0 >= 0 && y0 < H, iy1 = y0 + 1 >= 0 && y0 + 1 < H;
        const bool ix0 = x0 >= 0 && x0 < W, ix1 = x0 + 1 >= 0 && x0 + 1 < W;
        s0 = s1 = (A)0;
        const int64_t r0 = y0 * sy, r1 = (y0 + 1) * sy, c0 = x0 * sx, c1 = (x0 + 1) * sx;
        if (iy0 && ix0) {
          s0 += w00 * __ldg(u0 + r0 + c0);
          s1 += w00 * __ldg(u1 + r0 + c0);
        }
        if (iy0 && ix1) {
          s0 += w01 * __ldg(u0 + r0 + c1);
          s1 += w01 * __ldg(u1 + r0 + c1);
        }
        if (iy1 && ix0) {
          s0 += w10 * __ldg(u0 + r1 + c0);
          s1 += w10 * __ldg(u1 + r1 + c0);
        }
        if (iy1 && ix1) {
          s0 += w11 * __ldg(u0 + r1 + c1);
          s1 += w11 * __ldg(u1 + r1 + c1);
        }
      }
      o0[x] = dy + s0;
      o1[x] = dx + s1;
    }
  }
}

template <typename A>
__global__ void __launch_bounds__(32 * kRows) compose2d_backward_kernel(const A* __restrict__ go, Strides4 gs,
                                                                        const A* __restrict__ u, Strides4 us,
                                                                        const A* __restrict__ v, Strides4 vs,
                                                                        A* __restrict__ gu, A* __restrict__ gv,
                                                                        Compose2dGeom g, Padding pad) {
  const int64_t H = g.H, W = g.W, rows = g.N * g.H;
  for (int64_t r = (int64_t)blockIdx.x * kRows + threadIdx.y; r < rows; r += (int64_t)gridDim.x * kRows) {
    const int64_t y = r % H, n = r / H;
    const A* vr = v + n * vs.s[0] + y * vs.s[2];
    const A* gr = go + n * gs.s[0] + y * gs.s[2];
    const A* u0 = u + n * us.s[0];
    const A* u1 = u0 + us.s[1];
    A* gu0 = gu ? gu + n * 2 * H * W : nullptr;
    A* gu1 = gu ? gu0 + H * W : nullptr;
    A* gv0 = gv ? gv + (n * 2 * H + y) * W : nullptr;
    A* gv1 = gv ? gv0 + H * W : nullptr;
    for (int64_t x = threadIdx.x; x < W; x += 32) {
      A py = (A)y + __ldg(vr + x * vs.s[3]), px = (A)x + __ldg(vr + vs.s[1] + x * vs.s[3]);
      const A g0 = __ldg(gr + x * gs.s[3]), g1 = __ldg(gr + gs.s[1] + x * gs.s[3]);
      A gys, gxs;
      sample_pos(py, px, H, W, pad, &gys, &gxs);
      const A fy = floor(py), fx = floor(px);
      const int64_t y0 = (int64_t)fy, x0 = (int64_t)fx;
      const A wy = py - fy, wx = px - fx;
      const A wys[2] = {(A)1 - wy, wy}, wxs[2] = {(A)1 - wx, wx};
      const bool iy[2] = {y0 >= 0 && y0 < H, y0 + 1 >= 0 && y0 + 1 < H};
      const bool ix[2] = {x0 >= 0 && x0 < W, x0 + 1 >= 0 && x0 + 1 < W};
      A ay = 0, ax = 0;  // d(g . u(p)) / d(py), d(g . u(p)) / d(px)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int a = k >> 1, b = k & 1;
        if (!(iy[a] && ix[b])) continue;
        const int64_t yc = y0 + a, xc = x0 + b;
        if (gu) {
          const A w = wys[a] * wxs[b];
          if (w != (A)0) {
            atomicAdd(gu0 + yc * W + xc, w * g0);
            atomicAdd(gu1 + yc * W + xc, w * g1);
          }
        }
        if (gv) {
          const int64_t o = yc * us.s[2] + xc * us.s[3];
          const A gk = g0 * __ldg(u0 + o) + g1 * __ldg(u1 + o);
          ay += (a ? (A)1 : (A)-1) * wxs[b] * gk;
          ax += wys[a] * (b ? (A)1 : (A)-1) * gk;
        }
      }
      if (gv) {
        gv0[x] = g0 + ay * gys;
        gv1[x] = g1 + ax * gxs;
      }
    }
  }
}

inline int grid_for(const Compose2dGeom& g) {
  // one block per kRows rows, capped; the row loop strides over the rest
  const int64_t rows = g.N * g.H;
  return (int)std::min<int64_t>((rows + kRows - 1) / kRows, (int64_t)1 << 20);
}

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

void check_args(DType dt, const Compose2dGeom& g) {
  if (dt != DType::Float32 && dt != DType::Float64)
    throw KernelArgError(std::string("compose2d: fields must be float32 or float64, got ") + dtype_name(dt));
  if (g.N < 0 || g.H < 1 || g.W < 1) throw KernelArgError("compose2d: bad geometry (N >= 0, H >= 1, W >= 1)");
}

}  // namespace

void compose2d_forward(const void* u, Strides4 u_st, const void* v, Strides4 v_st, void* out, DType dtype,
                       Compose2dGeom g, Padding pad, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  check_args(dtype, g);
  if (g.N == 0) return;
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == DType::Float32)
    compose2d_forward_kernel<float><<<grid_for(g), dim3(32, kRows), 0, st>>>(
        static_cast<const float*>(u), u_st, static_cast<const float*>(v), v_st, static_cast<float*>(out), g, pad);
  else
    compose2d_forward_kernel<double><<<grid_for(g), dim3(32, kRows), 0, st>>>(
        static_cast<const double*>(u), u_st, static_cast<const double*>(v), v_st, static_cast<double*>(out), g,
        pad);
  check_launch("compose2d_forward_cuda");
}

void compose2d_backward(const void* grad_out, Strides4 go_st, const void* u, Strides4 u_st, const void* v,
                        Strides4 v_st, void* grad_u, void* grad_v, DType dtype, Compose2dGeom g, Padding pad,
                        CudaLaunch on) {
  const uintptr_t stream = on.stream;
  check_args(dtype, g);
  if (g.N == 0 || (grad_u == nullptr && grad_v == nullptr)) return;
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == DType::Float32)
    compose2d_backward_kernel<float><<<grid_for(g), dim3(32, kRows), 0, st>>>(
        static_cast<const float*>(grad_out), go_st, static_cast<const float*>(u), u_st,
        static_cast<const float*>(v), v_st, static_cast<float*>(grad_u), static_cast<float*>(grad_v), g, pad);
  else
    compose2d_backward_kernel<double><<<grid_for(g), dim3(32, kRows), 0, st>>>(
        static_cast<const double*>(grad_out), go_st, static_cast<const double*>(u), u_st,
        static_cast<const double*>(v), v_st, static_cast<double*>(grad_u), static_cast<double*>(grad_v), g, pad);
  check_launch("compose2d_backward_cuda");
}

}  // namespace dilseg
