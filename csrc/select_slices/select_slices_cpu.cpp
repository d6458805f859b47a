// CPU kernel of select_slices (see select_slices.h). Serial by design: D is small.
// The annotated neighbourhood is found in O(D) by two sweeps (distance to the
// nearest annotated slice on each side), each round is one O(D) scan.
#include "select_slices.h"

#include <algorithm>
#include <vector>

namespace dilseg {

void select_slices(const SelectSlicesArgs& a, CpuLaunch /*on: serial, D is a slice count*/) {
  const int64_t D = a.D, k = a.k, gap = a.min_gap;
  if (D <= 0 || k <= 0 || gap < 0) throw KernelArgError("select_slices: need D >= 1, k >= 1, min_gap >= 0");
  std::vector<uint8_t> elig((size_t)D);
  for (int64_t z = 0; z < D; ++z) {
    const float s = a.scores[z * a.s_stride];
    elig[(size_t)z] = (s == s) && (a.valid == nullptr || a.valid[z * a.v_stride] != 0);
  }
  if (a.annotated != nullptr) {
    // left sweep: distance to the last annotated slice at or before z; right: after
    int64_t last = -1;
    for (int64_t z = 0; z < D; ++z) {
      if (a.annotated[z * a.a_stride]) last = z;
      if (last >= 0 && z - last <= gap) elig[(size_t)z] = 0;
    }
    int64_t next = -1;
    for (int64_t z = D - 1; z >= 0; --z) {
      if (a.annotated[z * a.a_stride]) next = z;
      if (next >= 0 && next - z <= gap) elig[(size_t)z] = 0;
    }
  }
  int64_t r = 0;
  for (; r < k; ++r) {
    int64_t best = -1;
    float bs = 0.f;
    for (int64_t z = 0; z < D; ++z) {
      if (!elig[(size_t)z]) continue;
      const float s = a.scores[z * a.s_stride];
      if (best < 0 || s > bs) {  // strict: ties keep the lower index
        best = z;
        bs = s;
      }
    }
    if (best < 0) break;
    a.out[r] = best;
    const int64_t lo = std::max<int64_t>(0, best - gap), hi = std::min<int64_t>(D - 1, best + gap);
    for (int64_t z = lo; z <= hi; ++z) elig[(size_t)z] = 0;
  }
  for (; r < k; ++r) a.out[r] = -1;
}

}  // namespace dilseg
