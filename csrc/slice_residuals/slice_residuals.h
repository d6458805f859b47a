// slice_residuals: per-slice sums of a weighted residual along all three axes, in
// one pass over the inputs:
//
//   r[z,y,x] = wt(z,y,x) * |q[z,y,x] - p[z,y,x]|        (float32)
//   sz[z] = sum_{y,x} r     sy[y] = sum_{z,x} r     sx[x] = sum_{z,y} r
//
// wt = 1 (ResidualWeight::None), w[z] (PerSlice: the weight scales each z-plane's
// sums once, no per-voxel multiply), or w[z,y,x] (Full).
//
// Arguments (all sizes and strides in elements):
//   q    [D, H, W]   Float32 | Float16 | BFloat16 | UInt8 (0/1 masks), any strides
//   p    [D, H, W]   same choices, independently of q, any strides
//   w    None:     ptr ignored (may be null)
//        PerSlice: [D] Float32, stride s[0] (s[1], s[2] ignored)
//        Full:     [D, H, W] Float32 | Float16 | BFloat16, any strides
//   out  [D + H + W] float32, contiguous: sz at out[0..D), sy at out[D..D+H),
//        sx at out[D+H..D+H+W).
//        CPU: every element is written (no initialisation needed).
//        CUDA: the entry zero-fills `out` (one cudaMemsetAsync) and then launches ONE
//        kernel that adds per-tile partial sums atomically: 2 stream operations.
// Accumulation is float32 (CPU: per-row and per-plane float32 sums added into
// per-thread double totals; CUDA: float32 registers, float32 atomics).
#pragma once

#include "../common/common.h"

namespace dilseg {

enum class ResidualWeight : int { None = 0, PerSlice = 1, Full = 2 };

// A strided 3D operand: element (z,y,x) at ptr[z*s[0] + y*s[1] + x*s[2]].
struct ResidualOperand {
  const void* ptr;
  int64_t s[3];
  DType dtype;
};

struct ResidualGeom {
  int64_t D, H, W;
};

// CPU (OpenMP, `on.num_threads` threads): parallel over z-planes, per-thread row/column
// partials reduced at the end; no atomics.
void slice_residuals(ResidualOperand q, ResidualOperand p, ResidualOperand w, ResidualWeight wmode, float* out,
                     ResidualGeom g, CpuLaunch on);

// CUDA: cudaMemsetAsync(out) + one kernel launch on `on.stream`.
void slice_residuals(ResidualOperand q, ResidualOperand p, ResidualOperand w, ResidualWeight wmode,
                     float* out, ResidualGeom g, CudaLaunch on);

}  // namespace dilseg
