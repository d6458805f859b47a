#include "demons_step.h"

#include <algorithm>
#include <vector>

namespace dilseg {

namespace {

inline float clamp_nan(float v, float lo, float hi) { return v > lo ? (v < hi ? v : hi) : lo; }

// Bilinear sample of plane `m` [H, W] at (py, px) with border padding, as warp2d:
// clamp the coordinate to [0, size-1] (NaN reads index 0), corners past the last
// row/column carry weight 0.
inline float sample_border(const float* m, int64_t H, int64_t W, float py, float px) {
  py = clamp_nan(py, 0.f, (float)(H - 1));
  px = clamp_nan(px, 0.f, (float)(W - 1));
  const int64_t y0 = (int64_t)py, x0 = (int64_t)px;  // non-negative: truncation is floor
  const float wy = py - (float)y0, wx = px - (float)x0;
  const int64_t y1 = y0 + 1 < H ? y0 + 1 : y0, x1 = x0 + 1 < W ? x0 + 1 : x0;
  const float* r0 = m + y0 * W;
  const float* r1 = m + y1 * W;
  return (1.f - wy) * ((1.f - wx) * r0[x0] + wx * r0[x1]) + wy * ((1.f - wx) * r1[x0] + wx * r1[x1]);
}

}  // namespace

void demons_step(const float* fixed, const float* moving, const float* u, const float* g_fixed, float* step,
                 int64_t N, int64_t H, int64_t W, float inv_k, CpuLaunch on) {
  const int num_threads = on.num_threads;
  const int64_t HW = H * W;
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> mw((size_t)HW);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float* mv = moving + n * HW;
      const float* uy = u + n * 2 * HW;
      const float* ux = uy + HW;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          mw[y * W + x] = sample_border(mv, H, W, (float)y + uy[y * W + x], (float)x + ux[y * W + x]);
      const float* fx_ = fixed + n * HW;
      const float* gfy = g_fixed + n * 2 * HW;
      const float* gfx = gfy + HW;
      float* sy = step + n * 2 * HW;
      float* sx = sy + HW;
      for (int64_t y = 0; y < H; ++y) {
        const int64_t ym = y > 0 ? y - 1 : 0, yp = y + 1 < H ? y + 1 : y;
        const float ry = yp - ym == 2 ? 0.5f : 1.f;  // central inside, one-sided at the border
        for (int64_t x = 0; x < W; ++x) {
          const int64_t xm = x > 0 ? x - 1 : 0, xp = x + 1 < W ? x + 1 : x;
          const float rx = xp - xm == 2 ? 0.5f : 1.f;
          const int64_t i = y * W + x;
          const float gmy = (mw[yp * W + x] - mw[ym * W + x]) * ry;  // 0 when H == 1
          const float gmx = (mw[y * W + xp] - mw[y * W + xm]) * rx;
          const float gy = (gmy + gfy[i]) * 0.5f, gx = (gmx + gfx[i]) * 0.5f;
          const float diff = fx_[i] - mw[i];
          const float den = std::max(gy * gy + gx * gx + inv_k * (diff * diff), 1e-12f);
          const float scale = diff / den;
          sy[i] = gy * scale;
          sx[i] = gx * scale;
        }
      }
    }
  }
}

}  // namespace dilseg
