// regularize_field: the regularisation half of one demons iteration, fused.
//
//   a   = u + step                                   [N, C, H, W]
//   c   = couple(a): c[n] = (1 - 2w) a[n] + w (a[prev] + a[next]) within each of
//         `groups` runs of N / groups batch entries; prev/next mirrored at a run's
//         ends (index 1 for the first, n - 2 for the last); runs of one entry and
//         w == 0 leave a unchanged
//   out = separable filter of c with `taps` (odd count, radius R = taps / 2) along H
//         then W, replicate border; a single tap {1} means no smoothing
//
// The reference is engine/ops/regularize_field.py (regularize_field_reference).
//
// Arguments (float32, contiguous, sizes in elements): u, step, out [N, C, H, W];
// taps: ntaps floats (the caller guarantees H > R and W > R when ntaps > 1).
#pragma once

#include <vector>

#include "../common/common.h"

namespace dilseg {

// CPU (OpenMP over the N * C planes; each task couples its plane into a scratch
// plane, filters the columns into a second one and the rows into `out`).
void regularize_field(const float* u, const float* step, float* out, int64_t N, int64_t C, int64_t H, int64_t W,
                      const std::vector<float>& taps, float coupling, int64_t groups, CpuLaunch on);

}  // namespace dilseg
