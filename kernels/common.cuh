// kernels/common.cuh: what every kernel family shares: the bf16 storage type and f32
// conversions, 16-byte packed loads/stores, warp and block reductions in a fixed order.
// Compiles under nvcc (the fatbin built by build.rs) and under g++ with kernels/emu/emu.h
// (the CPU emulator used by tests/kernels_emu.rs). Neighbours: one .cu per kernel family.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <stdint.h>
// Dynamic shared memory as a typed pointer (all names share the base, as in CUDA).
#define DYN_SMEM(T, name)                                 \
  extern __shared__ __align__(16) unsigned char dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(dyn_smem_)
#else
#include "emu/emu.h"
#endif

typedef __nv_bfloat16 bf16;

// Threads per block of the row-wise and element-wise kernels (a multiple of 32, at most 1024).
#define BLOCK_THREADS 256
// Cross-entropy ignore index (PyTorch's default).
#define IGNORE_INDEX (-100)

// ---- conversions ---------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// ---- 16-byte packs -------------------------------------------------------------------------
// `Pack<T>` holds 16 bytes of T (4 floats or 8 bf16) and moves with one 128-bit access.
template <class T>
struct __align__(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};
template <class T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  Pack<T> r;
  *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
  return r;
}
template <class T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& r) {
  *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&r);
}
// True when `p` may be accessed with 16-byte loads.
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- reductions (fixed order: the same inputs give the same bits) --------------------------
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum/max for blockDim.x a multiple of 32 (1-D blocks): every thread gets the
// result. `scratch` is 32 values of shared memory; the call has two __syncthreads, so
// consecutive calls may reuse the same scratch.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = lane < nwarps ? scratch[lane] : T(0);
  r = warp_sum(r);
  __syncthreads();
  return r;
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = lane < nwarps ? scratch[lane] : -INFINITY;
  r = warp_max(r);
  __syncthreads();
  return r;
}

// atomicMax for floats via compare-and-swap (CUDA has only the integer one). Not used for
// results that must be deterministic (max is order-independent, so it would be).
__device__ __forceinline__ float atomic_max_float(float* addr, float v) {
  int* a = reinterpret_cast<int*>(addr);
  int old = *a;
  while (__int_as_float(old) < v) {
    int assumed = old;
    old = atomicCAS(a, assumed, __float_as_int(v));
    if (old == assumed) break;
  }
  return __int_as_float(old);
}
