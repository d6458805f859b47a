// select_slices: greedy top-k slice proposal with a minimum gap.
//
// Round r = 0..k-1 picks the eligible slice with the highest score (ties: the lower
// index), writes it to out[r], and makes every z with |z - pick| <= min_gap
// ineligible. Initially eligible: valid[z] (all when valid is null), score not NaN,
// and no annotated slice a with |z - a| <= min_gap. When nothing is eligible the
// remaining out[r..k) are set to -1. Every out element is written.
//
// Arguments (strides in elements):
//   scores     [D] float32, stride `s_stride`
//   annotated  [D] bytes (torch.bool: 0/1; any nonzero counts as true), stride
//              `a_stride`, or nullptr (none annotated)
//   valid      [D] bytes, stride `v_stride`, or nullptr (all valid)
//   D >= 1, k >= 1, 0 <= min_gap <= D (larger gaps behave like D)
//   out        [k] int64, contiguous
#pragma once

#include "../common/common.h"

namespace dilseg {

struct SelectSlicesArgs {
  const float* scores;
  int64_t s_stride;
  const uint8_t* annotated;
  int64_t a_stride;
  const uint8_t* valid;
  int64_t v_stride;
  int64_t D, k, min_gap;
  int64_t* out;
};

// CPU: serial (D is a slice count, typically < 1000: k scans of D cost microseconds,
// less than waking a thread team).
void select_slices(const SelectSlicesArgs& a, CpuLaunch on);

// Largest D the CUDA kernel takes (its eligibility flags live in shared memory).
constexpr int64_t kSelectSlicesCudaMaxD = 32768;

// CUDA: ONE launch of a single block on `on.stream` (k rounds of block-wide argmax with
// suppression in shared memory). No host synchronisation.
void select_slices(const SelectSlicesArgs& a, CudaLaunch on);

}  // namespace dilseg
