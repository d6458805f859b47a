// warp2d's CPU forward row, float32 bilinear, with AVX2 + FMA: 8 pixels per step,
// the four corners fetched by gathers of clamped offsets (every address inside the
// source plane), corners outside weighted 0 (zeros padding). CMakeLists.txt compiles
// this file with -mavx2 -mfma; without those flags it defines only the nullptr stub.
// Semantics: warp2d.h and the scalar kernel of warp2d_cpu.cpp (NaN-safe clamps:
// vmaxps returns its second operand when the first is NaN, so max(p, lo) maps NaN
// to lo, as clampnan).
#include "warp2d_simd.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace dilseg {
namespace {

// lanes [0, n) set: a mask for maskload / maskstore
inline __m256i lanes(int64_t n) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), iota);
}

// 1.0 where both integer masks are set, else 0.0
inline __m256 both(__m256i a, __m256i b) {
  return _mm256_and_ps(_mm256_castsi256_ps(_mm256_and_si256(a, b)), _mm256_set1_ps(1.f));
}

inline __m256i inside(__m256i i, __m256i size) {
  // 0 <= i < size
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), i), _mm256_cmpgt_epi32(size, i));
}

template <bool kBorder>
void row_avx2(const Warp2dRow& r) {
  const __m256 lo_y = _mm256_set1_ps(kBorder ? 0.f : -2.f), hi_y = _mm256_set1_ps(kBorder ? (float)(r.Hs - 1) : (float)(r.Hs + 1));
  const __m256 lo_x = _mm256_set1_ps(kBorder ? 0.f : -2.f), hi_x = _mm256_set1_ps(kBorder ? (float)(r.Ws - 1) : (float)(r.Ws + 1));
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
  const __m256i Hs = _mm256_set1_epi32((int)r.Hs), Ws = _mm256_set1_epi32((int)r.Ws);
  const __m256i Hs1 = _mm256_set1_epi32((int)r.Hs - 1), Ws1 = _mm256_set1_epi32((int)r.Ws - 1);
  const __m256i sy = _mm256_set1_epi32(r.sy), sx = _mm256_set1_epi32(r.sx);
  const __m256 vy = _mm256_set1_ps((float)r.y), ones = _mm256_set1_ps(1.f);
  const __m256 iota = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t x = 0; x < r.W; x += 8) {
    const int64_t n = r.W - x < 8 ? r.W - x : 8;
    const __m256i k = lanes(n);
    const __m256 uy = _mm256_maskload_ps(r.uy + x, k), ux = _mm256_maskload_ps(r.ux + x, k);
    // positions under the padding rule (NaN -> lower bound)
    const __m256 py = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(vy, uy), lo_y), hi_y);
    const __m256 px = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(_mm256_add_ps(iota, _mm256_set1_ps((float)x)), ux), lo_x), hi_x);
    const __m256 fy = _mm256_floor_ps(py), fx = _mm256_floor_ps(px);
    const __m256 wy = _mm256_sub_ps(py, fy), wx = _mm256_sub_ps(px, fx);
    const __m256i y0 = _mm256_cvttps_epi32(fy), x0 = _mm256_cvttps_epi32(fx);  // exact: integral values
    const __m256i y1 = _mm256_add_epi32(y0, one), x1 = _mm256_add_epi32(x0, one);
    const __m256i my0 = inside(y0, Hs), my1 = inside(y1, Hs), mx0 = inside(x0, Ws), mx1 = inside(x1, Ws);
    const __m256i r0 = _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(y0, zero), Hs1), sy);
    const __m256i r1 = _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(y1, zero), Hs1), sy);
    const __m256i c0 = _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(x0, zero), Ws1), sx);
    const __m256i c1 = _mm256_mullo_epi32(_mm256_min_epi32(_mm256_max_epi32(x1, zero), Ws1), sx);
    const __m256i o00 = _mm256_add_epi32(r0, c0), o01 = _mm256_add_epi32(r0, c1);
    const __m256i o10 = _mm256_add_epi32(r1, c0), o11 = _mm256_add_epi32(r1, c1);
    const __m256 ay = _mm256_sub_ps(ones, wy), ax = _mm256_sub_ps(ones, wx);
    const __m256 w00 = _mm256_mul_ps(_mm256_mul_ps(ay, ax), both(my0, mx0));
    const __m256 w01 = _mm256_mul_ps(_mm256_mul_ps(ay, wx), both(my0, mx1));
    const __m256 w10 = _mm256_mul_ps(_mm256_mul_ps(wy, ax), both(my1, mx0));
    const __m256 w11 = _mm256_mul_ps(_mm256_mul_ps(wy, wx), both(my1, mx1));
    const float* s = r.src;
    float* o = r.out + x;
    for (int64_t c = 0; c < r.C; ++c, s += r.src_c, o += r.out_c) {
      const __m256 v00 = _mm256_i32gather_ps(s, o00, 4), v01 = _mm256_i32gather_ps(s, o01, 4);
      const __m256 v10 = _mm256_i32gather_ps(s, o10, 4), v11 = _mm256_i32gather_ps(s, o11, 4);
      __m256 v = _mm256_mul_ps(w00, v00);
      v = _mm256_fmadd_ps(w01, v01, v);
      v = _mm256_fmadd_ps(w10, v10, v);
      v = _mm256_fmadd_ps(w11, v11, v);
      if (n == 8) _mm256_storeu_ps(o, v);
      else _mm256_maskstore_ps(o, k, v);
    }
  }
}

void row(const Warp2dRow& r, Padding pad) {
  if (pad == Padding::Border) row_avx2<true>(r);
  else row_avx2<false>(r);
}

}  // namespace

Warp2dRowFn warp2d_row_avx2() { return &row; }

}  // namespace dilseg

#else

namespace dilseg {
Warp2dRowFn warp2d_row_avx2() { return nullptr; }
}  // namespace dilseg

#endif
