#include "regularize_field.h"

namespace dilseg {

namespace {

// Filter one row `src` of length W into `dst` with K taps (radius R), replicate border.
// The interior is K shifted multiply-adds over the row (vectorised), the R columns at
// either end use clamped indices.
inline void filter_row(const float* __restrict src, float* __restrict dst, int64_t W, const float* kt, int64_t K,
                       int64_t R) {
  const int64_t left = R < W ? R : W;                 // columns [0, left)
  const int64_t right = W - R > left ? W - R : left;  // columns [right, W)
  for (int64_t x = left; x < right; ++x) dst[x] = kt[0] * src[x - R];
  for (int64_t t = 1; t < K; ++t) {
    const float k = kt[t];
    const float* __restrict s = src + t - R;
    for (int64_t x = left; x < right; ++x) dst[x] += k * s[x];
  }
  auto border = [&](int64_t x) {
    float acc = 0.f;
    for (int64_t t = 0; t < K; ++t) {
      int64_t xx = x + t - R;
      xx = xx < 0 ? 0 : (xx > W - 1 ? W - 1 : xx);
      acc += kt[t] * src[xx];
    }
    dst[x] = acc;
  };
  for (int64_t x = 0; x < left; ++x) border(x);
  for (int64_t x = right; x < W; ++x) border(x);
}

}  // namespace

void regularize_field(const float* u, const float* step, float* out, int64_t N, int64_t C, int64_t H, int64_t W,
                      const std::vector<float>& taps, float coupling, int64_t groups, CpuLaunch on) {
  const int num_threads = on.num_threads;
  const int64_t HW = H * W;
  const int64_t per = groups > 0 ? N / groups : N;  // entries per run
  const bool couple = coupling != 0.f && per >= 2;
  const int64_t K = (int64_t)taps.size();
  const int64_t R = K / 2;
  const float wc = 1.f - 2.f * coupling;
  const std::vector<float> kt(taps);  // private copy: the filter loops see no aliasing
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> a_buf((size_t)HW), v_buf((size_t)HW);
    float* __restrict a = a_buf.data();
    float* __restrict v = v_buf.data();
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < N * C; ++plane) {
      const int64_t n = plane / C, ch = plane - n * C;
      const int64_t off = plane * HW;
      float* __restrict o = out + off;
      float* __restrict dst = K <= 1 ? o : a;  // without smoothing the sum goes straight out
      // 1. couple(u + step) for this plane
      const float* __restrict uc = u + off;
      const float* __restrict sc = step + off;
      if (couple) {
        const int64_t j = n % per, base = n - j;
        const int64_t prev = base + (j > 0 ? j - 1 : 1);
        const int64_t next = base + (j < per - 1 ? j + 1 : per - 2);
        const float* __restrict up = u + (prev * C + ch) * HW;
        const float* __restrict sp = step + (prev * C + ch) * HW;
        const float* __restrict un = u + (next * C + ch) * HW;
        const float* __restrict sn = step + (next * C + ch) * HW;
        for (int64_t i = 0; i < HW; ++i)
          dst[i] = wc * (uc[i] + sc[i]) + coupling * ((up[i] + sp[i]) + (un[i] + sn[i]));
      } else {
        for (int64_t i = 0; i < HW; ++i) dst[i] = uc[i] + sc[i];
      }
      if (K <= 1) continue;
      // 2. columns (along H) into v: rows y - R .. y + R, clamped
      for (int64_t y = 0; y < H; ++y) {
        float* __restrict vr = v + y * W;
        for (int64_t t = 0; t < K; ++t) {
          int64_t yy = y + t - R;
          yy = yy < 0 ? 0 : (yy > H - 1 ? H - 1 : yy);
          const float k = kt[(size_t)t];
          const float* __restrict ar = a + yy * W;
          if (t == 0) {
            for (int64_t x = 0; x < W; ++x) vr[x] = k * ar[x];
          } else {
            for (int64_t x = 0; x < W; ++x) vr[x] += k * ar[x];
          }
        }
      }
      // 3. rows (along W) into out
      for (int64_t y = 0; y < H; ++y) filter_row(v + y * W, o + y * W, W, kt.data(), K, R);
    }
  }
}

}  // namespace dilseg
