// CUDA kernel of slice_residuals (see slice_residuals.h for the contract;
// slice_residuals_cpu.cpp is the twin: same float32 residual, same weight modes).
//
// Work split: a block of 8 warps owns a tile of kTY = 32 rows x kTW = 128 columns
// (blockIdx.x: column strip, blockIdx.y: row band) over a chunk of TZ consecutive
// z-planes (blockIdx.z). Lane l of warp w reads columns x0 + l + 32 v (v < 4:
// every load instruction of a warp touches consecutive addresses) of rows
// y0 + w + 8 i (i < 4). Per thread, in registers:
//   cp[v], rp[i]       the current plane's column / row partials,
//   colacc[v], rowacc[i]  those partials over the block's planes, scaled by the
//                      per-slice weight once per plane (no per-voxel multiply).
// Per plane: the thread's plane partial is warp-reduced (shuffles) and lane 0 adds
// it to sz[z] (8 float atomics per block and plane). At the end: row totals are
// warp-reduced and added to sy (one atomic per row), column totals are reduced
// across the 8 warps in shared memory and added to sx (one atomic per column).
//
// Launches: cudaMemsetAsync(out) (the sums are accumulated atomically) + ONE kernel,
// both on the caller's stream; no host synchronisation.
//
// q and p dtypes are template parameters (every pair: the common case is a float32
// proxy mask against bf16 probabilities); the full weight's dtype is a uniform
// runtime switch. Offsets are int64; coordinates int (sizes < 2^31 each).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "slice_residuals.h"

namespace dilseg {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kRPW = 4;             // rows per warp
constexpr int kVEC = 4;             // columns per lane
constexpr int kTY = kWarps * kRPW;  // 32 rows per tile
constexpr int kTW = 32 * kVEC;      // 128 columns per tile

struct S3 {
  int64_t s0, s1, s2;
};

// float32 value of one stored element (read-only path)
__device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
__device__ __forceinline__ float ld(const uint8_t* p) { return (float)__ldg(p); }

__device__ __forceinline__ float ld_any(const void* p, DType dt, int64_t off) {
  switch (dt) {  // uniform across the grid: no divergence
    case DType::Float16: return ld(static_cast<const __half*>(p) + off);
    case DType::BFloat16: return ld(static_cast<const __nv_bfloat16*>(p) + off);
    default: return ld(static_cast<const float*>(p) + off);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename TQ, typename TP>
__global__ void __launch_bounds__(kThreads)
    slice_residuals_kernel(const TQ* __restrict__ q, S3 qs, const TP* __restrict__ p, S3 ps, const void* w, S3 ws,
                           DType wdt, ResidualWeight wm, float* __restrict__ out, int D, int H, int W, int TZ) {
  __shared__ float s_col[kWarps][kTW];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int x0 = blockIdx.x * kTW, y0 = blockIdx.y * kTY;
  const int z0 = blockIdx.z * TZ;
  const int z1 = min(D, z0 + TZ);

  float colacc[kVEC], rowacc[kRPW];
#pragma unroll
  for (int v = 0; v < kVEC; ++v) colacc[v] = 0.f;
#pragma unroll
  for (int i = 0; i < kRPW; ++i) rowacc[i] = 0.f;

  for (int z = z0; z < z1; ++z) {
    const float scale = wm == ResidualWeight::PerSlice ? __ldg(static_cast<const float*>(w) + z * ws.s0) : 1.f;
    float rp[kRPW], cp[kVEC];
#pragma unroll
    for (int v = 0; v < kVEC; ++v) cp[v] = 0.f;
#pragma unroll
    for (int i = 0; i < kRPW; ++i) {
      rp[i] = 0.f;
      const int y = y0 + warp + kWarps * i;
      if (y >= H) continue;
      const int64_t qrow = (int64_t)z * qs.s0 + (int64_t)y * qs.s1;
      const int64_t prow = (int64_t)z * ps.s0 + (int64_t)y * ps.s1;
      const int64_t wrow = (int64_t)z * ws.s0 + (int64_t)y * ws.s1;
#pragma unroll
      for (int v = 0; v < kVEC; ++v) {
        const int x = x0 + lane + 32 * v;
        if (x < W) {
          float d = fabsf(ld(q + qrow + (int64_t)x * qs.s2) - ld(p + prow + (int64_t)x * ps.s2));
          if (wm == ResidualWeight::Full) d *= ld_any(w, wdt, wrow + (int64_t)x * ws.s2);
          rp[i] += d;
          cp[v] += d;
        }
      }
    }
    float plane = 0.f;
#pragma unroll
    for (int i = 0; i < kRPW; ++i) {
      plane += rp[i];
      rowacc[i] = fmaf(scale, rp[i], rowacc[i]);
    }
#pragma unroll
    for (int v = 0; v < kVEC; ++v) colacc[v] = fmaf(scale, cp[v], colacc[v]);
    plane = warp_sum(plane);
    if (lane == 0) atomicAdd(out + z, scale * plane);
  }

  // rows: each row lives in one warp (its 32 lanes hold the row's columns)
#pragma unroll
  for (int i = 0; i < kRPW; ++i) {
    const float r = warp_sum(rowacc[i]);
    const int y = y0 + warp + kWarps * i;
    if (lane == 0 && y < H) atomicAdd(out + D + y, r);
  }
  // columns: each column is held by one lane of every warp
#pragma unroll
  for (int v = 0; v < kVEC; ++v) s_col[warp][lane + 32 * v] = colacc[v];
  __syncthreads();
  for (int c = threadIdx.x; c < kTW; c += kThreads) {
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) s += s_col[j][c];
    const int x = x0 + c;
    if (x < W) atomicAdd(out + D + H + x, s);
  }
}

int sm_count() {
  static std::atomic<int> cache[64];  // zero-initialised; every writer stores the same value
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    sms = (dev >= 0 && dev < 64) ? cache[dev].load(std::memory_order_relaxed) : 0;
    if (sms <= 0 && cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0 &&
        dev >= 0 && dev < 64)
      cache[dev].store(sms, std::memory_order_relaxed);
  }
  if (sms <= 0) {
    (void)cudaGetLastError();  // not fatal here: a real failure resurfaces at the launch
    sms = 132;
  }
  return sms;
}

template <typename TQ, typename TP>
void launch(ResidualOperand q, ResidualOperand p, ResidualOperand w, ResidualWeight wm, float* out, ResidualGeom g,
            cudaStream_t st) {
  const int D = (int)g.D, H = (int)g.H, W = (int)g.W;
  const int nx = (W + kTW - 1) / kTW, ny = (H + kTY - 1) / kTY;
  if (ny > 65535) throw KernelArgError("slice_residuals_cuda: H too large (H / 32 row bands exceed gridDim.y)");
  // planes per block: enough blocks for ~4 resident per SM, at least 1 plane each
  const int64_t target = (int64_t)sm_count() * 4;
  int64_t nz = (target + (int64_t)nx * ny - 1) / ((int64_t)nx * ny);
  nz = nz < 1 ? 1 : (nz > D ? D : nz);
  int TZ = (int)((D + nz - 1) / nz);
  nz = (D + TZ - 1) / TZ;
  if (nz > 65535) {  // gridDim.z limit
    TZ = (D + 65534) / 65535;
    nz = (D + TZ - 1) / TZ;
  }
  const dim3 grid((unsigned)nx, (unsigned)ny, (unsigned)nz);
  slice_residuals_kernel<TQ, TP><<<grid, kThreads, 0, st>>>(
      static_cast<const TQ*>(q.ptr), S3{q.s[0], q.s[1], q.s[2]}, static_cast<const TP*>(p.ptr),
      S3{p.s[0], p.s[1], p.s[2]}, w.ptr, S3{w.s[0], w.s[1], w.s[2]}, w.dtype, wm, out, D, H, W, TZ);
}

template <typename F>
void dispatch_data(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); return;
    case DType::Float16: f(__half{}); return;
    case DType::BFloat16: f(__nv_bfloat16{}); return;
    case DType::UInt8: f(uint8_t{}); return;
    default: throw KernelArgError("slice_residuals: q and p must be float32, float16, bfloat16 or uint8");
  }
}

}  // namespace

void slice_residuals(ResidualOperand q, ResidualOperand p, ResidualOperand w, ResidualWeight wmode,
                     float* out, ResidualGeom g, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  if (g.D <= 0 || g.H <= 0 || g.W <= 0 || g.D > kMax || g.H > kMax || g.W > kMax)
    throw KernelArgError("slice_residuals_cuda: sizes must be in [1, 2^31)");
  if (wmode == ResidualWeight::PerSlice && w.dtype != DType::Float32)
    throw KernelArgError("slice_residuals: a per-slice weight must be float32");
  if (wmode == ResidualWeight::Full &&
      !(w.dtype == DType::Float32 || w.dtype == DType::Float16 || w.dtype == DType::BFloat16))
    throw KernelArgError("slice_residuals: a full weight must be float32, float16 or bfloat16");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemsetAsync(out, 0, sizeof(float) * (size_t)(g.D + g.H + g.W), st);  // operation 1
  if (err != cudaSuccess) throw std::runtime_error(std::string("slice_residuals_cuda: memset: ") + cudaGetErrorString(err));
  dispatch_data(q.dtype, [&](auto tq) {
    dispatch_data(p.dtype, [&](auto tp) { launch<decltype(tq), decltype(tp)>(q, p, w, wmode, out, g, st); });
  });  // operation 2: the kernel
  err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("slice_residuals_cuda: ") + cudaGetErrorString(err));
}

}  // namespace dilseg
