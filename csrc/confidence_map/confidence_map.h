// confidence_map: per-voxel confidence from annotated slices on up to three axes.
//
//   c_k(i)        = 1 / (1 + d_k(i)),  d_k(i) = distance from i to the nearest
//                   annotated index on axis k (forward + backward scan);
//                   c_k = 0 everywhere when axis k has no annotation
//   out[z, y, x]  = max(c_0(z), c_1(y), c_2(x))
//
// Arguments (sizes and strides in elements):
//   ann[k]        [n_k] uint8 / bool (0 or nonzero), stride ann_stride[k], or nullptr
//                 for an axis without annotation; n_0 = D, n_1 = H, n_2 = W
//   out           [D, H, W] float32, contiguous, written once (every element)
#pragma once

#include "../common/common.h"

namespace dilseg {

struct ConfidenceMapArgs {
  const uint8_t* ann[3];
  int64_t ann_stride[3];
  float* out;
  int64_t D, H, W;
};

// CPU: the three vectors by serial scans, then one OpenMP pass over (z, y) rows.
void confidence_map(const ConfidenceMapArgs& a, CpuLaunch on);

// CUDA: ONE launch on `on.stream`; every block rebuilds the vectors in shared memory
// (warp-ballot scans), then fills its share of the volume. D + H + W must be at most
// kConfidenceMapMaxAxisTotal (shared-memory budget); the backend rule
// (engine/ops/_common.py) sends larger shapes to the next backend.
constexpr int64_t kConfidenceMapMaxAxisTotal = 12288;
void confidence_map(const ConfidenceMapArgs& a, CudaLaunch on);

}  // namespace dilseg
