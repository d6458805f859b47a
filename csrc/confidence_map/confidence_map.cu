// CUDA kernel of confidence_map (see confidence_map.h for the contract).
//
// ONE launch. Each block first rebuilds the three per-axis confidence vectors in
// dynamic shared memory (D + H + W floats): warp k scans axis k with ballots, 32
// indices per iteration, a forward pass for the last annotated index <= i and a
// backward pass for the next one >= i (a few iterations for typical sizes). Then the
// block fills its grid-stride share of the volume, four floats per store when W is a
// multiple of 4. The grid is capped at a few blocks per SM so the vector rebuild is
// paid a bounded number of times.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "confidence_map.h"

namespace dilseg {
namespace {

constexpr int kThreads = 256;

// c[i] = 1/(1+d(i)) for one axis, computed by one warp; zeros without annotation.
__device__ void axis_confidence_warp(const uint8_t* ann, int64_t stride, int n, float* c) {
  const int lane = threadIdx.x & 31;
  if (ann == nullptr) {
    for (int i = lane; i < n; i += 32) c[i] = 0.0f;
    return;
  }
  // forward: last annotated index <= i (stored as an int in c[i], owned by this lane)
  int carry = -1;
  for (int base = 0; base < n; base += 32) {
    const int i = base + lane;
    const bool b = i < n && ann[(int64_t)i * stride] != 0;
    const unsigned m = __ballot_sync(0xffffffffu, b);
    const unsigned le = m & (0xffffffffu >> (31 - lane));  // bits 0..lane
    const int last = le ? base + 31 - __clz(le) : carry;
    if (i < n) c[i] = __int_as_float(last);
    carry = m ? base + 31 - __clz(m) : carry;
  }
  // backward: next annotated index >= i; combine
  carry = -1;
  for (int base = ((n - 1) / 32) * 32; base >= 0; base -= 32) {
    const int i = base + lane;
    const bool b = i < n && ann[(int64_t)i * stride] != 0;
    const unsigned m = __ballot_sync(0xffffffffu, b);
    const unsigned ge = m & (0xffffffffu << lane);  // bits lane..31
    const int next = ge ? base + __ffs(ge) - 1 : carry;
    if (i < n) {
      const int last = __float_as_int(c[i]);
      int d = last >= 0 ? i - last : -1;
      if (next >= 0 && (d < 0 || next - i < d)) d = next - i;
      c[i] = d < 0 ? 0.0f : 1.0f / (1.0f + (float)d);
    }
    carry = m ? base + __ffs(m) - 1 : carry;
  }
}

template <bool VEC4>
__global__ void __launch_bounds__(kThreads) confidence_map_kernel(ConfidenceMapArgs a) {
  extern __shared__ float cv[];  // [D | H | W]
  const int D = (int)a.D, H = (int)a.H, W = (int)a.W;
  float* const cd = cv;
  float* const ch = cv + D;
  float* const cw = cv + D + H;
  const int warp = threadIdx.x >> 5;
  if (warp == 0) axis_confidence_warp(a.ann[0], a.ann_stride[0], D, cd);
  if (warp == 1) axis_confidence_warp(a.ann[1], a.ann_stride[1], H, ch);
  if (warp == 2) axis_confidence_warp(a.ann[2], a.ann_stride[2], W, cw);
  __syncthreads();

  const int64_t HW = (int64_t)H * W, total = (int64_t)D * HW;
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  if (VEC4) {  // W % 4 == 0 and out 16-byte aligned: the 4 values share a row
    float4* out4 = reinterpret_cast<float4*>(a.out);
    for (int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x; e < total / 4; e += stride) {
      const int64_t f = e * 4;
      const int64_t row = f / W;
      const int x = (int)(f - row * W);
      const int z = (int)(row / H), y = (int)(row - (int64_t)z * H);
      const float m = fmaxf(cd[z], ch[y]);
      out4[e] = make_float4(fmaxf(m, cw[x]), fmaxf(m, cw[x + 1]), fmaxf(m, cw[x + 2]), fmaxf(m, cw[x + 3]));
    }
  } else {
    for (int64_t e = (int64_t)blockIdx.x * kThreads + threadIdx.x; e < total; e += stride) {
      const int64_t row = e / W;
      const int x = (int)(e - row * W);
      const int z = (int)(row / H), y = (int)(row - (int64_t)z * H);
      a.out[e] = fmaxf(fmaxf(cd[z], ch[y]), cw[x]);
    }
  }
}

}  // namespace

void confidence_map(const ConfidenceMapArgs& a, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  if (a.D <= 0 || a.H <= 0 || a.W <= 0) return;
  if (a.D + a.H + a.W > kConfidenceMapMaxAxisTotal)
    throw KernelArgError("confidence_map: D + H + W exceeds kConfidenceMapMaxAxisTotal");
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) throw std::runtime_error(std::string("confidence_map: ") + cudaGetErrorString(e));
  const bool vec4 = a.W % 4 == 0 && (reinterpret_cast<uintptr_t>(a.out) & 15u) == 0;
  const int64_t total = a.D * a.H * a.W;
  const int64_t items = vec4 ? total / 4 : total;
  int64_t blocks = (items + kThreads - 1) / kThreads;
  const int64_t cap = (int64_t)(sms > 0 ? sms : 1) * 8;
  if (blocks > cap) blocks = cap;
  const size_t smem = (size_t)(a.D + a.H + a.W) * sizeof(float);  // <= 48 KiB: no opt-in
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (vec4) confidence_map_kernel<true><<<(unsigned)blocks, kThreads, smem, s>>>(a);
  else confidence_map_kernel<false><<<(unsigned)blocks, kThreads, smem, s>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("confidence_map: ") + cudaGetErrorString(e));
}

}  // namespace dilseg
