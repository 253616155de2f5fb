// kernels/attention_mma.cuh: what the tensor-core attention kernels share (the forward in
// attention_mma.cu, dK/dV and dQ in attention_mma_backward.cu): bf16 shared-memory tiles with
// padded rows, the tile loader and the per-warp row storer, and the two warp-level products on
// mma.sync m16n8k16 (common.cuh) they are built from:
//   S += X·Yᵀ  (X: 16 rows of one tile, Y: 8·NT rows of another, both [row][K] in shared memory)
//   O += P·Y   (P: 16 × 8·KT as f32 C fragments in registers, rounded to bf16 A fragments;
//               Y: 8·KT rows × 8·NT columns of a [row][col] tile)
// A C fragment of S (16 × 8 per n-tile) lines up with the A fragment of P (FlashAttention-2's
// register reuse): n-tiles 2k and 2k+1 of S are the k-th 16-column A fragment of P.
// Neighbours: common.cuh (mma_bf16_16816, ldmatrix_b16, packs), attention_tiles.cuh (the SIMT
// kernels' tiles, ATTN_UNROLL, attn_min_start).
#pragma once
#include "attention_tiles.cuh"

// Warps per block of every tensor-core attention kernel; each owns 16 rows (query rows in the
// forward and dq, key rows in dkdv), so a block owns ATTN_MMA_ROWS rows.
#define ATTN_MMA_WARPS 4
#define ATTN_MMA_THREADS (32 * ATTN_MMA_WARPS)
#define ATTN_MMA_ROWS (16 * ATTN_MMA_WARPS)
// log2(e) and ln(2): the kernels keep scores in log2 units, so each exponential is one exp2f.
#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

// A bf16 tile of HD columns is stored [row][HD + 8]: the 16 pad bytes make the row stride
// ≡ 16 (mod 128) bytes, so the eight 16-byte rows one ldmatrix phase reads hit all 32 banks
// once, and every row start stays 16-byte aligned (ldmatrix and 16-byte copies need it).
template <int HD>
struct MmaTile {
  static constexpr int LD = HD + 8;
  static constexpr int CHUNKS = HD / 8;  // 16-byte chunks per row
};

// dst[r][c] = src[r·stride + c] (c < HD) for r < valid, zeros for valid <= r < ROWS, by every
// thread of the block: 16-byte copies when src is 16-byte aligned and stride a multiple of 8
// (always for buffers from the device allocator), else 2-byte ones. Zero rows keep the padding
// rows of a tile finite (0·NaN from stale shared memory would poison P·V).
template <int HD, int ROWS>
__device__ __forceinline__ void mma_tile_load(bf16* dst, const bf16* __restrict__ src, size_t stride, int valid) {
  typedef MmaTile<HD> T;
  const bool vec = aligned16(src) && stride % 8 == 0;
  for (int e = threadIdx.x; e < ROWS * T::CHUNKS; e += ATTN_MMA_THREADS) {
    const int r = e / T::CHUNKS, c = (e % T::CHUNKS) * 8;
    bf16* d = dst + r * T::LD + c;
    if (r >= valid) {
      *reinterpret_cast<int4*>(d) = make_int4(0, 0, 0, 0);
    } else if (vec) {
      store_pack(d, load_pack(src + (size_t)r * stride + c));
    } else {
      for (int k = 0; k < 8; ++k) d[k] = src[(size_t)r * stride + c + k];
    }
  }
}

// dst[r·stride + c] = src[r][c] for the calling warp's rows r < rows (at most 16) of a
// [row][HD + 8] tile; 16-byte stores when dst and stride allow, else 2-byte ones.
template <int HD>
__device__ __forceinline__ void mma_rows_store(bf16* __restrict__ dst, size_t stride, const bf16* src, int rows) {
  typedef MmaTile<HD> T;
  const bool vec = aligned16(dst) && stride % 8 == 0;
  for (int e = threadIdx.x % 32; e < rows * T::CHUNKS; e += 32) {
    const int r = e / T::CHUNKS, c = (e % T::CHUNKS) * 8;
    const bf16* s = src + r * T::LD + c;
    if (vec) {
      store_pack(dst + (size_t)r * stride + c, load_pack(s));
    } else {
      for (int k = 0; k < 8; ++k) dst[(size_t)r * stride + c + k] = s[k];
    }
  }
}

// The warp's C fragments acc (16 × 8·NT, f32) into its 16 rows of a [row][LD] bf16 tile at
// `tile`, row g scaled by f0 and row g + 8 by f1 (lane = 4g + t writes columns 2t, 2t+1 of each
// n-tile). The caller __syncwarp()s before other lanes read the rows.
template <int LD, int NT>
__device__ __forceinline__ void mma_acc_to_tile(bf16* tile, const float (&acc)[NT][4], float f0, float f1) {
  const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
  ATTN_UNROLL
  for (int nt = 0; nt < NT; ++nt) {
    *reinterpret_cast<uint32_t*>(tile + g * LD + nt * 8 + 2 * t) = pack_bf16x2(acc[nt][0] * f0, acc[nt][1] * f0);
    *reinterpret_cast<uint32_t*>(tile + (g + 8) * LD + nt * 8 + 2 * t) = pack_bf16x2(acc[nt][2] * f1, acc[nt][3] * f1);
  }
}

// acc[nt] += X·Yᵀ for one warp: X = the 16 rows at x, Y = the 8·NT rows at y, both [row][LD]
// bf16 tiles with K columns: acc[nt] element (i, j) += Σ_k x[i][k]·y[8·nt + j][k].
// Per 16-column k-step (in order): one ldmatrix.x4 for the A fragment of X, one per two
// n-tiles for the B fragments (Y stored [n][k] is Bᵀ: no .trans), one mma per n-tile.
template <int K, int NT, int LD>
__device__ __forceinline__ void mma_xyT(float (&acc)[NT][4], const bf16* x, const bf16* y) {
  static_assert(K % 16 == 0 && NT % 2 == 0, "k-steps of 16, n-tiles in pairs");
  const int lane = threadIdx.x % 32, r = lane % 8, j = lane / 8;
  ATTN_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    // matrices: rows 0-7 | 8-15 × columns k0 | k0 + 8 (a[0] … a[3])
    ldmatrix_b16<4, false>(a, x + (r + 8 * (j & 1)) * LD + kk * 16 + 8 * (j >> 1));
    ATTN_UNROLL
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      // matrices: n-tile nt | nt + 1 × columns k0 | k0 + 8 (b[0], b[1] of nt; b[2], b[3] of nt + 1)
      ldmatrix_b16<4, false>(b, y + (nt * 8 + r + 8 * (j >> 1)) * LD + kk * 16 + 8 * (j & 1));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_bf16_16816(acc[nt], a, b0);
      mma_bf16_16816(acc[nt + 1], a, b1);
    }
  }
}

// acc[nt] += P·Y for one warp: P = 16 × 8·KT given as C fragments p (f32, rounded to bf16
// here), Y = the 8·KT rows at y of a [row][LD] bf16 tile, columns 0 … 8·NT − 1:
// acc[nt] element (i, j) += Σ_k bf16(p)[i][k]·y[k][8·nt + j], k-steps of 16 in order.
// B fragments by ldmatrix.x4.trans (Y is stored [k][n]), one per two n-tiles.
template <int KT, int NT, int LD>
__device__ __forceinline__ void mma_pY(float (&acc)[NT][4], const float (&p)[KT][4], const bf16* y) {
  static_assert(KT % 2 == 0 && NT % 2 == 0, "k-steps of 16, n-tiles in pairs");
  const int lane = threadIdx.x % 32, r = lane % 8, j = lane / 8;
  ATTN_UNROLL
  for (int kk = 0; kk < KT / 2; ++kk) {
    const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    ATTN_UNROLL
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t b[4];
      // matrices: rows k0 … k0+7 | k0+8 … k0+15 × columns of n-tile nt | nt + 1
      ldmatrix_b16<4, true>(b, y + (kk * 16 + r + 8 * (j & 1)) * LD + nt * 8 + 8 * (j >> 1));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_bf16_16816(acc[nt], a, b0);
      mma_bf16_16816(acc[nt + 1], a, b1);
    }
  }
}

// Warp-wide min / max of an int (fixed butterfly).
__device__ __forceinline__ int warp_min_int(int v) {
  for (int o = 16; o > 0; o >>= 1) {
    const int w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w < v ? w : v;
  }
  return v;
}
__device__ __forceinline__ int warp_max_int(int v) {
  for (int o = 16; o > 0; o >>= 1) {
    const int w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// The query side of a block that owns ATTN_MMA_ROWS query rows (the forward and dq): query
// rows q0 … q0 + qn − 1 (in-row) of batch row blockIdx.y (its first token row0), query head h
// = blockIdx.z of kv head g, the token strides qw and kw of q and k; this lane's two fragment
// rows r0 = q0 + 16·warp + g and r1 = r0 + 8 with their sample starts (INT_MAX for rows past
// seq: they see no key), the warp's smallest and largest start and last existing row, and the
// block's smallest start (where its key tiles begin). Every thread of the block constructs it.
struct MmaQueryRows {
  int q0, qn, h, g, w0, r0, r1, st0, st1, wmin, wmax, wlast, smin;
  size_t row0, qw, kw;
  __device__ __forceinline__ MmaQueryRows(const int* __restrict__ starts, int seq, int heads, int kv_heads,
                                          int hd) {
    q0 = blockIdx.x * ATTN_MMA_ROWS;
    qn = seq - q0 < ATTN_MMA_ROWS ? seq - q0 : ATTN_MMA_ROWS;
    h = blockIdx.z;
    g = h / (heads / kv_heads);
    row0 = (size_t)blockIdx.y * seq;
    qw = (size_t)heads * hd;
    kw = (size_t)kv_heads * hd;
    const int* st = starts + row0;
    w0 = q0 + 16 * (int)(threadIdx.x / 32);
    r0 = w0 + (int)(threadIdx.x % 32) / 4;
    r1 = r0 + 8;
    st0 = r0 < seq ? st[r0] : 0x7fffffff;
    st1 = r1 < seq ? st[r1] : 0x7fffffff;
    wmin = warp_min_int(st0 < st1 ? st0 : st1);
    wmax = warp_max_int(st0 > st1 ? st0 : st1);
    wlast = w0 + 15 < seq - 1 ? w0 + 15 : seq - 1;
    smin = attn_min_start(st + q0, qn);
  }
  // No row of this warp sees a key of the tile [k0, k0 + bk) (warp-uniform).
  __device__ __forceinline__ bool skips(int k0, int bk) const { return k0 > wlast || k0 + bk - 1 < wmin; }
  // Some entry of the tile is masked: a key after a row, or before a row's start.
  __device__ __forceinline__ bool masks(int k0, int bk) const { return k0 + bk - 1 > w0 || k0 < wmax; }
  // Row r0 (lo) or r1 sees key kj (causal, within its sample).
  __device__ __forceinline__ bool sees(int kj, bool lo) const {
    return kj <= (lo ? r0 : r1) && kj >= (lo ? st0 : st1);
  }
};

// The number of rows of a warp's 16 that exist: clamp(valid − 16·warp, 0, 16).
__device__ __forceinline__ int mma_warp_rows(int valid, int warp) {
  const int r = valid - 16 * warp;
  return r < 0 ? 0 : (r < 16 ? r : 16);
}

// Max and sum over the four lanes (t = 0 … 3) that share a fragment row (xor 1, then 2).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
