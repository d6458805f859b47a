// CPU kernels of warp3d (see warp3d.h for the contract). OpenMP over (n, z, y)
// rows. Forward and backward have a fast path for sample points whose 8 corners are
// all inside the source (one truncating cast per axis, no libm floor, no per-corner
// tests). The backward scatter into grad_src runs race-free: over (n, c) volumes
// when there are enough of them (grad_u then gets its own row pass), else over rows
// into per-thread copies of grad_src that are summed afterwards (fewer threads when
// the copies would exceed kPrivateBytes). No atomics.
#include "warp3d.h"

#include <algorithm>
#include <memory>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dilseg {
namespace {

#ifdef _OPENMP
inline int thread_id() { return omp_get_thread_num(); }
inline int thread_count() { return omp_get_num_threads(); }
#else
inline int thread_id() { return 0; }
inline int thread_count() { return 1; }
#endif

// Clamp that maps NaN to `lo`, so a non-finite displacement can never reach an
// integer cast (Python entries scan for NaN only with check_finite=True; the kernel
// is safe regardless).
template <typename A>
inline A clampnan(A v, A lo, A hi) {
  return v > lo ? (v < hi ? v : hi) : lo;
}

// floor for values already clamped to a small range: a cast plus a fix-up, no libm
// call (portable x86-64 has no SSE4.1 round instruction).
template <typename A>
inline int64_t ifloor(A v) {
  const int64_t i = (int64_t)v;
  return i - (int64_t)(v < (A)i);
}

// Trilinear taps of one sample point. Corner k = 4a + 2b + c is (z0+a, y0+b, x0+c).
// A corner outside the source (zeros padding, or the weight-0 corner past the last
// index under border padding) has weight 0 and offsets 0, so it reads element 0
// harmlessly and scatters nothing.
template <typename A>
struct Tap3 {
  int64_t go[8];        // offset in the contiguous grad_src volume
  int64_t so[8];        // offset in the strided src volume
  A w[8];               // interpolation weights
  A dz[8], dy[8], dx[8];  // d(weight)/d(pz), d(weight)/d(py), d(weight)/d(px)
  A gz, gy, gx;         // 1, or 0 along an axis clamped by border padding
  bool live;            // any corner inside
};

template <typename A>
inline void trilinear_taps(A pz, A py, A px, const Warp3dGeom& g, const int64_t* sst, Padding pad, Tap3<A>& t) {
  const int64_t Ds = g.Ds, Hs = g.Hs, Ws = g.Ws;
  t.gz = t.gy = t.gx = (A)1;
  if (pad == Padding::Border) {
    const A dmax = (A)(Ds - 1), hmax = (A)(Hs - 1), wmax = (A)(Ws - 1);
    if (!(pz > (A)0 && pz < dmax)) t.gz = (A)0;  // clamped coordinate: no gradient
    if (!(py > (A)0 && py < hmax)) t.gy = (A)0;
    if (!(px > (A)0 && px < wmax)) t.gx = (A)0;
    pz = clampnan(pz, (A)0, dmax);
    py = clampnan(py, (A)0, hmax);
    px = clampnan(px, (A)0, wmax);
  } else {
    // far outside: every corner is out; clamping first keeps the integer cast exact
    pz = clampnan(pz, (A)-2, (A)(Ds + 1));
    py = clampnan(py, (A)-2, (A)(Hs + 1));
    px = clampnan(px, (A)-2, (A)(Ws + 1));
  }
  const int64_t z0 = ifloor(pz), y0 = ifloor(py), x0 = ifloor(px);
  const A wz = pz - (A)z0, wy = py - (A)y0, wx = px - (A)x0;
  const int64_t zs[2] = {z0, z0 + 1}, ys[2] = {y0, y0 + 1}, xs[2] = {x0, x0 + 1};
  const A wzs[2] = {(A)1 - wz, wz}, wys[2] = {(A)1 - wy, wy}, wxs[2] = {(A)1 - wx, wx};
  const A ds[2] = {(A)-1, (A)1};
  t.live = false;
  for (int a = 0; a < 2; ++a) {
    const bool iz = zs[a] >= 0 && zs[a] < Ds;
    for (int b = 0; b < 2; ++b) {
      const bool iy = ys[b] >= 0 && ys[b] < Hs;
      for (int c = 0; c < 2; ++c) {
        const int k = 4 * a + 2 * b + c;
        const bool in = iz && iy && xs[c] >= 0 && xs[c] < Ws;
        t.go[k] = in ? (zs[a] * Hs + ys[b]) * Ws + xs[c] : 0;
        t.so[k] = in ? zs[a] * sst[2] + ys[b] * sst[3] + xs[c] * sst[4] : 0;
        t.w[k] = in ? wzs[a] * wys[b] * wxs[c] : (A)0;
        t.dz[k] = in ? ds[a] * wys[b] * wxs[c] : (A)0;
        t.dy[k] = in ? wzs[a] * ds[b] * wxs[c] : (A)0;
        t.dx[k] = in ? wzs[a] * wys[b] * ds[c] : (A)0;
        t.live = t.live || in;
      }
    }
  }
}

template <typename A>
inline bool nearest_tap(A pz, A py, A px, const Warp3dGeom& g, Padding pad, int64_t& zi, int64_t& yi,
                        int64_t& xi) {
  const int64_t Ds = g.Ds, Hs = g.Hs, Ws = g.Ws;
  if (pad == Padding::Border) {
    pz = clampnan(pz, (A)0, (A)(Ds - 1));
    py = clampnan(py, (A)0, (A)(Hs - 1));
    px = clampnan(px, (A)0, (A)(Ws - 1));
  } else {
    pz = clampnan(pz, (A)-2, (A)(Ds + 1));
    py = clampnan(py, (A)-2, (A)(Hs + 1));
    px = clampnan(px, (A)-2, (A)(Ws + 1));
  }
  zi = ifloor(pz + (A)0.5);
  yi = ifloor(py + (A)0.5);
  xi = ifloor(px + (A)0.5);
  return zi >= 0 && zi < Ds && yi >= 0 && yi < Hs && xi >= 0 && xi < Ws;
}

template <typename T, typename A>
void forward_impl(const T* src, Strides5 ss, const A* u, Strides5 us, T* out, Warp3dGeom g, Interp interp,
                  Padding pad, int nt) {
  const int64_t N = g.N, C = g.C, D = g.D, H = g.H, W = g.W;
  const int64_t sc = ss.s[1], sz = ss.s[2], sy = ss.s[3], sx = ss.s[4];
  const int64_t ocs = D * H * W;  // output channel stride
  const A dmax = (A)(g.Ds - 1), hmax = (A)(g.Hs - 1), wmax = (A)(g.Ws - 1);
#pragma omp parallel for collapse(3) schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t z = 0; z < D; ++z) {
      for (int64_t y = 0; y < H; ++y) {
        const A* uz = u + n * us.s[0] + z * us.s[2] + y * us.s[3];
        const A* uy = uz + us.s[1];
        const A* ux = uy + us.s[1];
        const int64_t ux_st = us.s[4];
        const T* sn = src + n * ss.s[0];
        T* on = out + ((n * C * D + z) * H + y) * W;
        for (int64_t x = 0; x < W; ++x) {
          A pz = (A)z + uz[x * ux_st];
          A py = (A)y + uy[x * ux_st];
          A px = (A)x + ux[x * ux_st];
          if (interp == Interp::Bilinear) {
            if (pad == Padding::Border) {
              pz = clampnan(pz, (A)0, dmax);
              py = clampnan(py, (A)0, hmax);
              px = clampnan(px, (A)0, wmax);
            }
            if (pz >= (A)0 && pz < dmax && py >= (A)0 && py < hmax && px >= (A)0 && px < wmax) {
              // fast path: all eight corners inside; truncation is floor here
              const int64_t z0 = (int64_t)pz, y0 = (int64_t)py, x0 = (int64_t)px;
              const A wz = pz - (A)z0, wy = py - (A)y0, wx = px - (A)x0;
              const A az = (A)1 - wz, ay = (A)1 - wy, ax = (A)1 - wx;
              const A w00 = az * ay, w01 = az * wy, w10 = wz * ay, w11 = wz * wy;
              const A w000 = w00 * ax, w001 = w00 * wx, w010 = w01 * ax, w011 = w01 * wx;
              const A w100 = w10 * ax, w101 = w10 * wx, w110 = w11 * ax, w111 = w11 * wx;
              const T* p = sn + z0 * sz + y0 * sy + x0 * sx;
              T* o = on + x;
              for (int64_t c = 0; c < C; ++c, p += sc, o += ocs) {
                const A v = w000 * Cvt<T, A>::load(p[0]) + w001 * Cvt<T, A>::load(p[sx]) +
                            w010 * Cvt<T, A>::load(p[sy]) + w011 * Cvt<T, A>::load(p[sy + sx]) +
                            w100 * Cvt<T, A>::load(p[sz]) + w101 * Cvt<T, A>::load(p[sz + sx]) +
                            w110 * Cvt<T, A>::load(p[sz + sy]) + w111 * Cvt<T, A>::load(p[sz + sy + sx]);
                *o = Cvt<T, A>::store(v);
              }
              continue;
            }
            // general path: corners outside read zero (border mode lands here only on
            // the last index of an axis, where the out-of-range corner has weight 0)
            Tap3<A> t;
            trilinear_taps(pz, py, px, g, ss.s, Padding::Zeros, t);
            T* o = on + x;
            const T* p = sn;
            for (int64_t c = 0; c < C; ++c, p += sc, o += ocs) {
              A v = (A)0;
              for (int k = 0; k < 8; ++k) v += t.w[k] * Cvt<T, A>::load(p[t.so[k]]);
              *o = Cvt<T, A>::store(v);
            }
          } else {
            int64_t zi, yi, xi;
            const bool in = nearest_tap(pz, py, px, g, pad, zi, yi, xi);
            const T* p = sn + (in ? zi * sz + yi * sy + xi * sx : 0);
            T* o = on + x;
            for (int64_t c = 0; c < C; ++c, p += sc, o += ocs) *o = in ? *p : Cvt<T, A>::store((A)0);
          }
        }
      }
    }
  }
}

// Backward over row (n, z, y), channels c0..c1. grad_src gets scattered into when
// non-null (the caller makes sure no other thread writes the same copy); grad_u is
// written when non-null (the caller gives each voxel to exactly one task).
template <typename T, typename A>
void backward_row(const T* go, Strides5 gs, const T* src, Strides5 ss, const A* u, Strides5 us, A* gsrc, A* gu,
                  const Warp3dGeom& g, Interp interp, Padding pad, int64_t n, int64_t z, int64_t y, int64_t c0,
                  int64_t c1) {
  const int64_t D = g.D, H = g.H, W = g.W;
  const int64_t svol = g.Ds * g.Hs * g.Ws;
  const A* uz = u + n * us.s[0] + z * us.s[2] + y * us.s[3];
  const A* uy = uz + us.s[1];
  const A* ux = uy + us.s[1];
  const T* gon = go + n * gs.s[0] + z * gs.s[2] + y * gs.s[3];
  const int64_t vox = (z * H + y) * W;  // offset of (z, y, 0) in one [D,H,W] volume
  A* gu0 = gu ? gu + n * 3 * D * H * W + vox : nullptr;
  const A dmax = (A)(g.Ds - 1), hmax = (A)(g.Hs - 1), wmax = (A)(g.Ws - 1);
  const int64_t sz = ss.s[2], sy = ss.s[3], sx = ss.s[4], HWs = g.Hs * g.Ws, Ws = g.Ws;
  for (int64_t x = 0; x < W; ++x) {
    const A pz = (A)z + uz[x * us.s[4]];
    const A py = (A)y + uy[x * us.s[4]];
    const A px = (A)x + ux[x * us.s[4]];
    if (interp == Interp::Bilinear) {
      if (pz > (A)0 && pz < dmax && py > (A)0 && py < hmax && px > (A)0 && px < wmax) {
        // fast path: all eight corners inside, nothing clamped (gradient factors 1);
        // truncation is floor here
        const int64_t z0 = (int64_t)pz, y0 = (int64_t)py, x0 = (int64_t)px;
        const A wz = pz - (A)z0, wy = py - (A)y0, wx = px - (A)x0;
        const A az = (A)1 - wz, ay = (A)1 - wy, ax = (A)1 - wx;
        const A w00 = az * ay, w01 = az * wy, w10 = wz * ay, w11 = wz * wy;
        const int64_t gbase = (z0 * g.Hs + y0) * Ws + x0;
        const int64_t sbase = z0 * sz + y0 * sy + x0 * sx;
        A gz = 0, gy = 0, gx = 0;
        for (int64_t c = c0; c < c1; ++c) {
          const A gv = Cvt<T, A>::load(gon[c * gs.s[1] + x * gs.s[4]]);
          if (gsrc) {
            A* gp = gsrc + (n * g.C + c) * svol + gbase;
            gp[0] += w00 * ax * gv;
            gp[1] += w00 * wx * gv;
            gp[Ws] += w01 * ax * gv;
            gp[Ws + 1] += w01 * wx * gv;
            gp[HWs] += w10 * ax * gv;
            gp[HWs + 1] += w10 * wx * gv;
            gp[HWs + Ws] += w11 * ax * gv;
            gp[HWs + Ws + 1] += w11 * wx * gv;
          }
          if (gu0) {
            const T* p = src + n * ss.s[0] + c * ss.s[1] + sbase;
            const A v000 = Cvt<T, A>::load(p[0]), v001 = Cvt<T, A>::load(p[sx]);
            const A v010 = Cvt<T, A>::load(p[sy]), v011 = Cvt<T, A>::load(p[sy + sx]);
            const A v100 = Cvt<T, A>::load(p[sz]), v101 = Cvt<T, A>::load(p[sz + sx]);
            const A v110 = Cvt<T, A>::load(p[sz + sy]), v111 = Cvt<T, A>::load(p[sz + sy + sx]);
            gz += gv * (ay * ax * (v100 - v000) + ay * wx * (v101 - v001) + wy * ax * (v110 - v010) +
                        wy * wx * (v111 - v011));
            gy += gv * (az * ax * (v010 - v000) + az * wx * (v011 - v001) + wz * ax * (v110 - v100) +
                        wz * wx * (v111 - v101));
            gx += gv * (az * ay * (v001 - v000) + az * wy * (v011 - v010) + wz * ay * (v101 - v100) +
                        wz * wy * (v111 - v110));
          }
        }
        if (gu0) {
          gu0[x] = gz;
          gu0[D * H * W + x] = gy;
          gu0[2 * D * H * W + x] = gx;
        }
        continue;
      }
      // general path: per-corner taps (outside corners, border clamping)
      Tap3<A> t;
      trilinear_taps(pz, py, px, g, ss.s, pad, t);
      if (!t.live) {
        if (gu0) gu0[x] = gu0[D * H * W + x] = gu0[2 * D * H * W + x] = (A)0;
        continue;
      }
      A az = 0, ay = 0, ax = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const A gv = Cvt<T, A>::load(gon[c * gs.s[1] + x * gs.s[4]]);
        if (gsrc) {
          A* gp = gsrc + (n * g.C + c) * svol;
          for (int k = 0; k < 8; ++k)
            if (t.w[k] != (A)0) gp[t.go[k]] += t.w[k] * gv;
        }
        if (gu0) {
          const T* sp = src + n * ss.s[0] + c * ss.s[1];
          A dz = 0, dy = 0, dx = 0;  // derivatives of this channel's sample
          for (int k = 0; k < 8; ++k) {
            const A v = Cvt<T, A>::load(sp[t.so[k]]);
            dz += t.dz[k] * v;
            dy += t.dy[k] * v;
            dx += t.dx[k] * v;
          }
          az += gv * dz;
          ay += gv * dy;
          ax += gv * dx;
        }
      }
      if (gu0) {
        gu0[x] = az * t.gz;
        gu0[D * H * W + x] = ay * t.gy;
        gu0[2 * D * H * W + x] = ax * t.gx;
      }
    } else {
      int64_t zi, yi, xi;
      const bool in = nearest_tap(pz, py, px, g, pad, zi, yi, xi);
      if (gsrc && in) {
        const int64_t off = (zi * g.Hs + yi) * g.Ws + xi;
        for (int64_t c = c0; c < c1; ++c) {
          const A gv = Cvt<T, A>::load(gon[c * gs.s[1] + x * gs.s[4]]);
          gsrc[(n * g.C + c) * svol + off] += gv;
        }
      }
      // piecewise constant in u: zero gradient
      if (gu0) gu0[x] = gu0[D * H * W + x] = gu0[2 * D * H * W + x] = (A)0;
    }
  }
}

// The per-thread copies of grad_src may take at most this many bytes together; with
// less room fewer threads scatter (one: no copies).
constexpr double kPrivateBytes = 512.0 * 1024 * 1024;

template <typename T, typename A>
void backward_impl(const T* go, Strides5 gs, const T* src, Strides5 ss, const A* u, Strides5 us, A* gsrc, A* gu,
                   Warp3dGeom g, Interp interp, Padding pad, int nt) {
  const int64_t N = g.N, C = g.C, D = g.D, H = g.H;
  if (gsrc && nt > 1 && N * C >= (int64_t)nt * 2) {
    // enough volumes: each task owns one (n, c) volume of grad_src
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t z = 0; z < D; ++z)
          for (int64_t y = 0; y < H; ++y)
            backward_row<T, A>(go, gs, src, ss, u, us, gsrc, nullptr, g, interp, pad, n, z, y, c, c + 1);
    if (!gu) return;
    gsrc = nullptr;  // grad_u in its own pass over rows, below
  }
  const int64_t len = N * C * g.Ds * g.Hs * g.Ws;  // elements of grad_src
  int ns = nt;                                     // threads of the row pass
  if (gsrc && nt > 1) ns = (int)std::min<double>(nt, 1.0 + kPrivateBytes / ((double)len * sizeof(A)));
  if (gsrc && ns > 1) {
    // few volumes (the usual N = C = 1): rows split over threads; thread 0 scatters
    // into grad_src, every other thread into its own zeroed copy, and the copies are
    // summed into grad_src afterwards (an atomic float add is a compare-and-swap loop,
    // several times slower than the whole plain scatter).
    std::unique_ptr<A[]> priv(new A[(size_t)((ns - 1) * len)]);
#pragma omp parallel num_threads(ns)
    {
      const int tid = thread_id(), nth = thread_count();
      A* mine = tid == 0 ? gsrc : priv.get() + (tid - 1) * len;
      if (tid > 0) std::fill(mine, mine + len, (A)0);  // first touch by its owner
#pragma omp for collapse(3) schedule(static)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t z = 0; z < D; ++z)
          for (int64_t y = 0; y < H; ++y)
            backward_row<T, A>(go, gs, src, ss, u, us, mine, gu, g, interp, pad, n, z, y, 0, C);
      // (implicit barrier: every copy is complete)
#pragma omp for schedule(static)
      for (int64_t i = 0; i < len; ++i) {
        A sum = gsrc[i];
        for (int t = 1; t < nth; ++t) sum += priv[(t - 1) * len + i];
        gsrc[i] = sum;
      }
    }
    return;
  }
  // grad_u only (any number of threads), or a scatter by one thread
#pragma omp parallel for collapse(3) schedule(static) num_threads(gsrc ? 1 : nt)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t z = 0; z < D; ++z)
      for (int64_t y = 0; y < H; ++y)
        backward_row<T, A>(go, gs, src, ss, u, us, gsrc, gu, g, interp, pad, n, z, y, 0, C);
}

template <typename F>
void dispatch_src(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}, float{}); return;
    case DType::Float64: f(double{}, double{}); return;
    case DType::Float16: f(Half{}, float{}); return;
    case DType::BFloat16: f(BFloat16{}, float{}); return;
    case DType::UInt8: f(uint8_t{}, float{}); return;
  }
  throw KernelArgError("warp3d: unsupported dtype");
}

void check_geom(const Warp3dGeom& g) {
  if (g.N < 0 || g.C < 0 || g.D < 0 || g.H < 0 || g.W < 0 || g.Ds < 1 || g.Hs < 1 || g.Ws < 1)
    throw KernelArgError("warp3d: bad geometry (sizes must be >= 0, source sizes >= 1)");
}

}  // namespace

void warp3d_forward(const void* src, Strides5 src_st, DType src_dtype, const void* u, Strides5 u_st, void* out,
                    Warp3dGeom g, Interp interp, Padding pad, CpuLaunch on) {
  const int num_threads = on.num_threads;
  check_geom(g);
  if (src_dtype == DType::UInt8 && interp != Interp::Nearest)
    throw KernelArgError("warp3d: uint8 sources support nearest interpolation only");
  dispatch_src(src_dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    forward_impl<T, A>(static_cast<const T*>(src), src_st, static_cast<const A*>(u), u_st, static_cast<T*>(out), g,
                       interp, pad, std::max(1, num_threads));
  });
}

void warp3d_backward(const void* grad_out, Strides5 go_st, const void* src, Strides5 src_st, DType src_dtype,
                     const void* u, Strides5 u_st, void* grad_src, void* grad_u, Warp3dGeom g, Interp interp,
                     Padding pad, CpuLaunch on) {
  const int num_threads = on.num_threads;
  check_geom(g);
  if (src_dtype == DType::UInt8) throw KernelArgError("warp3d: no gradient for uint8 sources");
  dispatch_src(src_dtype, [&](auto t, auto a) {
    using T = decltype(t);
    using A = decltype(a);
    if constexpr (!std::is_same<T, uint8_t>::value) {
      backward_impl<T, A>(static_cast<const T*>(grad_out), go_st, static_cast<const T*>(src), src_st,
                          static_cast<const A*>(u), u_st, static_cast<A*>(grad_src), static_cast<A*>(grad_u), g,
                          interp, pad, std::max(1, num_threads));
    }
  });
}

}  // namespace dilseg
