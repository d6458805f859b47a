// CPU kernel of confidence_map (see confidence_map.h for the contract).
#include "confidence_map.h"

#include <algorithm>
#include <vector>

namespace dilseg {
namespace {

// c[i] = 1/(1+d(i)) by a forward scan (last annotated <= i) and a backward scan
// (next annotated >= i); zeros without annotation.
std::vector<float> axis_confidence(const uint8_t* ann, int64_t stride, int64_t n) {
  std::vector<float> c(n, 0.0f);
  if (ann == nullptr || n == 0) return c;
  std::vector<int64_t> last(n);
  for (int64_t i = 0, l = -1; i < n; ++i) last[i] = l = ann[i * stride] ? i : l;
  for (int64_t i = n - 1, nx = -1; i >= 0; --i) {
    nx = ann[i * stride] ? i : nx;
    int64_t d = -1;
    if (last[i] >= 0) d = i - last[i];
    if (nx >= 0 && (d < 0 || nx - i < d)) d = nx - i;
    c[i] = d < 0 ? 0.0f : 1.0f / (1.0f + (float)d);
  }
  return c;
}

}  // namespace

void confidence_map(const ConfidenceMapArgs& a, CpuLaunch on) {
  const int num_threads = on.num_threads;
  const int nt = std::max(1, num_threads);
  const int64_t D = a.D, H = a.H, W = a.W;
  if (D <= 0 || H <= 0 || W <= 0) return;
  const std::vector<float> cd = axis_confidence(a.ann[0], a.ann_stride[0], D);
  const std::vector<float> ch = axis_confidence(a.ann[1], a.ann_stride[1], H);
  const std::vector<float> cw = axis_confidence(a.ann[2], a.ann_stride[2], W);
  const float* cwp = cw.data();
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (int64_t z = 0; z < D; ++z) {
    for (int64_t y = 0; y < H; ++y) {
      const float m = std::max(cd[z], ch[y]);
      float* o = a.out + (z * H + y) * W;
      for (int64_t x = 0; x < W; ++x) o[x] = std::max(m, cwp[x]);
    }
  }
}

}  // namespace dilseg
