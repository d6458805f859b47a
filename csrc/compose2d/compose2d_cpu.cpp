// CPU kernels of compose2d (see compose2d.h for the contract). OpenMP over (n, row),
// with a fast path for sample points whose 4 corners are all inside. The backward
// scatter into grad_u runs race-free: over images when there are enough of them (the
// usual case: one image per adjacent slice pair), else over rows into per-thread
// copies of grad_u that are summed afterwards. No atomics.
#include "compose2d.h"

#include <algorithm>
#include <memory>

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

// Clamp that maps NaN to `lo` (see warp2d_cpu.cpp): no non-finite value reaches an
// integer cast.
template <typename A>
inline A clampnan(A v, A lo, A hi) {
  return v > lo ? (v < hi ? v : hi) : lo;
}

// floor for values already clamped to a small range, without a libm call.
template <typename A>
inline int64_t ifloor(A v) {
  const int64_t i = (int64_t)v;
  return i - (int64_t)(v < (A)i);
}

// Bilinear taps of one sample point in an Hs x Ws image. Corner k = 2a + b is
// (y0+a, x0+b); a corner outside has weight 0 and offset 0.
template <typename A>
struct Tap2 {
  int64_t go[4];        // offset in a contiguous [H, W] plane (grad_u)
  int64_t so[4];        // offset in the strided plane of u
  A w[4];               // interpolation weights
  A dy[4], dx[4];       // d(weight)/d(py), d(weight)/d(px)
  A gy, gx;             // 1, or 0 along an axis clamped by border padding
  bool live;
};

template <typename A>
inline void bilinear_taps(A py, A px, int64_t H, int64_t W, int64_t sy, int64_t sx, Padding pad, Tap2<A>& t) {
  t.gy = t.gx = (A)1;
  if (pad == Padding::Border) {
    const A hmax = (A)(H - 1), wmax = (A)(W - 1);
    if (!(py > (A)0 && py < hmax)) t.gy = (A)0;  // clamped coordinate: no gradient
    if (!(px > (A)0 && px < wmax)) t.gx = (A)0;
    py = clampnan(py, (A)0, hmax);
    px = clampnan(px, (A)0, wmax);
  } else {
    py = clampnan(py, (A)-2, (A)(H + 1));
    px = clampnan(px, (A)-2, (A)(W + 1));
  }
  const int64_t y0 = ifloor(py), x0 = ifloor(px);
  const A wy = py - (A)y0, wx = px - (A)x0;
  const int64_t ys[2] = {y0, y0 + 1}, xs[2] = {x0, x0 + 1};
  const A wys[2] = {(A)1 - wy, wy}, wxs[2] = {(A)1 - wx, wx};
  const A ds[2] = {(A)-1, (A)1};
  t.live = false;
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const int k = 2 * a + b;
      const bool in = ys[a] >= 0 && ys[a] < H && xs[b] >= 0 && xs[b] < W;
      t.go[k] = in ? ys[a] * W + xs[b] : 0;
      t.so[k] = in ? ys[a] * sy + xs[b] * sx : 0;
      t.w[k] = in ? wys[a] * wxs[b] : (A)0;
      t.dy[k] = in ? ds[a] * wxs[b] : (A)0;
      t.dx[k] = in ? wys[a] * ds[b] : (A)0;
      t.live = t.live || in;
    }
  }
}

template <typename A>
void forward_impl(const A* u, Strides4 us, const A* v, Strides4 vs, A* out, Compose2dGeom g, Padding pad, int nt) {
  const int64_t N = g.N, H = g.H, W = g.W;
  const int64_t sy = us.s[2], sx = us.s[3], sc = us.s[1];
  const A hmax = (A)(H - 1), wmax = (A)(W - 1);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t y = 0; y < H; ++y) {
      const A* vy = v + n * vs.s[0] + y * vs.s[2];
      const A* vx = vy + vs.s[1];
      const A* un = u + n * us.s[0];
      A* o0 = out + (n * 2 * H + y) * W;
      A* o1 = o0 + H * W;
      for (int64_t x = 0; x < W; ++x) {
        const A dy = vy[x * vs.s[3]], dx = vx[x * vs.s[3]];
        A py = (A)y + dy, px = (A)x + dx;
        if (pad == Padding::Border) {
          py = clampnan(py, (A)0, hmax);
          px = clampnan(px, (A)0, wmax);
        }
        A s0, s1;
        if (py >= (A)0 && py < hmax && px >= (A)0 && px < wmax) {
          // fast path: all four corners inside; truncation is floor here
          const int64_t y0 = (int64_t)py, x0 = (int64_t)px;
          const A wy = py - (A)y0, wx = px - (A)x0;
          const A w00 = ((A)1 - wy) * ((A)1 - wx), w01 = ((A)1 - wy) * wx, w10 = wy * ((A)1 - wx), w11 = wy * wx;
          const A* p = un + y0 * sy + x0 * sx;
          s0 = w00 * p[0] + w01 * p[sx] + w10 * p[sy] + w11 * p[sy + sx];
          p += sc;
          s1 = w00 * p[0] + w01 * p[sx] + w10 * p[sy] + w11 * p[sy + sx];
        } else {
          // general path: corners outside read zero (border padding lands here only
          // on the last row / column, where the outside corner has weight 0)
          Tap2<A> t;
          bilinear_taps(py, px, H, W, sy, sx, Padding::Zeros, t);
          s0 = s1 = (A)0;
          for (int k = 0; k < 4; ++k) {
            s0 += t.w[k] * un[t.so[k]];
            s1 += t.w[k] * un[sc + t.so[k]];
          }
        }
        o0[x] = dy + s0;
        o1[x] = dx + s1;
      }
    }
  }
}

template <typename A>
void backward_row(const A* go, Strides4 gs, const A* u, Strides4 us, const A* v, Strides4 vs, A* gu, A* gv,
                  const Compose2dGeom& g, Padding pad, int64_t n, int64_t y) {
  const int64_t H = g.H, W = g.W;
  const A* vy = v + n * vs.s[0] + y * vs.s[2];
  const A* vx = vy + vs.s[1];
  const A* g0p = go + n * gs.s[0] + y * gs.s[2];
  const A* g1p = g0p + gs.s[1];
  const A* u0 = u + n * us.s[0];
  const A* u1 = u0 + us.s[1];
  A* gu0 = gu ? gu + n * 2 * H * W : nullptr;
  A* gu1 = gu ? gu0 + H * W : nullptr;
  A* gv0 = gv ? gv + (n * 2 * H + y) * W : nullptr;
  A* gv1 = gv ? gv0 + H * W : nullptr;
  const A hmax = (A)(H - 1), wmax = (A)(W - 1);
  const int64_t sy = us.s[2], sx = us.s[3];
  for (int64_t x = 0; x < W; ++x) {
    const A py = (A)y + vy[x * vs.s[3]];
    const A px = (A)x + vx[x * vs.s[3]];
    const A g0 = g0p[x * gs.s[3]], g1 = g1p[x * gs.s[3]];
    if (py > (A)0 && py < hmax && px > (A)0 && px < wmax) {
      // fast path: all four corners inside, nothing clamped; truncation is floor here
      const int64_t y0 = (int64_t)py, x0 = (int64_t)px;
      const A wy = py - (A)y0, wx = px - (A)x0, a0 = (A)1 - wy, b0 = (A)1 - wx;
      if (gu) {
        const int64_t o = y0 * W + x0;
        gu0[o] += a0 * b0 * g0;
        gu0[o + 1] += a0 * wx * g0;
        gu0[o + W] += wy * b0 * g0;
        gu0[o + W + 1] += wy * wx * g0;
        gu1[o] += a0 * b0 * g1;
        gu1[o + 1] += a0 * wx * g1;
        gu1[o + W] += wy * b0 * g1;
        gu1[o + W + 1] += wy * wx * g1;
      }
      if (gv) {
        const int64_t o = y0 * sy + x0 * sx;  // g . u at the four corners
        const A k00 = g0 * u0[o] + g1 * u1[o], k01 = g0 * u0[o + sx] + g1 * u1[o + sx];
        const A k10 = g0 * u0[o + sy] + g1 * u1[o + sy], k11 = g0 * u0[o + sy + sx] + g1 * u1[o + sy + sx];
        gv0[x] = g0 + (b0 * (k10 - k00) + wx * (k11 - k01));
        gv1[x] = g1 + (a0 * (k01 - k00) + wy * (k11 - k10));
      }
      continue;
    }
    // general path: per-corner taps (outside corners, border clamping)
    Tap2<A> t;
    bilinear_taps(py, px, H, W, us.s[2], us.s[3], pad, t);
    if (gu && t.live) {
      for (int k = 0; k < 4; ++k) {
        if (t.w[k] != (A)0) {
          gu0[t.go[k]] += t.w[k] * g0;
          gu1[t.go[k]] += t.w[k] * g1;
        }
      }
    }
    if (gv) {
      A ay = 0, ax = 0;  // d(g . u(p)) / d(py), d(g . u(p)) / d(px)
      if (t.live) {
        for (int k = 0; k < 4; ++k) {
          const A gk = g0 * u0[t.so[k]] + g1 * u1[t.so[k]];
          ay += t.dy[k] * gk;
          ax += t.dx[k] * gk;
        }
      }
      gv0[x] = g0 + ay * t.gy;
      gv1[x] = g1 + ax * t.gx;
    }
  }
}

// The per-thread copies of grad_u may take at most this many bytes together; with
// less room fewer threads scatter (one: no copies).
constexpr double kPrivateBytes = 256.0 * 1024 * 1024;

template <typename A>
void backward_impl(const A* go, Strides4 gs, const A* u, Strides4 us, const A* v, Strides4 vs, A* gu, A* gv,
                   Compose2dGeom g, Padding pad, int nt) {
  const int64_t N = g.N, H = g.H;
  if (!gu || nt == 1 || N >= (int64_t)nt * 2) {
    // grad_v only, one thread, or enough images: each task owns image n of grad_u
    // and grad_v
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t y = 0; y < H; ++y) backward_row<A>(go, gs, u, us, v, vs, gu, gv, g, pad, n, y);
    return;
  }
  // few images: rows split over threads; thread 0 scatters into grad_u, every other
  // thread into its own zeroed copy; the copies are summed into grad_u afterwards
  // (no atomics: an atomic float add is a compare-and-swap loop)
  const int64_t len = N * 2 * H * g.W;
  const int ns = (int)std::min<double>(nt, 1.0 + kPrivateBytes / ((double)len * sizeof(A)));
  std::unique_ptr<A[]> priv(new A[(size_t)((ns - 1) * len)]);
#pragma omp parallel num_threads(ns)
  {
    const int tid = thread_id(), nth = thread_count();
    A* mine = tid == 0 ? gu : priv.get() + (tid - 1) * len;
    if (tid > 0) std::fill(mine, mine + len, (A)0);
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t y = 0; y < H; ++y) backward_row<A>(go, gs, u, us, v, vs, mine, gv, g, pad, n, y);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < len; ++i) {
      A sum = gu[i];
      for (int t = 1; t < nth; ++t) sum += priv[(t - 1) * len + i];
      gu[i] = sum;
    }
  }
}

void check_args(DType dt, const Compose2dGeom& g) {
  if (dt != DType::Float32 && dt != DType::Float64)
    throw KernelArgError(std::string("compose2d: fields must be float32 or float64, got ") + dtype_name(dt));
  if (g.N < 0 || g.H < 1 || g.W < 1) throw KernelArgError("compose2d: bad geometry (N >= 0, H >= 1, W >= 1)");
}

}  // namespace

void compose2d_forward(const void* u, Strides4 u_st, const void* v, Strides4 v_st, void* out, DType dtype,
                       Compose2dGeom g, Padding pad, CpuLaunch on) {
  const int num_threads = on.num_threads;
  check_args(dtype, g);
  const int nt = std::max(1, num_threads);
  if (dtype == DType::Float32)
    forward_impl<float>(static_cast<const float*>(u), u_st, static_cast<const float*>(v), v_st,
                        static_cast<float*>(out), g, pad, nt);
  else
    forward_impl<double>(static_cast<const double*>(u), u_st, static_cast<const double*>(v), v_st,
                         static_cast<double*>(out), g, pad, nt);
}

void compose2d_backward(const void* grad_out, Strides4 go_st, const void* u, Strides4 u_st, const void* v,
                        Strides4 v_st, void* grad_u, void* grad_v, DType dtype, Compose2dGeom g, Padding pad,
                        CpuLaunch on) {
  const int num_threads = on.num_threads;
  check_args(dtype, g);
  const int nt = std::max(1, num_threads);
  if (dtype == DType::Float32)
    backward_impl<float>(static_cast<const float*>(grad_out), go_st, static_cast<const float*>(u), u_st,
                         static_cast<const float*>(v), v_st, static_cast<float*>(grad_u),
                         static_cast<float*>(grad_v), g, pad, nt);
  else
    backward_impl<double>(static_cast<const double*>(grad_out), go_st, static_cast<const double*>(u), u_st,
                          static_cast<const double*>(v), v_st, static_cast<double*>(grad_u),
                          static_cast<double*>(grad_v), g, pad, nt);
}

}  // namespace dilseg
