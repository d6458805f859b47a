// CPU kernels of instance_norm (see instance_norm.h for the contract).
#include "instance_norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace dilseg {
namespace {

constexpr int64_t kBlock = 128;  // positions summed in float before they join the double total

// [lo, hi) of `n` items for part `t` of `parts` (static, contiguous)
inline void share(int64_t n, int parts, int t, int64_t& lo, int64_t& hi) {
  const int64_t q = n / parts, r = n % parts;
  lo = t * q + std::min<int64_t>(t, r);
  hi = lo + q + (t < r ? 1 : 0);
}

// channels_last rows [lo, hi) of one instance: acc[c] += f(c, row) summed over rows, via
// float block sums. `f(c, s)` returns a float.
template <typename F>
inline void rows_sum(int64_t lo, int64_t hi, int64_t C, double* acc, float* blk, F f) {
  for (int64_t s0 = lo; s0 < hi; s0 += kBlock) {
    const int64_t s1 = std::min(hi, s0 + kBlock);
    std::fill(blk, blk + C, 0.f);
    for (int64_t s = s0; s < s1; ++s)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) blk[c] += f(c, s);
    for (int64_t c = 0; c < C; ++c) acc[c] += (double)blk[c];
  }
}

// one contiguous plane of S: sum of f(s), float blocks into a double
template <typename F>
inline double plane_sum(int64_t S, F f) {
  double acc = 0.0;
  for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
    const int64_t s1 = std::min(S, s0 + kBlock);
    float blk = 0.f;
#pragma omp simd reduction(+ : blk)
    for (int64_t s = s0; s < s1; ++s) blk += f(s);
    acc += (double)blk;
  }
  return acc;
}

// Per-thread partial sums of a channels_last instance: part[t * C + c], then added in
// thread order into out[c].
template <typename F>
void cl_reduce(int64_t S, int64_t C, int nt, std::vector<double>& part, std::vector<double>& out, F f) {
  std::fill(part.begin(), part.end(), 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t lo, hi;
    share(S, T, t, lo, hi);
    std::vector<float> blk((size_t)C);
    rows_sum(lo, hi, C, part.data() + (size_t)t * C, blk.data(), f);
  }
  std::fill(out.begin(), out.end(), 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) out[c] += part[(size_t)t * C + c];
}

}  // namespace

void instance_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                           int64_t N, int64_t C, int64_t S, bool channels_last, float eps, CpuLaunch on) {
  const int nt = std::max(1, on.num_threads);
  const double inv = 1.0 / (double)S;
  if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < N * C; ++p) {
      const float* __restrict xp = x + p * S;
      float* __restrict yp = y + p * S;
      const float m = (float)(plane_sum(S, [&](int64_t s) { return xp[s]; }) * inv);
      const double var = plane_sum(S, [&](int64_t s) { const float d = xp[s] - m; return d * d; }) * inv;
      const float r = (float)(1.0 / std::sqrt(var + (double)eps));
      const int64_t c = p % C;
      const float a = r * w[c], bc = b[c];
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) yp[s] = (xp[s] - m) * a + bc;
      mean[p] = m;
      rstd[p] = r;
    }
    return;
  }
  std::vector<double> part((size_t)nt * C), tot((size_t)C);
  std::vector<float> m((size_t)C), a((size_t)C);
  for (int64_t n = 0; n < N; ++n) {
    const float* __restrict xn = x + n * S * C;
    float* __restrict yn = y + n * S * C;
    cl_reduce(S, C, nt, part, tot, [&](int64_t c, int64_t s) { return xn[s * C + c]; });
    for (int64_t c = 0; c < C; ++c) m[c] = (float)(tot[c] * inv);
    const float* __restrict mp = m.data();
    cl_reduce(S, C, nt, part, tot, [&](int64_t c, int64_t s) {
      const float d = xn[s * C + c] - mp[c];
      return d * d;
    });
    for (int64_t c = 0; c < C; ++c) {
      const float r = (float)(1.0 / std::sqrt(tot[c] * inv + (double)eps));
      mean[n * C + c] = m[c];
      rstd[n * C + c] = r;
      a[c] = r * w[c];
    }
    const float* __restrict ap = a.data();
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t s = 0; s < S; ++s)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yn[s * C + c] = (xn[s * C + c] - mp[c]) * ap[c] + b[c];
  }
}

void instance_norm_backward(const float* dy, const float* x, const float* mean, const float* rstd, const float* w,
                            float* dx, float* dw, float* db, int64_t N, int64_t C, int64_t S, bool channels_last,
                            CpuLaunch on) {
  const int nt = std::max(1, on.num_threads);
  const double inv = 1.0 / (double)S;
  std::vector<double> s1((size_t)N * C), s2((size_t)N * C);
  if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t p = 0; p < N * C; ++p) {
      const float* __restrict xp = x + p * S;
      const float* __restrict gp = dy + p * S;
      float* __restrict op = dx + p * S;
      const float m = mean[p], r = rstd[p];
      const double a1 = plane_sum(S, [&](int64_t s) { return gp[s]; });
      const double a2 = plane_sum(S, [&](int64_t s) { return gp[s] * (xp[s] - m); });
      const double a = (double)r * (double)w[p % C];
      const float k1 = (float)a, g0 = (float)(a1 * inv), k2 = (float)(-a * (double)r * (double)r * a2 * inv);
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) op[s] = k1 * (gp[s] - g0) + k2 * (xp[s] - m);
      s1[p] = a1;
      s2[p] = a2;
    }
  } else {
    std::vector<double> part((size_t)nt * C), tot((size_t)C);
    std::vector<float> k0((size_t)C), k1((size_t)C), k2((size_t)C);
    for (int64_t n = 0; n < N; ++n) {
      const float* __restrict xn = x + n * S * C;
      const float* __restrict gn = dy + n * S * C;
      float* __restrict on_ = dx + n * S * C;
      const float* __restrict mp = mean + n * C;
      cl_reduce(S, C, nt, part, tot, [&](int64_t c, int64_t s) { return gn[s * C + c]; });
      for (int64_t c = 0; c < C; ++c) s1[n * C + c] = tot[c];
      cl_reduce(S, C, nt, part, tot, [&](int64_t c, int64_t s) { return gn[s * C + c] * (xn[s * C + c] - mp[c]); });
      for (int64_t c = 0; c < C; ++c) {
        s2[n * C + c] = tot[c];
        const double r = rstd[n * C + c], a = r * (double)w[c];
        k1[c] = (float)a;
        k0[c] = (float)(s1[n * C + c] * inv);  // mean(dy)
        k2[c] = (float)(-a * r * r * tot[c] * inv);
      }
      const float *__restrict p0 = k0.data(), *__restrict p1 = k1.data(), *__restrict p2 = k2.data();
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int64_t s = 0; s < S; ++s)
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          on_[s * C + c] = p1[c] * (gn[s * C + c] - p0[c]) + p2[c] * (xn[s * C + c] - mp[c]);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double gw = 0.0, gb = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      gw += s2[n * C + c] * (double)rstd[n * C + c];
      gb += s1[n * C + c];
    }
    dw[c] = (float)gw;
    db[c] = (float)gb;
  }
}

}  // namespace dilseg
