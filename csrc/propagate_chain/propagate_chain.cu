// CUDA kernel of propagate_chain (see propagate_chain.h for the contract).
//
// ONE launch for the whole volume, no host synchronisation, no workspace, no memset.
//
// Decomposition. Annotated slices cut the volume into segments: (a_{k-1}, a_k) between
// consecutive annotated slices, [0, a_0) below the first and (a_last, D) above the
// last. Each segment is independent: the up chain from its lower annotated slice and
// the down chain from its upper one touch only that segment's slices (their sources
// are read from the input masks, never from another block's output). The grid has
// D + 1 blocks; block s < D serves the segment that ends at annotated slice s (and
// writes slice s itself), block D the segment above the last annotated slice; blocks
// of unannotated s exit at once. Without any annotation block D zero-fills the volume.
//
// A block steps both of its chains together (step i: slice lo+i of the up chain and
// slice hi-i of the down chain; both have length hi-lo-1):
//   pass 1  each thread gathers its pixels (bilinear, zeros padding, warp2d's
//           arithmetic) from the previous slice of each chain, stores them in the
//           output volume and accumulates the masses;
//   reduce  a deterministic block reduction (warp shuffles + fixed-order sum) gives
//           both masses to every thread; a chain whose mass fell below
//           min_mass * (its source mass) dies here;
//   pass 2  each thread re-reads ITS OWN pixels (zeroing them if the chain died),
//           refreshes the running mask, and fuses q for every slice whose second
//           contributor has just been produced (the first one was written earlier by
//           the same thread: the pixel -> thread map never changes);
//   barrier __syncthreads(): the slice is complete before the next step gathers it.
// The running masks stay fp32 (exact against the reference): in dynamic shared
// memory when 2*H*W floats fit the device's opt-in limit (e.g. up to ~170x170 on
// H100, ~144x144 on A100: the left-atrium and S sizes), otherwise the previous slice
// is gathered from the output volume itself (it is L2-resident: 256 KiB at 256x256).
// Half-precision shared buffers were rejected: rounding compounds along a chain.
// Visibility of the output volume between the threads of a block is what
// __syncthreads() guarantees for global memory; the volume is read with plain
// (coherent) loads, never __ldg.
//
// Parallelism is one SM per segment (k + 1 blocks for k annotated slices): enough
// for interactive sizes; a lock-step cooperative-grid variant would spread each
// step over all SMs at the price of a grid barrier per step.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "propagate_chain.h"

namespace dilseg {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float ld(const float v) { return v; }
__device__ __forceinline__ float ld(const double v) { return (float)v; }
__device__ __forceinline__ float ld(const uint8_t v) { return (float)v; }
__device__ __forceinline__ float ld(const Half v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ float ld(const BFloat16 v) { return __uint_as_float((uint32_t)v.bits << 16); }

// Accessors of the previous slice of a chain.
template <typename T>
struct MaskSlice {  // an input mask slice, any strides, any storage type
  const T* p;
  int64_t sy, sx;
  __device__ __forceinline__ float operator()(int64_t y, int64_t x) const { return ld(p[y * sy + x * sx]); }
};
struct F32Slice {  // fp32 contiguous: shared memory or the output volume (plain loads)
  const float* p;
  int64_t W;
  __device__ __forceinline__ float operator()(int64_t y, int64_t x) const { return p[y * W + x]; }
};

// warp2d (Bilinear, Zeros) at pixel (y, x) displaced by (uy, ux).
template <typename S>
__device__ __forceinline__ float bilinear(const S& src, int64_t y, int64_t x, float uy, float ux, int64_t H,
                                          int64_t W) {
  float py = (float)y + uy, px = (float)x + ux;
  const float hmax = (float)(H - 1), wmax = (float)(W - 1);
  if (py >= 0.0f && py < hmax && px >= 0.0f && px < wmax) {
    const int64_t y0 = (int64_t)py, x0 = (int64_t)px;  // truncation is floor here
    const float wy = py - (float)y0, wx = px - (float)x0;
    return (1.0f - wy) * (1.0f - wx) * src(y0, x0) + (1.0f - wy) * wx * src(y0, x0 + 1) +
           wy * (1.0f - wx) * src(y0 + 1, x0) + wy * wx * src(y0 + 1, x0 + 1);
  }
  // NaN-safe clamp far outside (every corner then reads zero), then the general case
  py = py > -2.0f ? (py < (float)(H + 1) ? py : (float)(H + 1)) : -2.0f;
  px = px > -2.0f ? (px < (float)(W + 1) ? px : (float)(W + 1)) : -2.0f;
  const float fy = floorf(py), fx = floorf(px);
  const int64_t y0 = (int64_t)fy, x0 = (int64_t)fx;
  const float wy = py - fy, wx = px - fx;
  const bool iy0 = y0 >= 0 && y0 < H, iy1 = y0 + 1 >= 0 && y0 + 1 < H;
  const bool ix0 = x0 >= 0 && x0 < W, ix1 = x0 + 1 >= 0 && x0 + 1 < W;
  float v = 0.0f;
  if (iy0 && ix0) v += (1.0f - wy) * (1.0f - wx) * src(y0, x0);
  if (iy0 && ix1) v += (1.0f - wy) * wx * src(y0, x0 + 1);
  if (iy1 && ix0) v += wy * (1.0f - wx) * src(y0 + 1, x0);
  if (iy1 && ix1) v += wy * wx * src(y0 + 1, x0 + 1);
  return v;
}

__device__ __forceinline__ float clamp01(float v) { return v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; }

// Both contributors present (db, da >= 0); same formula as the CPU kernel.
__device__ __forceinline__ float fuse2(float fb, float fa, int32_t db, int32_t da, Fuse mode) {
  float q;
  if (mode == Fuse::Nearest) {
    q = db < da ? fb : (da < db ? fa : 0.5f * (fb + fa));
  } else {
    const int32_t span = db + da;
    q = span == 0 ? fb : ((float)da / (float)span) * fb + ((float)db / (float)span) * fa;
  }
  return clamp01(q);
}

// Deterministic sum of two values over the block (fixed shuffle / summation order);
// every thread gets the totals. Contains two __syncthreads().
__device__ __forceinline__ float2 block_sum2(float a, float b, float2* scratch, float2* result) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  if (lane == 0) scratch[warp] = make_float2(a, b);
  __syncthreads();
  if (warp == 0) {
    float2 v = lane < kWarps ? scratch[lane] : make_float2(0.0f, 0.0f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    }
    if (lane == 0) *result = v;
  }
  __syncthreads();
  return *result;
}

template <typename T, bool SMEM>
__global__ void __launch_bounds__(kThreads, 1) propagate_chain_kernel(PropagateChainArgs a) {
  extern __shared__ float run[];  // SMEM: [2][H*W] running masks (up, down)
  __shared__ float2 red_scratch[kWarps];
  __shared__ float2 red_result;
  __shared__ long long s_lo;

  const int64_t D = a.D, H = a.H, W = a.W, HW = H * W;
  const int HW32 = (int)HW, W32 = (int)W;  // the host checks H * W < 2^31
  const int64_t hi = blockIdx.x;  // annotated slice ending the segment, or D
  if (hi < D && a.annotated[hi * a.ann_stride] == 0) return;  // block-uniform exit
  if (threadIdx.x == 0) {
    long long lo = -1;
    for (int64_t z = hi - 1; z >= 0; --z) {
      if (a.annotated[z * a.ann_stride] != 0) {
        lo = z;
        break;
      }
    }
    s_lo = lo;
  }
  __syncthreads();
  const int64_t lo = s_lo;
  const bool up = lo >= 0, down = hi < D;
  const int64_t L = hi - lo - 1;  // slices strictly inside the segment
  const int64_t tid = threadIdx.x;
  float* const fb = a.from_below;
  float* const fa = a.from_above;
  float* const q = a.fuse == Fuse::None ? nullptr : a.q;

  // distances and confidence of the segment's slices (and of annotated slice hi)
  for (int64_t z = lo + 1 + tid; z <= (down ? hi : D - 1); z += kThreads) {
    const int32_t db = z == hi ? 0 : (up ? (int32_t)(z - lo) : -1);  // z == hi: annotated
    const int32_t da = down ? (int32_t)(hi - z) : -1;
    a.dist_below[z] = db;
    a.dist_above[z] = da;
    const int32_t d = db < 0 ? da : (da < 0 ? db : min(db, da));
    a.conf[z] = d < 0 ? 0.0f : 1.0f / (1.0f + (float)d);
  }
  if (!up && !down) {  // no annotation at all: no contributor anywhere
    for (int64_t e = tid; e < D * HW; e += kThreads) {
      fb[e] = 0.0f;
      fa[e] = 0.0f;
      if (q) q[e] = 0.0f;
    }
    return;
  }

  const T* masks = static_cast<const T*>(a.masks);
  const MaskSlice<T> src_u{masks + (up ? lo : 0) * a.mask_st[0], a.mask_st[1], a.mask_st[2]};
  const MaskSlice<T> src_d{masks + (down ? hi : 0) * a.mask_st[0], a.mask_st[1], a.mask_st[2]};
  float* const run_u = run;
  float* const run_d = run + HW;

  // annotated slice hi: own mask in both contributors and q; source masses
  float mu = 0.0f, md = 0.0f;
  for (int p = (int)tid; p < HW32; p += kThreads) {
    const int y = p / W32, x = p - y * W32;
    if (up) {
      const float v = src_u(y, x);
      mu += v;
      if (SMEM) run_u[p] = v;
    }
    if (down) {
      const float v = src_d(y, x);
      md += v;
      if (SMEM) run_d[p] = v;
      fb[hi * HW + p] = v;
      fa[hi * HW + p] = v;
      if (q) q[hi * HW + p] = clamp01(v);
    }
  }
  const float2 src_mass = block_sum2(mu, md, red_scratch, &red_result);  // also publishes run_*
  const float thr_u = a.min_mass * src_mass.x, thr_d = a.min_mass * src_mass.y;

  bool alive_u = up, alive_d = down;
  for (int64_t i = 1; i <= L; ++i) {
    const int64_t zu = lo + i, zd = hi - i;
    float* const ou = fb + zu * HW;  // valid when up
    float* const od = fa + zd * HW;  // valid when down
    const float* const fu = a.fwd + (zu - 1) * a.fwd_st.s[0];
    const float* const fd = a.bwd + zd * a.bwd_st.s[0];

    // pass 1: gather the new slices, store them, accumulate the masses
    mu = 0.0f;
    md = 0.0f;
    for (int p = (int)tid; p < HW32; p += kThreads) {
      const int y = p / W32, x = p - y * W32;
      if (alive_u) {
        const float uy = __ldg(fu + y * a.fwd_st.s[2] + x * a.fwd_st.s[3]);
        const float ux = __ldg(fu + a.fwd_st.s[1] + y * a.fwd_st.s[2] + x * a.fwd_st.s[3]);
        float v;
        if (SMEM) v = bilinear(F32Slice{run_u, W}, y, x, uy, ux, H, W);
        else if (i == 1) v = bilinear(src_u, y, x, uy, ux, H, W);
        else v = bilinear(F32Slice{ou - HW, W}, y, x, uy, ux, H, W);
        ou[p] = v;
        mu += v;
      }
      if (alive_d) {
        const float uy = __ldg(fd + y * a.bwd_st.s[2] + x * a.bwd_st.s[3]);
        const float ux = __ldg(fd + a.bwd_st.s[1] + y * a.bwd_st.s[2] + x * a.bwd_st.s[3]);
        float v;
        if (SMEM) v = bilinear(F32Slice{run_d, W}, y, x, uy, ux, H, W);
        else if (i == 1) v = bilinear(src_d, y, x, uy, ux, H, W);
        else v = bilinear(F32Slice{od + HW, W}, y, x, uy, ux, H, W);
        od[p] = v;
        md += v;
      }
    }
    // every gather of this step is done after this (so run_* may be overwritten)
    const float2 mass = block_sum2(mu, md, red_scratch, &red_result);
    const bool keep_u = alive_u && !(mass.x < thr_u);
    const bool keep_d = alive_d && !(mass.y < thr_d);

    // pass 2: finalise own pixels, refresh running masks, fuse
    for (int p = (int)tid; p < HW32; p += kThreads) {
      float vu = 0.0f, vd = 0.0f;
      if (up) {
        if (keep_u) vu = ou[p];  // own write of pass 1
        else ou[p] = 0.0f;       // the chain has ended (now or earlier)
        if (SMEM) run_u[p] = vu;
      }
      if (down) {
        if (keep_d) vd = od[p];
        else od[p] = 0.0f;
        if (SMEM) run_d[p] = vd;
      }
      if (!up) {  // below the first annotated slice: only the down chain
        fb[zd * HW + p] = 0.0f;
        if (q) q[zd * HW + p] = clamp01(vd);
      } else if (!down) {  // above the last annotated slice: only the up chain
        fa[zu * HW + p] = 0.0f;
        if (q) q[zu * HW + p] = clamp01(vu);
      } else if (q) {
        // slice zu got its down contributor at step hi - zu (this thread wrote it)
        if (hi - zu <= i) {
          const float other = zu == zd ? vd : fa[zu * HW + p];
          q[zu * HW + p] = fuse2(vu, other, (int32_t)(zu - lo), (int32_t)(hi - zu), a.fuse);
        }
        // slice zd got its up contributor strictly earlier, at step zd - lo
        if (zd - lo < i) {
          q[zd * HW + p] = fuse2(fb[zd * HW + p], vd, (int32_t)(zd - lo), (int32_t)(hi - zd), a.fuse);
        }
      }
    }
    alive_u = keep_u;
    alive_d = keep_d;
    __syncthreads();  // slice complete (global + shared) before the next step gathers it
  }
}

template <typename T>
void launch(const PropagateChainArgs& a, cudaStream_t stream, size_t smem_bytes, bool use_smem) {
  const dim3 grid((unsigned)(a.D + 1)), block(kThreads);
  if (use_smem) {
    cudaError_t e = cudaFuncSetAttribute(propagate_chain_kernel<T, true>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_bytes);
    if (e != cudaSuccess) throw std::runtime_error(std::string("propagate_chain: ") + cudaGetErrorString(e));
    propagate_chain_kernel<T, true><<<grid, block, smem_bytes, stream>>>(a);
  } else {
    propagate_chain_kernel<T, false><<<grid, block, 0, stream>>>(a);
  }
}

}  // namespace

void propagate_chain(const PropagateChainArgs& a, CudaLaunch on) {
  const uintptr_t stream = on.stream;
  if (a.fuse != Fuse::None && a.fuse != Fuse::Nearest && a.fuse != Fuse::Linear)
    throw KernelArgError("propagate_chain: unknown fuse mode");
  if (a.D <= 0 || a.H <= 0 || a.W <= 0) return;
  if (a.D >= (int64_t)1 << 31 || a.H * a.W >= (int64_t)1 << 31)
    throw KernelArgError("propagate_chain: D or H * W too large (limit 2^31)");
  int dev = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) throw std::runtime_error(std::string("propagate_chain: ") + cudaGetErrorString(e));
  const size_t smem_bytes = (size_t)2 * (size_t)(a.H * a.W) * sizeof(float);
  const size_t static_bytes = 1024;  // block-reduction scratch and the segment bound
  const bool use_smem = smem_bytes + static_bytes <= (size_t)optin;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (a.mask_dtype) {
    case DType::Float32: launch<float>(a, s, smem_bytes, use_smem); break;
    case DType::Float64: launch<double>(a, s, smem_bytes, use_smem); break;
    case DType::Float16: launch<Half>(a, s, smem_bytes, use_smem); break;
    case DType::BFloat16: launch<BFloat16>(a, s, smem_bytes, use_smem); break;
    case DType::UInt8: launch<uint8_t>(a, s, smem_bytes, use_smem); break;
    default: throw KernelArgError("propagate_chain: unsupported mask dtype");
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("propagate_chain: ") + cudaGetErrorString(e));
}

}  // namespace dilseg
