// CUDA kernel of select_slices (see select_slices.h; select_slices_cpu.cpp is the
// serial twin with the same tie rule: highest score, then lowest index).
//
// ONE launch of ONE block (up to 1024 threads, D <= 32768):
//   1. eligibility flags in shared memory (D bytes): score not NaN and valid[z];
//   2. annotated neighbourhood: each thread owns a contiguous chunk of slices; the
//      last annotated index before each chunk (and the first after it) come from a
//      block-wide max (min) scan of per-chunk values, then one sweep per chunk
//      clears every z with an annotated slice within min_gap: O(D / threads + log threads);
//   3. k rounds: each thread scans its strided slices for the best (score, index),
//      a warp-shuffle then cross-warp reduction picks the block's best, thread 0
//      writes out[r], and the block clears [pick - gap, pick + gap]. When nothing is
//      eligible the rest of out is filled with -1 and the kernel ends.
// Scores are re-read each round from global memory (L1/L2-resident: D floats).
#include <cuda_runtime.h>

#include <string>

#include "select_slices.h"

namespace dilseg {
namespace {

constexpr int kMaxThreads = 1024;

struct Best {
  float s;
  int i;  // -1: none
};

__device__ __forceinline__ Best better(Best a, Best b) {
  if (b.i < 0) return a;
  if (a.i < 0) return b;
  if (b.s > a.s || (b.s == a.s && b.i < a.i)) return b;
  return a;
}

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Best other;
    other.s = __shfl_xor_sync(0xffffffffu, b.s, o);
    other.i = __shfl_xor_sync(0xffffffffu, b.i, o);
    b = better(b, other);
  }
  return b;
}

__global__ void __launch_bounds__(kMaxThreads)
    select_slices_kernel(const float* __restrict__ scores, int64_t ss, const uint8_t* __restrict__ ann, int64_t as,
                         const uint8_t* __restrict__ valid, int64_t vs, int D, int64_t k, int gap,
                         int64_t* __restrict__ out) {
  extern __shared__ uint8_t elig[];  // [D]
  __shared__ int s_scan[kMaxThreads];
  __shared__ Best s_best[kMaxThreads / 32];
  __shared__ int s_pick;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;

  for (int z = tid; z < D; z += nt) {
    const float s = scores[(int64_t)z * ss];
    elig[z] = (s == s) && (valid == nullptr || valid[(int64_t)z * vs] != 0);
  }
  __syncthreads();

  if (ann != nullptr) {
    const int chunk = (D + nt - 1) / nt;
    const int c0 = min(D, tid * chunk), c1 = min(D, c0 + chunk);
    // last annotated index in my chunk (-inf if none): inclusive max-scan over threads
    int last = -2 * D - 2;
    for (int z = c0; z < c1; ++z)
      if (ann[(int64_t)z * as]) last = z;
    s_scan[tid] = last;
    __syncthreads();
    for (int off = 1; off < nt; off <<= 1) {
      const int o = tid >= off ? s_scan[tid - off] : -2 * D - 2;
      __syncthreads();
      s_scan[tid] = max(s_scan[tid], o);
      __syncthreads();
    }
    int prev = tid > 0 ? s_scan[tid - 1] : -2 * D - 2;  // last annotated before my chunk
    __syncthreads();
    // first annotated index in my chunk (+inf if none): inclusive min-scan from the right
    int first = 3 * D + 2;
    for (int z = c1 - 1; z >= c0; --z)
      if (ann[(int64_t)z * as]) first = z;
    s_scan[tid] = first;
    __syncthreads();
    for (int off = 1; off < nt; off <<= 1) {
      const int o = tid + off < nt ? s_scan[tid + off] : 3 * D + 2;
      __syncthreads();
      s_scan[tid] = min(s_scan[tid], o);
      __syncthreads();
    }
    int next = tid + 1 < nt ? s_scan[tid + 1] : 3 * D + 2;  // first annotated after my chunk
    for (int z = c0; z < c1; ++z)
      if (ann[(int64_t)z * as]) prev = z;
      else if (z - prev <= gap) elig[z] = 0;
    for (int z = c1 - 1; z >= c0; --z) {
      if (ann[(int64_t)z * as]) {
        next = z;
        elig[z] = 0;
      } else if (next - z <= gap) {
        elig[z] = 0;
      }
    }
    __syncthreads();
  }

  for (int64_t r = 0; r < k; ++r) {
    Best b{0.f, -1};
    for (int z = tid; z < D; z += nt)
      if (elig[z]) b = better(b, Best{scores[(int64_t)z * ss], z});
    b = warp_best(b);
    if (lane == 0) s_best[warp] = b;
    __syncthreads();
    if (warp == 0) {
      Best c = lane < nwarps ? s_best[lane] : Best{0.f, -1};
      c = warp_best(c);
      if (lane == 0) {
        s_pick = c.i;
        out[r] = c.i;
      }
    }
    __syncthreads();
    const int pick = s_pick;  // uniform across the block
    if (pick < 0) {
      for (int64_t j = r + 1 + tid; j < k; j += nt) out[j] = -1;
      return;
    }
    const int lo = max(0, pick - gap), hi = min(D - 1, pick + gap);
    for (int z = lo + tid; z <= hi; z += nt) elig[z] = 0;
    __syncthreads();
  }
}

}  // namespace

void select_slices(const SelectSlicesArgs& a, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  if (a.D < 1 || a.D > kSelectSlicesCudaMaxD || a.k < 1 || a.min_gap < 0)
    throw KernelArgError("select_slices_cuda: need 1 <= D <= kSelectSlicesCudaMaxD, k >= 1, min_gap >= 0");
  const int D = (int)a.D;
  const int gap = (int)(a.min_gap < a.D ? a.min_gap : a.D);
  int threads = ((D + 31) / 32) * 32;
  threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : threads);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  select_slices_kernel<<<1, threads, (size_t)D, st>>>(a.scores, a.s_stride, a.annotated, a.a_stride, a.valid,
                                                      a.v_stride, D, a.k, gap, a.out);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("select_slices_cuda: ") + cudaGetErrorString(err));
}

}  // namespace dilseg
