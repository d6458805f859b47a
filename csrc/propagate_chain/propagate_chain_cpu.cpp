// CPU kernel of propagate_chain (see propagate_chain.h for the contract).
//
// Three passes, each an OpenMP loop with an explicit thread count:
//   1. per slice: copy annotated masks into both contributor volumes, zero-fill the
//      slices that have no contributor, write distances and confidence;
//   2. the chains: each is sequential in z. With at least as many chains as threads,
//      threads take whole chains (dynamic schedule, longest first); otherwise the
//      chains run one after another with the rows of each step in parallel;
//   3. the fusion into q (when requested), parallel over (slice, row).
// Each step reads the previous slice of the chain from the output volume itself
// (fp32), so no scratch memory is needed.
#include "propagate_chain.h"

#include <algorithm>
#include <vector>

namespace dilseg {
namespace {

// Clamp that maps NaN to `lo` (the Python entry scans for NaN only with
// check_inputs=True; this keeps integer casts defined regardless).
inline float clampnan(float v, float lo, float hi) { return v > lo ? (v < hi ? v : hi) : lo; }

inline int64_t ifloor(float v) {
  const int64_t i = (int64_t)v;
  return i - (int64_t)(v < (float)i);
}

// One row of one step: out[y, :] = prev(p + u(p)), bilinear, zeros padding; returns
// the row's mass. Same arithmetic as warp2d's forward (Bilinear, Zeros).
inline double step_row(const float* prev, const float* uy, const float* ux, int64_t us, float* out, int64_t y,
                       int64_t H, int64_t W) {
  const float hmax = (float)(H - 1), wmax = (float)(W - 1);
  float row_mass = 0.0f;  // fp32 partial per row; the caller sums rows in double
  for (int64_t x = 0; x < W; ++x) {
    float py = (float)y + uy[x * us];
    float px = (float)x + ux[x * us];
    float v;
    if (py >= 0.0f && py < hmax && px >= 0.0f && px < wmax) {
      const int64_t y0 = (int64_t)py, x0 = (int64_t)px;  // truncation is floor here
      const float wy = py - (float)y0, wx = px - (float)x0;
      const float* p = prev + y0 * W + x0;
      v = (1.0f - wy) * (1.0f - wx) * p[0] + (1.0f - wy) * wx * p[1] + wy * (1.0f - wx) * p[W] + wy * wx * p[W + 1];
    } else {
      py = clampnan(py, -2.0f, (float)(H + 1));
      px = clampnan(px, -2.0f, (float)(W + 1));
      const int64_t y0 = ifloor(py), x0 = ifloor(px);
      const float wy = py - (float)y0, wx = px - (float)x0;
      const bool iy0 = y0 >= 0 && y0 < H, iy1 = y0 + 1 >= 0 && y0 + 1 < H;
      const bool ix0 = x0 >= 0 && x0 < W, ix1 = x0 + 1 >= 0 && x0 + 1 < W;
      v = 0.0f;
      if (iy0 && ix0) v += (1.0f - wy) * (1.0f - wx) * prev[y0 * W + x0];
      if (iy0 && ix1) v += (1.0f - wy) * wx * prev[y0 * W + x0 + 1];
      if (iy1 && ix0) v += wy * (1.0f - wx) * prev[(y0 + 1) * W + x0];
      if (iy1 && ix1) v += wy * wx * prev[(y0 + 1) * W + x0 + 1];
    }
    out[x] = v;
    row_mass += v;
  }
  return (double)row_mass;
}

struct Chain {
  int64_t src;   // annotated source slice
  int64_t step;  // +1 up (writes from_below), -1 down (writes from_above)
  int64_t len;   // number of slices it writes
};

// One step of a chain: slice z from slice z - step. Returns the slice's mass.
inline double chain_step(const PropagateChainArgs& a, const Chain& c, int64_t z, int nt_rows) {
  const int64_t H = a.H, W = a.W, HW = H * W;
  float* vol = c.step > 0 ? a.from_below : a.from_above;
  const float* prev = vol + (z - c.step) * HW;
  float* out = vol + z * HW;
  const float* f = c.step > 0 ? a.fwd + (z - 1) * a.fwd_st.s[0] : a.bwd + z * a.bwd_st.s[0];
  const Strides4& fs = c.step > 0 ? a.fwd_st : a.bwd_st;
  double mass = 0.0;
  if (nt_rows > 1) {
#pragma omp parallel for schedule(static) reduction(+ : mass) num_threads(nt_rows)
    for (int64_t y = 0; y < H; ++y) {
      const float* uy = f + y * fs.s[2];
      mass += step_row(prev, uy, uy + fs.s[1], fs.s[3], out + y * W, y, H, W);
    }
  } else {
    for (int64_t y = 0; y < H; ++y) {
      const float* uy = f + y * fs.s[2];
      mass += step_row(prev, uy, uy + fs.s[1], fs.s[3], out + y * W, y, H, W);
    }
  }
  return mass;
}

inline double slice_mass(const float* p, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m += (double)p[i];
  return m;
}

void run_chain(const PropagateChainArgs& a, const Chain& c, int nt_rows) {
  const int64_t HW = a.H * a.W;
  float* vol = c.step > 0 ? a.from_below : a.from_above;
  const double thr = (double)a.min_mass * slice_mass(vol + c.src * HW, HW);
  bool alive = true;
  for (int64_t k = 1; k <= c.len; ++k) {
    const int64_t z = c.src + k * c.step;
    float* out = vol + z * HW;
    if (alive) {
      const double m = chain_step(a, c, z, nt_rows);
      if (m < thr) alive = false;  // the object has ended: this slice and later are zero
    }
    if (!alive) std::fill(out, out + HW, 0.0f);
  }
}

template <typename T>
void copy_slice(const T* src, const int64_t* st, float* dst, int64_t H, int64_t W) {
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) dst[y * W + x] = Cvt<T, float>::load(src[y * st[1] + x * st[2]]);
}

void copy_annotated(const PropagateChainArgs& a, int64_t z) {
  const int64_t HW = a.H * a.W;
  float* dst = a.from_below + z * HW;
  switch (a.mask_dtype) {
    case DType::Float32:
      copy_slice(static_cast<const float*>(a.masks) + z * a.mask_st[0], a.mask_st, dst, a.H, a.W);
      break;
    case DType::Float64:
      copy_slice(static_cast<const double*>(a.masks) + z * a.mask_st[0], a.mask_st, dst, a.H, a.W);
      break;
    case DType::Float16:
      copy_slice(static_cast<const Half*>(a.masks) + z * a.mask_st[0], a.mask_st, dst, a.H, a.W);
      break;
    case DType::BFloat16:
      copy_slice(static_cast<const BFloat16*>(a.masks) + z * a.mask_st[0], a.mask_st, dst, a.H, a.W);
      break;
    case DType::UInt8:
      copy_slice(static_cast<const uint8_t*>(a.masks) + z * a.mask_st[0], a.mask_st, dst, a.H, a.W);
      break;
  }
  std::copy(dst, dst + HW, a.from_above + z * HW);
}

inline float fuse_value(float fb, float fa, int32_t db, int32_t da, Fuse mode) {
  float q;
  if (db >= 0 && da >= 0) {
    if (mode == Fuse::Nearest) {
      q = db < da ? fb : (da < db ? fa : 0.5f * (fb + fa));
    } else {
      const int32_t span = db + da;  // b - a; 0 only on an annotated slice
      q = span == 0 ? fb : ((float)da / (float)span) * fb + ((float)db / (float)span) * fa;
    }
  } else {
    q = db >= 0 ? fb : (da >= 0 ? fa : 0.0f);
  }
  return q > 0.0f ? (q < 1.0f ? q : 1.0f) : 0.0f;
}

}  // namespace

void propagate_chain(const PropagateChainArgs& a, CpuLaunch on) {
  const int num_threads = on.num_threads;
  const int nt = std::max(1, num_threads);
  const int64_t D = a.D, HW = a.H * a.W;
  if (a.fuse != Fuse::None && a.fuse != Fuse::Nearest && a.fuse != Fuse::Linear)
    throw KernelArgError("propagate_chain: unknown fuse mode");
  if (a.mask_dtype != DType::Float32 && a.mask_dtype != DType::Float64 && a.mask_dtype != DType::Float16 &&
      a.mask_dtype != DType::BFloat16 && a.mask_dtype != DType::UInt8)
    throw KernelArgError("propagate_chain: unsupported mask dtype");
  if (D <= 0 || HW <= 0) return;

  // nearest annotated slice at or below / at or above each z (serial: D is small)
  std::vector<char> ann(D);
  for (int64_t z = 0; z < D; ++z) ann[z] = a.annotated[z * a.ann_stride] != 0;
  std::vector<int64_t> below(D), above(D);
  for (int64_t z = 0, last = -1; z < D; ++z) below[z] = last = ann[z] ? z : last;
  for (int64_t z = D - 1, next = -1; z >= 0; --z) above[z] = next = ann[z] ? z : next;

  std::vector<Chain> chains;
  for (int64_t z = 0; z < D; ++z) {
    if (!ann[z]) continue;
    if (z + 1 < D && !ann[z + 1]) chains.push_back({z, +1, (above[z + 1] < 0 ? D : above[z + 1]) - z - 1});
    if (z - 1 >= 0 && !ann[z - 1]) chains.push_back({z, -1, z - 1 - below[z - 1]});
  }
  std::stable_sort(chains.begin(), chains.end(), [](const Chain& l, const Chain& r) { return l.len > r.len; });

  // pass 1: per slice
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t z = 0; z < D; ++z) {
    const int32_t db = below[z] >= 0 ? (int32_t)(z - below[z]) : -1;
    const int32_t da = above[z] >= 0 ? (int32_t)(above[z] - z) : -1;
    a.dist_below[z] = db;
    a.dist_above[z] = da;
    const int32_t d = db < 0 ? da : (da < 0 ? db : std::min(db, da));
    a.conf[z] = d < 0 ? 0.0f : 1.0f / (1.0f + (float)d);
    if (ann[z]) {
      copy_annotated(a, z);
    } else {
      if (db < 0) std::fill(a.from_below + z * HW, a.from_below + (z + 1) * HW, 0.0f);
      if (da < 0) std::fill(a.from_above + z * HW, a.from_above + (z + 1) * HW, 0.0f);
    }
  }

  // pass 2: chains
  const int64_t nc = (int64_t)chains.size();
  if (nc >= nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < nc; ++i) run_chain(a, chains[i], 1);
  } else {
    for (int64_t i = 0; i < nc; ++i) run_chain(a, chains[i], a.H > 1 ? nt : 1);
  }

  // pass 3: fusion
  if (a.fuse == Fuse::None || a.q == nullptr) return;
  const int64_t H = a.H, W = a.W;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
  for (int64_t z = 0; z < D; ++z) {
    for (int64_t y = 0; y < H; ++y) {
      const int32_t db = a.dist_below[z], da = a.dist_above[z];
      const int64_t o = z * HW + y * W;
      const float* fb = a.from_below + o;
      const float* fa = a.from_above + o;
      float* q = a.q + o;
      for (int64_t x = 0; x < W; ++x) q[x] = fuse_value(fb[x], fa[x], db, da, a.fuse);
    }
  }
}

}  // namespace dilseg
