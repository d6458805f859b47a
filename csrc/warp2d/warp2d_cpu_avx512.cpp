// warp2d's CPU forward row, float32 bilinear, with AVX-512F: 16 pixels per step,
// the four corners fetched by gathers of clamped offsets (every address inside the
// source plane), corners outside weighted 0 (zeros padding). CMakeLists.txt compiles
// this file with -mavx512f; without that flag it defines only the nullptr stub.
// Semantics: warp2d.h, and the scalar kernel of warp2d_cpu.cpp (NaN-safe clamps:
// vmaxps returns its second operand when the first is NaN, so max(p, lo) maps NaN
// to lo, as clampnan).
#include "warp2d_simd.h"

#if defined(__AVX512F__)
#include <immintrin.h>

namespace dilseg {
namespace {

template <bool kBorder>
void row_avx512(const Warp2dRow& r) {
  const __m512 lo_y = _mm512_set1_ps(kBorder ? 0.f : -2.f), hi_y = _mm512_set1_ps(kBorder ? (float)(r.Hs - 1) : (float)(r.Hs + 1));
  const __m512 lo_x = _mm512_set1_ps(kBorder ? 0.f : -2.f), hi_x = _mm512_set1_ps(kBorder ? (float)(r.Ws - 1) : (float)(r.Ws + 1));
  const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
  const __m512i Hs = _mm512_set1_epi32((int)r.Hs), Ws = _mm512_set1_epi32((int)r.Ws);
  const __m512i Hs1 = _mm512_set1_epi32((int)r.Hs - 1), Ws1 = _mm512_set1_epi32((int)r.Ws - 1);
  const __m512i sy = _mm512_set1_epi32(r.sy), sx = _mm512_set1_epi32(r.sx);
  const __m512 vy = _mm512_set1_ps((float)r.y), ones = _mm512_set1_ps(1.f);
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t x = 0; x < r.W; x += 16) {
    const int64_t n = r.W - x < 16 ? r.W - x : 16;
    const __mmask16 k = (__mmask16)(n == 16 ? 0xFFFFu : ((1u << n) - 1u));
    const __m512 uy = _mm512_maskz_loadu_ps(k, r.uy + x), ux = _mm512_maskz_loadu_ps(k, r.ux + x);
    // positions under the padding rule (NaN -> lower bound)
    const __m512 py = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(vy, uy), lo_y), hi_y);
    const __m512 px = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(_mm512_add_ps(iota, _mm512_set1_ps((float)x)), ux), lo_x), hi_x);
    const __m512 fy = _mm512_roundscale_ps(py, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 fx = _mm512_roundscale_ps(px, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 wy = _mm512_sub_ps(py, fy), wx = _mm512_sub_ps(px, fx);
    const __m512i y0 = _mm512_cvttps_epi32(fy), x0 = _mm512_cvttps_epi32(fx);  // exact: integral values
    const __m512i y1 = _mm512_add_epi32(y0, one), x1 = _mm512_add_epi32(x0, one);
    const __mmask16 my0 = _mm512_cmpge_epi32_mask(y0, zero) & _mm512_cmplt_epi32_mask(y0, Hs);
    const __mmask16 my1 = _mm512_cmpge_epi32_mask(y1, zero) & _mm512_cmplt_epi32_mask(y1, Hs);
    const __mmask16 mx0 = _mm512_cmpge_epi32_mask(x0, zero) & _mm512_cmplt_epi32_mask(x0, Ws);
    const __mmask16 mx1 = _mm512_cmpge_epi32_mask(x1, zero) & _mm512_cmplt_epi32_mask(x1, Ws);
    const __m512i r0 = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_max_epi32(y0, zero), Hs1), sy);
    const __m512i r1 = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_max_epi32(y1, zero), Hs1), sy);
    const __m512i c0 = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_max_epi32(x0, zero), Ws1), sx);
    const __m512i c1 = _mm512_mullo_epi32(_mm512_min_epi32(_mm512_max_epi32(x1, zero), Ws1), sx);
    const __m512i o00 = _mm512_add_epi32(r0, c0), o01 = _mm512_add_epi32(r0, c1);
    const __m512i o10 = _mm512_add_epi32(r1, c0), o11 = _mm512_add_epi32(r1, c1);
    const __m512 ay = _mm512_sub_ps(ones, wy), ax = _mm512_sub_ps(ones, wx);
    const __m512 w00 = _mm512_maskz_mul_ps(my0 & mx0, ay, ax), w01 = _mm512_maskz_mul_ps(my0 & mx1, ay, wx);
    const __m512 w10 = _mm512_maskz_mul_ps(my1 & mx0, wy, ax), w11 = _mm512_maskz_mul_ps(my1 & mx1, wy, wx);
    const float* s = r.src;
    float* o = r.out + x;
    for (int64_t c = 0; c < r.C; ++c, s += r.src_c, o += r.out_c) {
      const __m512 v00 = _mm512_i32gather_ps(o00, s, 4), v01 = _mm512_i32gather_ps(o01, s, 4);
      const __m512 v10 = _mm512_i32gather_ps(o10, s, 4), v11 = _mm512_i32gather_ps(o11, s, 4);
      __m512 v = _mm512_mul_ps(w00, v00);
      v = _mm512_fmadd_ps(w01, v01, v);
      v = _mm512_fmadd_ps(w10, v10, v);
      v = _mm512_fmadd_ps(w11, v11, v);
      _mm512_mask_storeu_ps(o, k, v);
    }
  }
}

void row(const Warp2dRow& r, Padding pad) {
  if (pad == Padding::Border) row_avx512<true>(r);
  else row_avx512<false>(r);
}

}  // namespace

Warp2dRowFn warp2d_row_avx512() { return &row; }

}  // namespace dilseg

#else

namespace dilseg {
Warp2dRowFn warp2d_row_avx512() { return nullptr; }
}  // namespace dilseg

#endif
