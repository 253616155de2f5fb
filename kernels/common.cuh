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

// ---- tensor cores (sm_80 and later) ----------------------------------------------------------
// acc += A·B on one warp: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32. Fragments (PTX
// ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), lane = 4g + t, two bf16
// per register with the lower column (A) or row (B) in the low half:
//   A 16×16: a[0] row g, columns 2t, 2t+1; a[1] row g+8, the same columns; a[2] row g, columns
//            2t+8, 2t+9; a[3] row g+8, columns 2t+8, 2t+9.
//   B 16×8:  b[0] rows 2t, 2t+1 of column g; b[1] rows 2t+8, 2t+9 of column g.
//   C/D 16×8 (f32): acc[0], acc[1] row g, columns 2t, 2t+1; acc[2], acc[3] row g+8.
// Every lane of the warp calls it together. The sum order inside is the hardware's (the
// emulator: acc + Σ_k in k order, in f32).
__device__ __forceinline__ void mma_bf16_16816(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__)
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  emu::mma_m16n8k16_bf16(acc, a, b);
#endif
}

// N (1, 2 or 4) 8×8 bf16 matrices from shared memory into registers, one warp together:
// ldmatrix.sync.aligned.m8n8.xN[.trans].shared.b16. Lane l passes the 16-byte-aligned address of
// row l%8 of matrix l/8 (lanes >= 8N pass anything). Register j of lane 4g + t holds matrix
// j's row g, columns 2t and 2t+1 (low half first), or with TRANS its column g, rows 2t and 2t+1
// — the A/B fragment pieces of mma_bf16_16816 (TRANS for a B stored row-major as [k][n]).
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix_b16(uint32_t (&r)[N], const bf16* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDACC__)
  const unsigned p = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (N == 4 && TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(p));
  } else if constexpr (N == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(p));
  } else if constexpr (N == 2 && TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(p));
  } else if constexpr (N == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(p));
  } else if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(p));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(p));
  }
#else
  emu::ldmatrix_m8n8(r, N, TRANS, row);
#endif
}

// Two floats as one register of two bf16 (round to nearest even; `lo` in the low half).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
