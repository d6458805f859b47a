// CUDA kernels of warp3d (see warp3d.h for the contract; warp3d_cpu.cpp is the twin
// whose semantics these follow: NaN-safe clamps, nearest = floor(p + 0.5), per-corner
// validity under zeros padding, no gradient w.r.t. u along an axis where border
// padding clamps the sample position).
//
// One thread per output voxel (n, z, y, x); a warp takes 32 consecutive x of one row,
// so reads of u and grad_out, writes of out and grad_u and (for smooth fields) the
// gathers from src coalesce; src is read through the read-only path (__ldg).
// Channels loop inside the thread, so the sample position and weights are computed
// once. Rows stride over the grid; offsets are int64. Accumulation in float (double
// for float64 data). The backward scatters into grad_src with atomicAdd (fp32 /
// fp64, native on sm_60+) and writes grad_u per voxel. One launch per call.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "warp3d.h"

namespace dilseg {
namespace {

// Device load/store of each storage type as the accumulation type A.
template <typename T, typename A>
struct DCvt {
  __device__ __forceinline__ static A load(T v) { return (A)v; }
  __device__ __forceinline__ static T store(A v) { return (T)v; }
};
template <typename A>
struct DCvt<__half, A> {
  __device__ __forceinline__ static A load(__half v) { return (A)__half2float(v); }
  __device__ __forceinline__ static __half store(A v) { return __float2half_rn((float)v); }
};
template <typename A>
struct DCvt<__nv_bfloat16, A> {
  __device__ __forceinline__ static A load(__nv_bfloat16 v) { return (A)__bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(A v) { return __float2bfloat16_rn((float)v); }
};
template <typename A>
struct DCvt<uint8_t, A> {
  __device__ __forceinline__ static A load(uint8_t v) { return (A)v; }
  // only nearest-mode copies store into uint8 (values are exact); same rule as the CPU
  __device__ __forceinline__ static uint8_t store(A v) {
    return (uint8_t)(v < (A)0 ? (A)0 : (v > (A)255 ? (A)255 : v + (A)0.5));
  }
};

// Read-only-path load (__ldg: neighbouring threads' gathers hit the same lines),
// widened exactly to the accumulation type.
template <typename T, typename A>
__device__ __forceinline__ A ld(const T* p) {
  return DCvt<T, A>::load(__ldg(p));
}

// Clamp that maps NaN to `lo` (no non-finite value reaches an integer conversion).
template <typename A>
__device__ __forceinline__ A clampnan(A v, A lo, A hi) {
  return v > lo ? (v < hi ? v : hi) : lo;
}

// Sample position of output voxel (z, y, x) after padding rules; `g*` = 1, or 0
// along an axis clamped by border padding (no gradient there).
template <typename A>
__device__ __forceinline__ void sample_pos(A& pz, A& py, A& px, const Warp3dGeom& g, Padding pad, A* gz = nullptr,
                                           A* gy = nullptr, A* gx = nullptr) {
  if (pad == Padding::Border) {
    const A dmax = (A)(g.Ds - 1), hmax = (A)(g.Hs - 1), wmax = (A)(g.Ws - 1);
    if (gz) {
      *gz = (pz > (A)0 && pz < dmax) ? (A)1 : (A)0;
      *gy = (py > (A)0 && py < hmax) ? (A)1 : (A)0;
      *gx = (px > (A)0 && px < wmax) ? (A)1 : (A)0;
    }
    pz = clampnan(pz, (A)0, dmax);
    py = clampnan(py, (A)0, hmax);
    px = clampnan(px, (A)0, wmax);
  } else {
    if (gz) *gz = *gy = *gx = (A)1;
    // far outside: every corner is out; clamping keeps the conversion exact
    pz = clampnan(pz, (A)-2, (A)(g.Ds + 1));
    py = clampnan(py, (A)-2, (A)(g.Hs + 1));
    px = clampnan(px, (A)-2, (A)(g.Ws + 1));
  }
}

// Threads: blockDim = (32, kRows). A warp walks one output row (n, z, y) in chunks
// of 32 consecutive x, so the row index is unravelled once per row, not per voxel.
constexpr int kRows = 8;

// Min. 4 blocks per SM for fp32 accumulation (<= 64 registers: 50% occupancy, no
// spills); fp64 gets 2 (its accumulators would spill at 64 registers).
template <typename T, typename A>
__global__ void __launch_bounds__(32 * kRows, sizeof(A) == 8 ? 2 : 4)
    warp3d_forward_kernel(const T* __restrict__ src, Strides5 ss, const A* __restrict__ u, Strides5 us,
                          T* __restrict__ out, Warp3dGeom g, Interp interp, Padding pad) {
  const int64_t vol = g.D * g.H * g.W;
  const int64_t sc = ss.s[1], sz = ss.s[2], sy = ss.s[3], sx = ss.s[4];
  const int64_t rows = g.N * g.D * g.H;
  for (int64_t r = (int64_t)blockIdx.x * kRows + threadIdx.y; r < rows; r += (int64_t)gridDim.x * kRows) {
    const int64_t y = r % g.H, q = r / g.H;
    const int64_t z = q % g.D, n = q / g.D;
    // row bases: u, src of image n, out
    const A* ur = u + n * us.s[0] + z * us.s[2] + y * us.s[3];
    const T* sn = src + n * ss.s[0];
    T* orow = out + (n * g.C * g.D + z) * g.H * g.W + y * g.W;
    for (int64_t x = threadIdx.x; x < g.W; x += 32) {
      const A* up = ur + x * us.s[4];
      A pz = (A)z + __ldg(up), py = (A)y + __ldg(up + us.s[1]), px = (A)x + __ldg(up + 2 * us.s[1]);
      sample_pos(pz, py, px, g, pad);
      T* o = orow + x;
      if (interp == Interp::Nearest) {
        const int64_t zi = (int64_t)floor(pz + (A)0.5), yi = (int64_t)floor(py + (A)0.5),
                      xi = (int64_t)floor(px + (A)0.5);
        const bool in = zi >= 0 && zi < g.Ds && yi >= 0 && yi < g.Hs && xi >= 0 && xi < g.Ws;
        const T* p = sn + (in ? zi * sz + yi * sy + xi * sx : 0);
        for (int64_t c = 0; c < g.C; ++c, p += sc, o += vol) *o = in ? __ldg(p) : DCvt<T, A>::store((A)0);
        continue;
      }
      const A fz = floor(pz), fy = floor(py), fx = floor(px);
      const int64_t z0 = (int64_t)fz, y0 = (int64_t)fy, x0 = (int64_t)fx;
      const A wz = pz - fz, wy = py - fy, wx = px - fx;
      const A az = (A)1 - wz, ay = (A)1 - wy, ax = (A)1 - wx;
      // corner (z0+a, y0+b, x0+d); weight products in the reference's order (wz*wy)*wx
      const A w00 = az * ay, w01 = az * wy, w10 = wz * ay, w11 = wz * wy;
      if (z0 >= 0 && z0 + 1 < g.Ds && y0 >= 0 && y0 + 1 < g.Hs && x0 >= 0 && x0 + 1 < g.Ws) {
        // all eight corners inside (the common case): one base pointer, stride offsets
        const T* p = sn + z0 * sz + y0 * sy + x0 * sx;
        for (int64_t c = 0; c < g.C; ++c, p += sc, o += vol) {
          // accumulation in A (fp32, or fp64 for fp64 data)
          const A v = w00 * ax * ld<T, A>(p) + w00 * wx * ld<T, A>(p + sx) +
                      w01 * ax * ld<T, A>(p + sy) + w01 * wx * ld<T, A>(p + sy + sx) +
                      w10 * ax * ld<T, A>(p + sz) + w10 * wx * ld<T, A>(p + sz + sx) +
                      w11 * ax * ld<T, A>(p + sz + sy) + w11 * wx * ld<T, A>(p + sz + sy + sx);
          *o = DCvt<T, A>::store(v);
        }
        continue;
      }
      // some corner outside: it reads nothing and weighs 0 (zeros padding; under border
      // padding only the weight-0 corner past the last index)
      const bool iz0 = z0 >= 0 && z0 < g.Ds, iz1 = z0 + 1 >= 0 && z0 + 1 < g.Ds;
      const bool iy0 = y0 >= 0 && y0 < g.Hs, iy1 = y0 + 1 >= 0 && y0 + 1 < g.Hs;
      const bool ix0 = x0 >= 0 && x0 < g.Ws, ix1 = x0 + 1 >= 0 && x0 + 1 < g.Ws;
      const T* p = sn;
      for (int64_t c = 0; c < g.C; ++c, p += sc, o += vol) {
        A v = (A)0;
#define DILSEG_CORNER(IZ, IY, IX, DZ, DY, DX, WZY, WX) \
  if ((IZ) && (IY) && (IX)) v += (WZY) * (WX) * ld<T, A>(p + (z0 + (DZ)) * sz + (y0 + (DY)) * sy + (x0 + (DX)) * sx);
        DILSEG_CORNER(iz0, iy0, ix0, 0, 0, 0, w00, ax)
        DILSEG_CORNER(iz0, iy0, ix1, 0, 0, 1, w00, wx)
        DILSEG_CORNER(iz0, iy1, ix0, 0, 1, 0, w01, ax)
        DILSEG_CORNER(iz0, iy1, ix1, 0, 1, 1, w01, wx)
        DILSEG_CORNER(iz1, iy0, ix0, 1, 0, 0, w10, ax)
        DILSEG_CORNER(iz1, iy0, ix1, 1, 0, 1, w10, wx)
        DILSEG_CORNER(iz1, iy1, ix0, 1, 1, 0, w11, ax)
        DILSEG_CORNER(iz1, iy1, ix1, 1, 1, 1, w11, wx)
#undef DILSEG_CORNER
        *o = DCvt<T, A>::store(v);
      }
    }
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(32 * kRows)
    warp3d_backward_kernel(const T* __restrict__ go, Strides5 gs, const T* __restrict__ src, Strides5 ss,
                           const A* __restrict__ u, Strides5 us, A* __restrict__ gsrc, A* __restrict__ gu,
                           Warp3dGeom g, Interp interp, Padding pad) {
  const int64_t vol = g.D * g.H * g.W;
  const int64_t svol = g.Ds * g.Hs * g.Ws;
  const int64_t rows = g.N * g.D * g.H;
  for (int64_t r = (int64_t)blockIdx.x * kRows + threadIdx.y; r < rows; r += (int64_t)gridDim.x * kRows) {
    const int64_t y = r % g.H, q = r / g.H;
    const int64_t z = q % g.D, n = q / g.D;
    const A* ur = u + n * us.s[0] + z * us.s[2] + y * us.s[3];
    const T* gr = go + n * gs.s[0] + z * gs.s[2] + y * gs.s[3];
    const T* sn = src + n * ss.s[0];
    A* gsn = gsrc ? gsrc + n * g.C * svol : nullptr;
    A* gur = gu ? gu + n * 3 * vol + (z * g.H + y) * g.W : nullptr;
    for (int64_t x = threadIdx.x; x < g.W; x += 32) {
      const A* up = ur + x * us.s[4];
      A pz = (A)z + __ldg(up), py = (A)y + __ldg(up + us.s[1]), px = (A)x + __ldg(up + 2 * us.s[1]);
      A gzs, gys, gxs;
      sample_pos(pz, py, px, g, pad, &gzs, &gys, &gxs);
      const T* gp = gr + x * gs.s[4];
      if (interp == Interp::Nearest) {
        const int64_t zi = (int64_t)floor(pz + (A)0.5), yi = (int64_t)floor(py + (A)0.5),
                      xi = (int64_t)floor(px + (A)0.5);
        const bool in = zi >= 0 && zi < g.Ds && yi >= 0 && yi < g.Hs && xi >= 0 && xi < g.Ws;
        if (gsn && in) {
          A* dst = gsn + (zi * g.Hs + yi) * g.Ws + xi;
          for (int64_t c = 0; c < g.C; ++c) atomicAdd(dst + c * svol, ld<T, A>(gp + c * gs.s[1]));
        }
        if (gur) gur[x] = gur[vol + x] = gur[2 * vol + x] = (A)0;  // piecewise constant in u
        continue;
      }
      const A fz = floor(pz), fy = floor(py), fx = floor(px);
      const int64_t z0 = (int64_t)fz, y0 = (int64_t)fy, x0 = (int64_t)fx;
      const A wz = pz - fz, wy = py - fy, wx = px - fx;
      const bool iz[2] = {z0 >= 0 && z0 < g.Ds, z0 + 1 >= 0 && z0 + 1 < g.Ds};
      const bool iy[2] = {y0 >= 0 && y0 < g.Hs, y0 + 1 >= 0 && y0 + 1 < g.Hs};
      const bool ix[2] = {x0 >= 0 && x0 < g.Ws, x0 + 1 >= 0 && x0 + 1 < g.Ws};
      const A wzs[2] = {(A)1 - wz, wz}, wys[2] = {(A)1 - wy, wy}, wxs[2] = {(A)1 - wx, wx};
      const A ds[2] = {(A)-1, (A)1};
      A az = 0, ay = 0, ax = 0;
      for (int64_t c = 0; c < g.C; ++c) {
        const A gv = ld<T, A>(gp + c * gs.s[1]);
        const T* sc = sn + c * ss.s[1];
        A* gc = gsn ? gsn + c * svol : nullptr;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const int a = k >> 2, b = (k >> 1) & 1, d = k & 1;
          if (!(iz[a] && iy[b] && ix[d])) continue;  // outside: reads 0, scatters nothing
          const int64_t zc = z0 + a, yc = y0 + b, xc = x0 + d;
          const A w = wzs[a] * wys[b] * wxs[d];
          if (gc && w != (A)0) atomicAdd(gc + (zc * g.Hs + yc) * g.Ws + xc, w * gv);
          if (gur) {
            const A v = gv * ld<T, A>(sc + zc * ss.s[2] + yc * ss.s[3] + xc * ss.s[4]);
            az += ds[a] * wys[b] * wxs[d] * v;
            ay += wzs[a] * ds[b] * wxs[d] * v;
            ax += wzs[a] * wys[b] * ds[d] * v;
          }
        }
      }
      if (gur) {
        gur[x] = az * gzs;
        gur[vol + x] = ay * gys;
        gur[2 * vol + x] = ax * gxs;
      }
    }
  }
}

// one block per kRows output rows, capped; the row loop strides over the rest
inline int grid_for(const Warp3dGeom& g) {
  const int64_t rows = g.N * g.D * g.H;
  return (int)std::min<int64_t>((rows + kRows - 1) / kRows, (int64_t)1 << 20);
}

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

void check_geom(const Warp3dGeom& g) {
  if (g.N < 0 || g.C < 0 || g.D < 0 || g.H < 0 || g.W < 0 || g.Ds < 1 || g.Hs < 1 || g.Ws < 1)
    throw KernelArgError("warp3d: bad geometry (sizes must be >= 0, source sizes >= 1)");
}

template <typename F>
void dispatch_src(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}, float{}); return;
    case DType::Float64: f(double{}, double{}); return;
    case DType::Float16: f(__half{}, float{}); return;
    case DType::BFloat16: f(__nv_bfloat16{}, float{}); return;
    case DType::UInt8: f(uint8_t{}, float{}); return;
  }
  throw KernelArgError("warp3d: unsupported dtype");
}

}  // namespace

void warp3d_forward(const void* src, Strides5 src_st, DType src_dtype, const void* u, Strides5 u_st,
                    void* out, Warp3dGeom g, Interp interp, Padding pad, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  check_geom(g);
  if (src_dtype == DType::UInt8 && interp != Interp::Nearest)
    throw KernelArgError("warp3d: uint8 sources support nearest interpolation only");
  if (g.N * g.D * g.H * g.W == 0 || g.C == 0) return;
  dispatch_src(src_dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    warp3d_forward_kernel<T, A><<<grid_for(g), dim3(32, kRows), 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(src), src_st, static_cast<const A*>(u), u_st, static_cast<T*>(out), g, interp, pad);
  });
  check_launch("warp3d_forward_cuda");
}

void warp3d_backward(const void* grad_out, Strides5 go_st, const void* src, Strides5 src_st, DType src_dtype,
                     const void* u, Strides5 u_st, void* grad_src, void* grad_u, Warp3dGeom g, Interp interp,
                     Padding pad, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  check_geom(g);
  if (src_dtype == DType::UInt8) throw KernelArgError("warp3d: no gradient for uint8 sources");
  if (g.N * g.D * g.H * g.W == 0 || (grad_src == nullptr && grad_u == nullptr)) return;
  dispatch_src(src_dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    if constexpr (!std::is_same<T, uint8_t>::value) {
      warp3d_backward_kernel<T, A><<<grid_for(g), dim3(32, kRows), 0, reinterpret_cast<cudaStream_t>(stream)>>>(
          static_cast<const T*>(grad_out), go_st, static_cast<const T*>(src), src_st, static_cast<const A*>(u), u_st,
          static_cast<A*>(grad_src), static_cast<A*>(grad_u), g, interp, pad);
    }
  });
  check_launch("warp3d_backward_cuda");
}

}  // namespace dilseg
