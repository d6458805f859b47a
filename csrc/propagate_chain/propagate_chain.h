// propagate_chain: push the annotated 2D masks of a volume slice by slice through
// the chained adjacent-slice displacement fields, in both directions, and fuse.
//
// Chains. From every annotated slice a, one chain goes up (z = a+1, a+2, ...) and one
// goes down (z = a-1, ...), each stopping BEFORE the next annotated slice (a chain
// never writes onto or across an annotated slice) or at the volume's end:
//
//   up:    m_z(p) = m_{z-1}(p + fwd[z-1](p))        (z = a+1 .. b-1)
//   down:  m_z(p) = m_{z+1}(p + bwd[z](p))          (z = b-1 .. a+1)
//
// sampled bilinearly with zeros padding (exactly warp2d's Bilinear/Zeros semantics),
// running masks in fp32. A chain dies at the first slice whose mass sum(m_z) falls
// below min_mass * sum(m_a) (sum of its source slice): that slice and every later
// slice of the chain hold an explicit zero mask (still with their distance).
//
// Arguments (all sizes and strides in elements):
//   masks      [D, H, W]     storage type `mask_dtype` (Float32/Float16/BFloat16/
//                            Float64/UInt8), any strides; only annotated slices read
//   annotated  [D]           uint8 / bool (0 or nonzero), stride `ann_stride`
//   fwd, bwd   [D-1, 2, H, W] float32, any strides; channel 0 rows, 1 columns
//   from_below [D, H, W]     float32, contiguous: chain pushed up from the nearest
//                            annotated a <= z (annotated: own mask; none: zeros)
//   from_above [D, H, W]     float32, contiguous: pushed down from the nearest b >= z
//   dist_below [D]           int32: z - a, or -1 when no annotated slice is <= z
//   dist_above [D]           int32: b - z, or -1
//   q          [D, H, W]     float32, contiguous, or nullptr when fuse == None:
//                            both contributors: Nearest = the closer (tie: average),
//                            Linear = (b-z)/(b-a) * from_below + (z-a)/(b-a) * from_above
//                            (annotated: own mask); one: that one; none: 0;
//                            clamped to [0, 1]
//   conf       [D]           float32: 1 / (1 + min available distance); 0 with none
// Every output element is written (callers pass uninitialised buffers).
#pragma once

#include "../common/common.h"

namespace dilseg {

enum class Fuse : int { None = 0, Nearest = 1, Linear = 2 };

struct PropagateChainArgs {
  const void* masks;
  int64_t mask_st[3];
  DType mask_dtype;
  const uint8_t* annotated;
  int64_t ann_stride;
  const float* fwd;
  Strides4 fwd_st;
  const float* bwd;
  Strides4 bwd_st;
  float* from_below;
  float* from_above;
  int32_t* dist_below;
  int32_t* dist_above;
  float* q;  // nullptr when fuse == Fuse::None
  float* conf;
  int64_t D, H, W;
  float min_mass;
  Fuse fuse;
};

// CPU (OpenMP, `on.num_threads` threads): parallel over chains when there are at least
// as many chains as threads, else over the rows of each step.
void propagate_chain(const PropagateChainArgs& a, CpuLaunch on);

// CUDA: ONE kernel launch on `on.stream` for the whole
// volume, no host synchronisation, no workspace; one block per segment between
// consecutive annotated slices.
void propagate_chain(const PropagateChainArgs& a, CudaLaunch on);

}  // namespace dilseg
