// CPU kernel of slice_residuals (see slice_residuals.h for the contract).
//
// OpenMP over z-planes (static schedule). Each thread owns private row (H) and
// column (W) totals in double; a plane is processed row by row: the row's operands
// are converted to float32 row buffers when they are not already contiguous float32
// (so the core loop is one vectorisable fp32 loop whatever the dtypes), the core
// adds |q-p|(*w) into a float32 row sum and a float32 per-plane column buffer, and
// at the end of the plane the per-slice weight scales the plane's sums once. The
// per-thread totals are reduced after the parallel loop: no atomics anywhere.
#include "slice_residuals.h"

#include <algorithm>
#include <cmath>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dilseg {
namespace {

template <typename T>
inline void convert_row(const T* src, int64_t sx, int64_t W, float* dst) {
  for (int64_t x = 0; x < W; ++x) dst[x] = Cvt<T, float>::load(src[x * sx]);
}

// Row y of plane z of `v` as contiguous float32: a pointer into the tensor when it
// already is one, else `buf` filled by conversion.
inline const float* row_f32(const ResidualOperand& v, int64_t z, int64_t y, int64_t W, float* buf) {
  const int64_t off = z * v.s[0] + y * v.s[1];
  switch (v.dtype) {
    case DType::Float32: {
      const float* r = static_cast<const float*>(v.ptr) + off;
      if (v.s[2] == 1) return r;
      convert_row(r, v.s[2], W, buf);
      return buf;
    }
    case DType::Float16:
      convert_row(static_cast<const Half*>(v.ptr) + off, v.s[2], W, buf);
      return buf;
    case DType::BFloat16:
      convert_row(static_cast<const BFloat16*>(v.ptr) + off, v.s[2], W, buf);
      return buf;
    case DType::UInt8:
      convert_row(static_cast<const uint8_t*>(v.ptr) + off, v.s[2], W, buf);
      return buf;
    default:
      throw KernelArgError("slice_residuals: unsupported dtype");
  }
}

// Core: sum of |q-p| over the row, also added into the plane's column buffer.
inline float row_core(const float* __restrict q, const float* __restrict p, float* __restrict col, int64_t W) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t x = 0; x < W; ++x) {
    const float v = std::fabs(q[x] - p[x]);
    s += v;
    col[x] += v;
  }
  return s;
}

inline float row_core_w(const float* __restrict q, const float* __restrict p, const float* __restrict w,
                        float* __restrict col, int64_t W) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t x = 0; x < W; ++x) {
    const float v = std::fabs(q[x] - p[x]) * w[x];
    s += v;
    col[x] += v;
  }
  return s;
}

bool data_dtype_ok(DType t) {
  return t == DType::Float32 || t == DType::Float16 || t == DType::BFloat16 || t == DType::UInt8;
}

}  // namespace

void slice_residuals(ResidualOperand q, ResidualOperand p, ResidualOperand w, ResidualWeight wmode, float* out,
                     ResidualGeom g, CpuLaunch on) {
  const int num_threads = on.num_threads;
  const int64_t D = g.D, H = g.H, W = g.W;
  if (!data_dtype_ok(q.dtype) || !data_dtype_ok(p.dtype))
    throw KernelArgError("slice_residuals: q and p must be float32, float16, bfloat16 or uint8");
  if (wmode == ResidualWeight::PerSlice && w.dtype != DType::Float32)
    throw KernelArgError("slice_residuals: a per-slice weight must be float32");
  if (wmode == ResidualWeight::Full && !(w.dtype == DType::Float32 || w.dtype == DType::Float16 ||
                                         w.dtype == DType::BFloat16))
    throw KernelArgError("slice_residuals: a full weight must be float32, float16 or bfloat16");
  if (D <= 0 || H <= 0 || W <= 0) throw KernelArgError("slice_residuals: empty volume");

  // threads: at most one per plane and one per kGrain voxels (a small volume, e.g.
  // a 44x95x71 case, runs in tens of microseconds on one core: a thread team would
  // cost more than it saves)
  constexpr int64_t kGrain = int64_t(1) << 18;
  const int64_t by_work = (D * H * W + kGrain - 1) / kGrain;
  const int nt = (int)std::max<int64_t>(1, std::min<int64_t>({(int64_t)num_threads, D, by_work}));
  std::vector<double> part((size_t)nt * (size_t)(H + W), 0.0);  // per-thread [sy | sx]
  const bool full = wmode == ResidualWeight::Full;
  const float* wz = static_cast<const float*>(w.ptr);

#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    double* sy_t = part.data() + (size_t)tid * (size_t)(H + W);
    double* sx_t = sy_t + H;
    std::vector<float> bufs((size_t)W * 4);
    float* qb = bufs.data();
    float* pb = qb + W;
    float* wb = pb + W;
    float* col = wb + W;
#pragma omp for schedule(static)
    for (int64_t z = 0; z < D; ++z) {
      const double scale = wmode == ResidualWeight::PerSlice ? (double)wz[z * w.s[0]] : 1.0;
      std::fill(col, col + W, 0.f);
      double plane = 0.0;
      for (int64_t y = 0; y < H; ++y) {
        const float* qr = row_f32(q, z, y, W, qb);
        const float* pr = row_f32(p, z, y, W, pb);
        const float rs = full ? row_core_w(qr, pr, row_f32(w, z, y, W, wb), col, W) : row_core(qr, pr, col, W);
        plane += rs;
        sy_t[y] += scale * (double)rs;
      }
      out[z] = (float)(scale * plane);
      for (int64_t x = 0; x < W; ++x) sx_t[x] += scale * (double)col[x];
    }
  }
  // reduce the per-thread totals (H + W values, each summed over nt threads)
  for (int64_t i = 0; i < H + W; ++i) {
    double s = 0.0;
    for (int t = 0; t < nt; ++t) s += part[(size_t)t * (size_t)(H + W) + (size_t)i];
    out[D + i] = (float)s;
  }
}

}  // namespace dilseg
