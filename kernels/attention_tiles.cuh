// kernels/attention_tiles.cuh: the shared-memory tiles of the tiled attention kernels (the
// forward in attention.cu, the backward's dkdv and dq in attention_backward.cu): the layout,
// the tile loader and the block size they share. Neighbours: common.cuh (conversions).
#pragma once
#include "common.cuh"

// Full unrolling of the loops over a thread's accumulators, so they stay in registers (g++,
// for the emulator, does not know the pragma).
#if defined(__CUDACC__)
#define ATTN_UNROLL _Pragma("unroll")
#else
#define ATTN_UNROLL
#endif

// Threads per block of the tiled attention kernels.
#define ATTN_TILE_THREADS 128

// One layout for every tiled attention kernel (offsets in 4-byte words of the dynamic shared
// memory):
//   K, V [BK][HD+1], Q, dO [BQ][HD+1] (fp32; rows padded by one word so a warp reading 32
//   rows at one column hits 32 banks), P, dS [BQ][BK+1] fp32, L, D [BQ] fp32,
//   ST (sample starts) [BQ] int32. The forward uses P for the scores/probabilities, L and D for
//   the running max and sum, the first BQ words of dS for the rescale factors; dO is unused.
// Bytes = 4·((2·BK + 2·BQ)·(HD+1) + 2·BQ·(BK+1) + 3·BQ); engine/src/backend/kernel/attn_tiles.rs
// computes the same. Tiles per head_dim (BQ×BK): 32 and 64 → 32×32 (≤ 42 KiB), 128 → 16×16
// (35 KiB), under the 48 KiB every launch gets without opting in.
template <int HD, int BQ, int BK>
struct AttnTiles {
  static constexpr int LD = HD + 1, LS = BK + 1;
  static constexpr int K = 0, V = K + BK * LD, Q = V + BK * LD, DO = Q + BQ * LD, P = DO + BQ * LD,
                       DS = P + BQ * LS, L = DS + BQ * LS, D = L + BQ, ST = D + BQ, WORDS = ST + BQ;
};

// dst[r][d] = src[r·stride + d] as fp32 for r < rows_valid, 0 for the rows after (ROWS total).
// Consecutive threads read consecutive d (coalesced within a row).
template <class T, int HD, int ROWS>
__device__ __forceinline__ void attn_load_tile(float* dst, const T* __restrict__ src, size_t stride,
                                               int rows_valid) {
  for (int e = threadIdx.x; e < ROWS * HD; e += ATTN_TILE_THREADS) {
    const int r = e / HD, d = e % HD;
    dst[r * (HD + 1) + d] = r < rows_valid ? to_f32(src[(size_t)r * stride + d]) : 0.f;
  }
}

// The smallest of starts[0 … count−1] (INT_MAX when count is 0); every thread computes it.
__device__ __forceinline__ int attn_min_start(const int* __restrict__ starts, int count) {
  int smin = 0x7fffffff;
  for (int i = 0; i < count; ++i) {
    const int s = starts[i];
    smin = s < smin ? s : smin;
  }
  return smin;
}
