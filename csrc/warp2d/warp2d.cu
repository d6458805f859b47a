// CUDA kernels of warp2d (see warp2d.h for the contract; warp2d_cpu.cpp is the twin
// whose semantics these follow line for line: NaN-safe clamps, nearest =
// floor(p + 0.5), per-corner validity under zeros padding, no gradient w.r.t. u
// where border padding clamps the sample position).
//
// Forward: one thread per VEC consecutive output pixels of one row (VEC = 16 bytes
// of u per channel when u rows are contiguous and aligned, else 1), looping over
// channels. u is read with coalesced (vector) read-only loads, src through the
// read-only path (__ldg: the gathers of neighbouring threads hit the same lines),
// out is written with one vector store per channel. Accumulation in float (double
// for float64 data). Grid-stride loop, one launch, on the caller's stream.
//
// Backward: one thread per output pixel looping over channels; grad_src is a
// scatter (atomicAdd in the accumulation type), grad_u is written per pixel.
//
// Indexing: offsets and the flat work index are int64; pixel coordinates are int
// (the host rejects spatial sizes >= 2^30).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <string>
#include <type_traits>

#include "warp2d.h"

namespace dilseg {
namespace {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------
// Storage types on the device: read-only loads and conversions to/from the
// accumulation type A.
template <typename T>
struct Dev;

template <>
struct Dev<float> {
  using A = float;
  static __device__ __forceinline__ float raw(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ A load(const float* p) { return __ldg(p); }
  static __device__ __forceinline__ float store(A v) { return v; }
  static __device__ __forceinline__ float zero() { return 0.f; }
};
template <>
struct Dev<double> {
  using A = double;
  static __device__ __forceinline__ double raw(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ A load(const double* p) { return __ldg(p); }
  static __device__ __forceinline__ double store(A v) { return v; }
  static __device__ __forceinline__ double zero() { return 0.0; }
};
template <>
struct Dev<__half> {
  using A = float;
  static __device__ __forceinline__ __half raw(const __half* p) { return __ldg(p); }
  static __device__ __forceinline__ A load(const __half* p) { return __half2float(__ldg(p)); }  // exact widening
  static __device__ __forceinline__ __half store(A v) { return __float2half_rn(v); }           // one RNE rounding
  static __device__ __forceinline__ __half zero() { return __float2half_rn(0.f); }
};
template <>
struct Dev<__nv_bfloat16> {
  using A = float;
  static __device__ __forceinline__ __nv_bfloat16 raw(const __nv_bfloat16* p) { return __ldg(p); }
  static __device__ __forceinline__ A load(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
  static __device__ __forceinline__ __nv_bfloat16 store(A v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ __nv_bfloat16 zero() { return __float2bfloat16_rn(0.f); }
};
template <>
struct Dev<uint8_t> {  // nearest only: values are copied, never interpolated
  using A = float;
  static __device__ __forceinline__ uint8_t raw(const uint8_t* p) { return __ldg(p); }
  static __device__ __forceinline__ A load(const uint8_t* p) { return (A)__ldg(p); }
  static __device__ __forceinline__ uint8_t store(A v) { return (uint8_t)(v < 0.f ? 0.f : (v > 255.f ? 255.f : v + 0.5f)); }
  static __device__ __forceinline__ uint8_t zero() { return 0; }
};

// VEC elements of T stored with one (or, for 32 bytes, two) vector instructions.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Clamp that maps NaN to `lo` (as clampnan in warp2d_cpu.cpp).
template <typename A>
__device__ __forceinline__ A clampnan(A v, A lo, A hi) {
  return v > lo ? (v < hi ? v : hi) : lo;
}

// floor to int of a value already clamped to [-2, size + 1]: one conversion instruction.
__device__ __forceinline__ int ifloor(float v) { return __float2int_rd(v); }
__device__ __forceinline__ int ifloor(double v) { return __double2int_rd(v); }

__device__ __forceinline__ int iclamp(int v, int hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

// q = a / b, r = a - q * b for non-negative a, positive b; 32-bit division when both fit.
__device__ __forceinline__ void divmod(int64_t a, int64_t b, int64_t& q, int64_t& r) {
  if (((a | b) >> 31) == 0) {
    const uint32_t q32 = (uint32_t)a / (uint32_t)b;
    q = q32;
  } else {
    q = a / b;
  }
  r = a - q * b;
}

// Displacements of VEC consecutive pixels: p points at u[n, 0, y, x]; `sc` is u's
// channel stride, `sx` its column stride (1 when VEC > 1).
template <typename A, int VEC>
__device__ __forceinline__ void load_u(const A* __restrict__ p, int64_t sc, int64_t sx, A (&uy)[VEC], A (&ux)[VEC]) {
  if constexpr (VEC == 1) {
    uy[0] = __ldg(p);
    ux[0] = __ldg(p + sc);
  } else if constexpr (sizeof(A) == 4 && VEC == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p + sc));
    uy[0] = a.x, uy[1] = a.y, uy[2] = a.z, uy[3] = a.w;
    ux[0] = b.x, ux[1] = b.y, ux[2] = b.z, ux[3] = b.w;
  } else {
    static_assert(sizeof(A) == 8 && VEC == 2, "vector u loads: 4 floats or 2 doubles");
    const double2 a = __ldg(reinterpret_cast<const double2*>(p));
    const double2 b = __ldg(reinterpret_cast<const double2*>(p + sc));
    uy[0] = a.x, uy[1] = a.y;
    ux[0] = b.x, ux[1] = b.y;
  }
}

// Bilinear taps of one sample point. Corners outside the source are marked invalid,
// get weight 0 and a clamped (in-range) index, so every read is in bounds and the
// channel loop has no per-corner branches. Same weights as warp2d_cpu.cpp (the same
// products, or 0).
template <typename A>
struct BTap {
  int y0, y1, x0, x1;         // corner rows / columns, clamped into the source
  bool m00, m01, m10, m11;    // corner inside the source
  A a0, a1, b0, b1;           // 1 - wy, wy, 1 - wx, wx
  A w00, w01, w10, w11;       // a * b, or 0 for an invalid corner
};

template <typename A>
__device__ __forceinline__ void bilinear_tap(A py, A px, int Hs, int Ws, bool border, BTap<A>& t) {
  if (border) {
    py = clampnan(py, (A)0, (A)(Hs - 1));
    px = clampnan(px, (A)0, (A)(Ws - 1));
  } else {  // far outside: every corner is out; the clamp keeps the integer cast exact
    py = clampnan(py, (A)-2, (A)(Hs + 1));
    px = clampnan(px, (A)-2, (A)(Ws + 1));
  }
  const int y0 = ifloor(py), x0 = ifloor(px);
  const A wy = py - (A)y0, wx = px - (A)x0;
  // unsigned compare: v in [0, size)
  const bool vy0 = (unsigned)y0 < (unsigned)Hs, vy1 = (unsigned)(y0 + 1) < (unsigned)Hs;
  const bool vx0 = (unsigned)x0 < (unsigned)Ws, vx1 = (unsigned)(x0 + 1) < (unsigned)Ws;
  t.m00 = vy0 && vx0, t.m01 = vy0 && vx1, t.m10 = vy1 && vx0, t.m11 = vy1 && vx1;
  t.a0 = (A)1 - wy, t.a1 = wy, t.b0 = (A)1 - wx, t.b1 = wx;
  t.w00 = t.m00 ? t.a0 * t.b0 : (A)0;
  t.w01 = t.m01 ? t.a0 * t.b1 : (A)0;
  t.w10 = t.m10 ? t.a1 * t.b0 : (A)0;
  t.w11 = t.m11 ? t.a1 * t.b1 : (A)0;
  t.y0 = iclamp(y0, Hs - 1), t.y1 = iclamp(y0 + 1, Hs - 1);
  t.x0 = iclamp(x0, Ws - 1), t.x1 = iclamp(x0 + 1, Ws - 1);
}

// Nearest tap: floor(p + 0.5) (ties round up); false when outside (zeros padding).
template <typename A>
__device__ __forceinline__ bool nearest_tap(A py, A px, int Hs, int Ws, bool border, int& yi, int& xi) {
  if (border) {
    py = clampnan(py, (A)0, (A)(Hs - 1));
    px = clampnan(px, (A)0, (A)(Ws - 1));
  } else {
    py = clampnan(py, (A)-2, (A)(Hs + 1));
    px = clampnan(px, (A)-2, (A)(Ws + 1));
  }
  yi = ifloor(py + (A)0.5);
  xi = ifloor(px + (A)0.5);
  return (unsigned)yi < (unsigned)Hs && (unsigned)xi < (unsigned)Ws;
}

// ---------------------------------------------------------------------------
// Forward. Work item i = (n, y, x-group of VEC pixels); W % VEC == 0 when VEC > 1.
template <typename T, int VEC, bool BILINEAR>
__global__ void __launch_bounds__(kThreads)
    warp2d_forward_kernel(const T* __restrict__ src, Strides4 ss, const typename Dev<T>::A* __restrict__ u,
                          Strides4 us, T* __restrict__ out, Warp2dGeom g, bool border) {
  using A = typename Dev<T>::A;
  const int Hs = (int)g.Hs, Ws = (int)g.Ws;
  const int64_t groups = g.W / VEC;
  const int64_t items = g.N * g.H * groups;
  const int64_t plane = g.H * g.W;  // out channel stride (out is contiguous)
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += step) {
    int64_t row, grp, n, y;
    divmod(i, groups, row, grp);
    divmod(row, g.H, n, y);
    const int64_t x0 = grp * VEC;
    A uy[VEC], ux[VEC];
    load_u<A, VEC>(u + n * us.s[0] + y * us.s[2] + x0 * us.s[3], us.s[1], us.s[3], uy, ux);
    const T* s = src + n * ss.s[0];
    T* o = out + (n * g.C * g.H + y) * g.W + x0;
    if constexpr (BILINEAR) {
      int64_t r0[VEC], r1[VEC], c0[VEC], c1[VEC];
      A w00[VEC], w01[VEC], w10[VEC], w11[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        BTap<A> t;
        bilinear_tap<A>((A)y + uy[v], (A)(x0 + v) + ux[v], Hs, Ws, border, t);
        r0[v] = (int64_t)t.y0 * ss.s[2], r1[v] = (int64_t)t.y1 * ss.s[2];
        c0[v] = (int64_t)t.x0 * ss.s[3], c1[v] = (int64_t)t.x1 * ss.s[3];
        w00[v] = t.w00, w01[v] = t.w01, w10[v] = t.w10, w11[v] = t.w11;
      }
#pragma unroll 1
      for (int64_t c = 0; c < g.C; ++c, s += ss.s[1], o += plane) {
        Pack<T, VEC> pk;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const A val = w00[v] * Dev<T>::load(s + r0[v] + c0[v]) + w01[v] * Dev<T>::load(s + r0[v] + c1[v]) +
                        w10[v] * Dev<T>::load(s + r1[v] + c0[v]) + w11[v] * Dev<T>::load(s + r1[v] + c1[v]);
          pk.v[v] = Dev<T>::store(val);
        }
        *reinterpret_cast<Pack<T, VEC>*>(o) = pk;
      }
    } else {
      int64_t off[VEC];
      bool in[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        int yi, xi;
        in[v] = nearest_tap<A>((A)y + uy[v], (A)(x0 + v) + ux[v], Hs, Ws, border, yi, xi);
        off[v] = in[v] ? (int64_t)yi * ss.s[2] + (int64_t)xi * ss.s[3] : 0;
      }
      for (int64_t c = 0; c < g.C; ++c, s += ss.s[1], o += plane) {
        Pack<T, VEC> pk;
#pragma unroll
        for (int v = 0; v < VEC; ++v) pk.v[v] = in[v] ? Dev<T>::raw(s + off[v]) : Dev<T>::zero();
        *reinterpret_cast<Pack<T, VEC>*>(o) = pk;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Backward: one thread per output pixel (n, y, x).
template <typename T, bool BILINEAR>
__global__ void __launch_bounds__(kThreads)
    warp2d_backward_kernel(const T* __restrict__ go, Strides4 gs, const T* __restrict__ src, Strides4 ss,
                           const typename Dev<T>::A* __restrict__ u, Strides4 us, typename Dev<T>::A* gsrc,
                           typename Dev<T>::A* __restrict__ gu, Warp2dGeom g, bool border) {
  using A = typename Dev<T>::A;
  const int Hs = (int)g.Hs, Ws = (int)g.Ws;
  const int64_t splane = g.Hs * g.Ws;  // grad_src channel stride (contiguous)
  const int64_t total = g.N * g.H * g.W;
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < total; p += step) {
    int64_t row, x, n, y;
    divmod(p, g.W, row, x);
    divmod(row, g.H, n, y);
    const A* up = u + n * us.s[0] + y * us.s[2] + x * us.s[3];
    const A py = (A)y + __ldg(up), px = (A)x + __ldg(up + us.s[1]);
    const T* gp = go + n * gs.s[0] + y * gs.s[2] + x * gs.s[3];
    A* gsp = gsrc ? gsrc + n * g.C * splane : nullptr;
    A ay = 0, ax = 0;
    if constexpr (BILINEAR) {
      // d(sample)/d(p) is zero where border padding clamps the position (NaN: clamped)
      const A gys = (border && !(py > (A)0 && py < (A)(Hs - 1))) ? (A)0 : (A)1;
      const A gxs = (border && !(px > (A)0 && px < (A)(Ws - 1))) ? (A)0 : (A)1;
      BTap<A> t;
      bilinear_tap<A>(py, px, Hs, Ws, border, t);
      const int64_t r0 = (int64_t)t.y0 * ss.s[2], r1 = (int64_t)t.y1 * ss.s[2];
      const int64_t c0 = (int64_t)t.x0 * ss.s[3], c1 = (int64_t)t.x1 * ss.s[3];
      const int64_t q00 = (int64_t)t.y0 * Ws + t.x0, q01 = (int64_t)t.y0 * Ws + t.x1;  // grad_src (contiguous)
      const int64_t q10 = (int64_t)t.y1 * Ws + t.x0, q11 = (int64_t)t.y1 * Ws + t.x1;
      const bool live = t.m00 || t.m01 || t.m10 || t.m11;
      const T* s = src + n * ss.s[0];
      if (live) {
        for (int64_t ch = 0; ch < g.C; ++ch, gp += gs.s[1], s += ss.s[1]) {
          const A gv = Dev<T>::load(gp);
          if (gsp) {
            A* q = gsp + ch * splane;
            if (t.w00 != (A)0) atomicAdd(q + q00, t.w00 * gv);
            if (t.w01 != (A)0) atomicAdd(q + q01, t.w01 * gv);
            if (t.w10 != (A)0) atomicAdd(q + q10, t.w10 * gv);
            if (t.w11 != (A)0) atomicAdd(q + q11, t.w11 * gv);
          }
          if (gu) {
            // an invalid corner reads 0: its derivative weight is 0 in the CPU kernel
            const A v00 = t.m00 ? Dev<T>::load(s + r0 + c0) : (A)0;
            const A v01 = t.m01 ? Dev<T>::load(s + r0 + c1) : (A)0;
            const A v10 = t.m10 ? Dev<T>::load(s + r1 + c0) : (A)0;
            const A v11 = t.m11 ? Dev<T>::load(s + r1 + c1) : (A)0;
            ay += gv * (t.b0 * (v10 - v00) + t.b1 * (v11 - v01));
            ax += gv * (t.a0 * (v01 - v00) + t.a1 * (v11 - v10));
          }
        }
      }
      ay *= gys;
      ax *= gxs;
    } else {
      int yi, xi;
      const bool in = nearest_tap<A>(py, px, Hs, Ws, border, yi, xi);
      if (gsp && in) {
        const int64_t q = (int64_t)yi * Ws + xi;
        for (int64_t ch = 0; ch < g.C; ++ch, gp += gs.s[1]) atomicAdd(gsp + ch * splane + q, Dev<T>::load(gp));
      }
      // piecewise constant in u: zero gradient (ay = ax = 0)
    }
    if (gu) {
      gu[(n * 2 * g.H + y) * g.W + x] = ay;
      gu[((n * 2 + 1) * g.H + y) * g.W + x] = ax;
    }
  }
}

// ---------------------------------------------------------------------------
// Host side.

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Blocks for a grid-stride loop over `items`: enough to fill the device a few times
// over. The SM count is cached per device (relaxed atomics: every writer stores the
// same value), keeping host overhead per launch to one cudaGetDevice.
unsigned int grid_for(int64_t items) {
  static std::atomic<int> sm_cache[64];  // zero-initialised (static storage)
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    sms = (dev >= 0 && dev < 64) ? sm_cache[dev].load(std::memory_order_relaxed) : 0;
    if (sms <= 0 && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0 &&
        dev >= 0 && dev < 64)
      sm_cache[dev].store(sms, std::memory_order_relaxed);
  }
  if (sms <= 0) {
    (void)cudaGetLastError();  // not fatal here: a real failure resurfaces at the launch
    sms = 132;
  }
  const int64_t need = (items + kThreads - 1) / kThreads;
  const int64_t cap = (int64_t)sms * 16;
  return (unsigned int)(need < cap ? need : cap);
}

void check_geom(const Warp2dGeom& g, const char* what) {
  constexpr int64_t kMax = int64_t(1) << 30;  // pixel coordinates are int; clamps reach size + 1
  if (g.N < 0 || g.C < 0 || g.H < 0 || g.W < 0 || g.Hs < 1 || g.Ws < 1 || g.Hs >= kMax || g.Ws >= kMax ||
      g.H >= kMax || g.W >= kMax)
    throw KernelArgError(std::string(what) + ": unsupported sizes (spatial sizes must be in [1, 2^30))");
}

template <typename T>
void launch_forward(const void* src, Strides4 ss, const void* u, Strides4 us, void* out, Warp2dGeom g, Interp interp,
                    bool border, cudaStream_t stream) {
  using A = typename Dev<T>::A;
  constexpr int V = 16 / (int)sizeof(A);  // 16 bytes of u per channel and load
  const auto aligned = [](const void* p, size_t b) { return reinterpret_cast<uintptr_t>(p) % b == 0; };
  const bool vec = us.s[3] == 1 && g.W % V == 0 && us.s[0] % V == 0 && us.s[1] % V == 0 && us.s[2] % V == 0 &&
                   aligned(u, sizeof(A) * V) && aligned(out, sizeof(T) * V);
  const T* s = static_cast<const T*>(src);
  const A* uu = static_cast<const A*>(u);
  T* o = static_cast<T*>(out);
  const int64_t items = g.N * g.H * (vec ? g.W / V : g.W);
  const unsigned int blocks = grid_for(items);
  if (interp == Interp::Bilinear) {
    if constexpr (!std::is_same<T, uint8_t>::value) {
      if (vec)
        warp2d_forward_kernel<T, V, true><<<blocks, kThreads, 0, stream>>>(s, ss, uu, us, o, g, border);
      else
        warp2d_forward_kernel<T, 1, true><<<blocks, kThreads, 0, stream>>>(s, ss, uu, us, o, g, border);
    }
  } else {
    if (vec)
      warp2d_forward_kernel<T, V, false><<<blocks, kThreads, 0, stream>>>(s, ss, uu, us, o, g, border);
    else
      warp2d_forward_kernel<T, 1, false><<<blocks, kThreads, 0, stream>>>(s, ss, uu, us, o, g, border);
  }
}

template <typename T>
void launch_backward(const void* go, Strides4 gs, const void* src, Strides4 ss, const void* u, Strides4 us,
                     void* gsrc, void* gu, Warp2dGeom g, Interp interp, bool border, cudaStream_t stream) {
  using A = typename Dev<T>::A;
  const unsigned int blocks = grid_for(g.N * g.H * g.W);
  const T* gp = static_cast<const T*>(go);
  const T* s = static_cast<const T*>(src);
  const A* uu = static_cast<const A*>(u);
  A* gsp = static_cast<A*>(gsrc);
  A* gup = static_cast<A*>(gu);
  if (interp == Interp::Bilinear)
    warp2d_backward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(gp, gs, s, ss, uu, us, gsp, gup, g, border);
  else
    warp2d_backward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(gp, gs, s, ss, uu, us, gsp, gup, g, border);
}

template <typename F>
void dispatch_src(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float64: f(double{}); return;
    case DType::Float16: f(__half{}); return;
    case DType::BFloat16: f(__nv_bfloat16{}); return;
    case DType::UInt8: f(uint8_t{}); return;
  }
  throw KernelArgError("warp2d: unsupported dtype");
}

}  // namespace

void warp2d_forward(const void* src, Strides4 src_st, DType src_dtype, const void* u, Strides4 u_st, void* out,
                    Warp2dGeom g, Interp interp, Padding pad, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  if (src_dtype == DType::UInt8 && interp != Interp::Nearest)
    throw KernelArgError("warp2d: uint8 sources support nearest interpolation only");
  check_geom(g, "warp2d_forward_cuda");
  if (g.N == 0 || g.C == 0 || g.H == 0 || g.W == 0) return;
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_src(src_dtype, [&](auto t) {
    using T = decltype(t);
    launch_forward<T>(src, src_st, u, u_st, out, g, interp, pad == Padding::Border, st);
  });
  check_launch("warp2d_forward_cuda");
}

void warp2d_backward(const void* grad_out, Strides4 go_st, const void* src, Strides4 src_st, DType src_dtype,
                     const void* u, Strides4 u_st, void* grad_src, void* grad_u, Warp2dGeom g, Interp interp,
                     Padding pad, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  if (src_dtype == DType::UInt8) throw KernelArgError("warp2d: no gradient for uint8 sources");
  check_geom(g, "warp2d_backward_cuda");
  if (g.N == 0 || g.H == 0 || g.W == 0 || (grad_src == nullptr && grad_u == nullptr)) return;
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_src(src_dtype, [&](auto t) {
    using T = decltype(t);
    if constexpr (!std::is_same<T, uint8_t>::value)
      launch_backward<T>(grad_out, go_st, src, src_st, u, u_st, grad_src, grad_u, g, interp,
                         pad == Padding::Border, st);
  });
  check_launch("warp2d_backward_cuda");
}

}  // namespace dilseg
