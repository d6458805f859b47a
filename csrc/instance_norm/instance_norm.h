// instance_norm: affine instance normalisation of (N, C, S) data (S = D * H * W) and its
// backward, in the layout the tensor has: channels_last (element (n, s, c) at
// (n * S + s) * C + c) or contiguous (at (n * C + c) * S + s).
//
//   forward:  mean[n, c] = sum_s x / S,  var = sum_s (x - mean)^2 / S  (two passes),
//             rstd = 1 / sqrt(var + eps),  y = (x - mean) * (rstd * w[c]) + b[c]
//   backward: s1 = sum_s dy,  s2 = sum_s dy * (x - mean),  a = rstd * w[c],
//             dx = a * (dy - s1 / S) - a * rstd^2 * s2 / S * (x - mean),
//             dw[c] = sum_n s2 * rstd,  db[c] = sum_n s1
//
// Sums run in float over blocks of positions and in double across blocks; threads split
// the positions of one instance (channels_last) or take whole planes (contiguous), and
// their partial sums are added in a fixed order: deterministic for a thread count.
// The reference is engine/ops/instance_norm.py (instance_norm_reference,
// instance_norm_backward_reference).
//
// Arguments: float32 buffers; x, y, dy, dx of N * C * S elements in the layout given;
// w, b, dw, db of C; mean, rstd of N * C (row n, column c). S >= 1, C >= 1.
#pragma once

#include "../common/common.h"

namespace dilseg {

void instance_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                           int64_t N, int64_t C, int64_t S, bool channels_last, float eps, CpuLaunch on);

void instance_norm_backward(const float* dy, const float* x, const float* mean, const float* rstd, const float* w,
                            float* dx, float* dw, float* db, int64_t N, int64_t C, int64_t S, bool channels_last,
                            CpuLaunch on);

}  // namespace dilseg
