// kernels/emu/emu.h: a CPU emulation of the CUDA execution model, so that the very same
// kernels/*.cu sources compile with g++ and run in tests (see README.md beside this file).
//
// Model: one launch at a time (a global mutex); blocks run one after another; the threads of a
// block are user-level fibers (ucontext) on the calling OS thread, scheduled round-robin, each
// running until it reaches a barrier (__syncthreads, or the implicit warp barrier inside a
// shuffle/vote) or returns. A block barrier opens when every live (not yet returned) thread of
// the block waits at the same __syncthreads call site; a warp barrier when every live lane of
// the warp waits at one. Anything else (divergent barriers, a shuffle whose mask is not the
// set of live lanes, reading a lane outside the mask) is reported as a launch error instead of
// hanging. Neighbours: emu.cpp (scheduler, launch), launchers.cpp (extern "C" entry points).
#pragma once

#include <cmath>
#include <math.h>  // expf, logf, sqrtf, fmaxf... in the global namespace, as CUDA has them
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// ---- CUDA keywords -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one copy per kernel, valid because blocks never overlap and launches
// are serialised. Not poisoned between blocks (dynamic shared memory is: see DYN_SMEM).
#define __shared__ static
#define EMU_CUDA 1

// ---- built-in vector types -----------------------------------------------------------------
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- per-thread state and the scheduler interface (emu.cpp) ---------------------------------
namespace emu {

struct ThreadState {
  uint3 tid;          // threadIdx
  unsigned linear;    // x + y*bx + z*bx*by
  unsigned lane;      // linear % 32
  unsigned warp;      // linear / 32
};

struct BlockState {
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned char* dyn_smem;
  size_t dyn_smem_bytes;
};

extern thread_local ThreadState* cur_thread;
extern thread_local BlockState* cur_block;

// Block barrier; `site` identifies the call site so divergent barriers are caught.
void syncthreads(const char* file, int line);
// Warp barrier among the lanes of `mask`, which must be exactly the live lanes of the warp.
void warp_barrier(unsigned mask, const char* what);
// Per-warp 8-byte exchange slots of the current warp.
uint64_t* warp_slots();
// Reports an error for the current launch and ends the calling CUDA thread's block.
[[noreturn]] void fail(const char* fmt, ...);
// Mask of lanes of the current warp that exist (partial last warp) and have not returned.
unsigned live_mask();

template <class T>
inline uint64_t to_slot(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t s = 0;
  std::memcpy(&s, &v, sizeof(T));
  return s;
}
template <class T>
inline T from_slot(uint64_t s) {
  T v;
  std::memcpy(&v, &s, sizeof(T));
  return v;
}

// The shuffle core: every lane publishes `v`, then reads lane `src(lane)`; a lane whose source
// is out of its segment keeps its own value (PTX shfl.sync semantics).
template <class T, class F>
inline T shuffle(unsigned mask, T v, F src_of, const char* what) {
  uint64_t* slots = warp_slots();
  unsigned lane = cur_thread->lane;
  slots[lane] = to_slot(v);
  warp_barrier(mask, what);
  int src = src_of(lane);
  T r = v;
  if (src >= 0) {
    if (!((mask >> src) & 1u)) fail("%s: lane %u reads lane %d outside mask 0x%08x", what, lane, src, mask);
    r = from_slot<T>(slots[src]);
  }
  warp_barrier(mask, what);
  return r;
}

// Runs `body` (a call of one kernel) on every thread of every block; 0 on success, else the
// error is available from emu_last_error().
int launch(dim3 grid, dim3 block, size_t dyn_smem_bytes, const std::function<void()>& body);

// Tensor-core warp collectives (emu.cpp); every lane of a full warp must call them, else the
// launch fails. common.cuh wraps them (mma_bf16_16816, ldmatrix_b16) and documents the layouts.
// acc += A·B for mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: gathers the 32 lanes' A
// (4 regs) and B (2 regs) fragments, rebuilds the 16×16 and 16×8 matrices and gives each lane
// its four C/D elements, each summed in f32 as acc + a0·b0 + a1·b1 + … + a15·b15 (k in order;
// the products of bf16 values are exact in f32).
void mma_m16n8k16_bf16(float acc[4], const uint32_t a[4], const uint32_t b[2]);
// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lane l gives the 16-byte-aligned address
// of row l%8 of matrix l/8 in the launch's dynamic shared memory (lanes >= 8·num are ignored);
// register j of lane 4g+t gets row g, columns 2t and 2t+1 of matrix j (low half first), or with
// `trans` column g, rows 2t and 2t+1.
void ldmatrix_m8n8(uint32_t* r, int num, bool trans, const void* row);

}  // namespace emu

#define threadIdx (emu::cur_thread->tid)
#define blockIdx (emu::cur_block->block_idx)
#define blockDim (emu::cur_block->block_dim)
#define gridDim (emu::cur_block->grid_dim)
#define warpSize 32
#define __syncthreads() emu::syncthreads(__FILE__, __LINE__)

// Dynamic shared memory: `DYN_SMEM(T, name)` declares `T* name` at the launch's shared arena
// (128-byte aligned, filled with 0xFF before each block so unwritten reads show as NaN).
#define DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::cur_block->dyn_smem)

// ---- warp collectives ----------------------------------------------------------------------
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask, "__syncwarp"); }

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return emu::shuffle(
      mask, v,
      [&](unsigned lane) { return int((lane & ~unsigned(width - 1)) + unsigned(src_lane & (width - 1))); },
      "__shfl_sync");
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::shuffle(
      mask, v,
      [&](unsigned lane) {
        unsigned src = lane ^ unsigned(lane_mask);
        return (src / unsigned(width)) == (lane / unsigned(width)) && src < 32 ? int(src) : -1;
      },
      "__shfl_xor_sync");
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle(
      mask, v,
      [&](unsigned lane) { return (lane % unsigned(width)) + delta < unsigned(width) ? int(lane + delta) : -1; },
      "__shfl_down_sync");
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle(
      mask, v, [&](unsigned lane) { return (lane % unsigned(width)) >= delta ? int(lane - delta) : -1; },
      "__shfl_up_sync");
}

namespace emu {
// Every lane of `mask` publishes a word; returns the 32 slots (lanes outside mask read 0).
template <class F>
inline unsigned vote(unsigned mask, uint64_t word, F combine, const char* what) {
  uint64_t* slots = warp_slots();
  slots[cur_thread->lane] = word;
  warp_barrier(mask, what);
  unsigned r = combine(slots);
  warp_barrier(mask, what);
  return r;
}
}  // namespace emu

inline unsigned __ballot_sync(unsigned mask, int pred) {
  return emu::vote(mask, pred != 0, [&](const uint64_t* s) {
    unsigned b = 0;
    for (unsigned l = 0; l < 32; ++l) if (((mask >> l) & 1u) && s[l]) b |= 1u << l;
    return b;
  }, "__ballot_sync");
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

#define EMU_WARP_REDUCE(NAME, T, INIT, OP)                                                  \
  inline T NAME(unsigned mask, T v) {                                                       \
    return T(emu::vote(mask, uint64_t(v), [&](const uint64_t* s) {                          \
      T acc = INIT;                                                                         \
      for (unsigned l = 0; l < 32; ++l) if ((mask >> l) & 1u) { T x = T(s[l]); acc = OP; } \
      return unsigned(acc);                                                                 \
    }, #NAME));                                                                             \
  }
EMU_WARP_REDUCE(__reduce_add_sync, unsigned, 0u, acc + x)
EMU_WARP_REDUCE(__reduce_max_sync, unsigned, 0u, (x > acc ? x : acc))
EMU_WARP_REDUCE(__reduce_min_sync, unsigned, 0xffffffffu, (x < acc ? x : acc))
inline int __reduce_add_sync(unsigned mask, int v) { return int(__reduce_add_sync(mask, unsigned(v))); }
#undef EMU_WARP_REDUCE

// ---- atomics (one launch at a time on one OS thread: plain read-modify-write is atomic) ------
inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline int atomicMax(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }
inline unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; if (v > o) *p = v; return o; }
inline int atomicMin(int* p, int v) { int o = *p; if (v < o) *p = v; return o; }
inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { unsigned o = *p; if (o == cmp) *p = v; return o; }
inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
inline float atomicExch(float* p, float v) { float o = *p; *p = v; return o; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- float intrinsics (std:: maths; the GPU's fast variants differ within their ULP bounds) --
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
// IEEE round-to-nearest arithmetic that nvcc never contracts into an FMA (the kernels use
// them where a result must match the CPU backend bit for bit).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// ---- bf16 / fp16 storage types ----------------------------------------------------------------
// Storage only: arithmetic operators are deliberately absent, so kernels convert explicitly.
struct __nv_bfloat16 {
  uint16_t x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
// float -> bf16, round to nearest even; NaN -> 0x7FFF (as cuda_bf16.hpp does).
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = __float_as_uint(f);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.x = 0x7fff;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    r.x = uint16_t(u >> 16);
  }
  return r;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(uint32_t(b.x) << 16); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__bfloat162float(b.x), __bfloat162float(b.y)}; }
inline float __low2float(__nv_bfloat162 b) { return __bfloat162float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return __bfloat162float(b.y); }

struct __half {
  uint16_t x;
};
// float -> fp16 round to nearest even via the compiler's _Float16 (IEEE binary16, RNE).
inline __half __float2half_rn(float f) {
  _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.x, &h, 2);
  return r;
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.x, 2);
  return static_cast<float>(v);
}
