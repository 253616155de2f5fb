// kernels/attention_mma.cu: causal GQA attention forward with packed samples on tensor cores
// (mma.sync m16n8k16, bf16 operands, f32 accumulation), FlashAttention-2 style, for bf16
// storage and head_dim 64 and 128. The same contract as attention_forward_tiled_hd{64,128}
// in attention.cu (the CUDA-core kernels, which the f32 mode keeps); the backward is
// attention_mma_backward.cu. Neighbours: attention_mma.cuh (tiles, warp products),
// common.cuh (the mma and ldmatrix wrappers).
#include "attention_mma.cuh"

// For token t of `n = batch·seq` (row r = t / seq), query head h, kv head g = h / (heads /
// kv_heads), keys j in [r·seq + starts[t], t] (causal, within t's packed sample):
//   s_j = (q[t, h, :] · k[j, g, :]) · scale,  lse[t, h] = log Σ_j exp(s_j)
//   out[t, h, :] = Σ_j exp(s_j − lse) · v[j, g, :]
// Layouts: q, out [n, heads·HD]; k, v [n, kv_heads·HD] bf16; starts [n] int32 (in-row index of
// the first token of t's sample, <= t's own index: never an empty key range); lse [n, heads]
// f32. HD ∈ {64, 128}, BK key rows per tile (64 for hd 64, 32 for hd 128).
// Launch: grid (ceil(seq/64), batch, heads), block (ATTN_MMA_THREADS = 128), dynamic shared
// memory (64 + 2·BK)·(HD + 8)·2 bytes: the Q tile (64 query rows), then K and V tiles (BK rows),
// bf16 [row][HD + 8]. Warp w owns query rows q0 + 16w … q0 + 16w + 15.
// Per key tile k0 = ⌊min start/BK⌋·BK, …, up to the block's last query (loaded by the whole
// block), each warp whose rows see a key of the tile computes, in registers:
//   S = Q·Kᵀ by mma (16 × BK, f32 C fragments), x = S·scale·log2(e), masked entries −∞;
//   m' = max(m, rowmax x); P = exp2(x − m'); l = l·exp2(m − m') + rowsum P;
//   O = O·exp2(m − m') + bf16(P)·V by mma (16 × HD f32 C fragments);
// then out = O / l (through the warp's own Q rows in shared memory, 16-byte stores) and
// lse = m·ln 2 + log l. P is rounded to bf16 only as the mma operand; l sums it in f32.
// Accumulation: fp32 (mma C fragments, per-lane partial row sums). Deterministic: fixed key-tile
// order, fixed k order inside each mma chain, fixed quad butterflies; no atomics.
template <int HD, int BK>
__device__ void attention_forward_mma_impl(bf16* __restrict__ out, float* __restrict__ lse,
                                           const bf16* __restrict__ q, const bf16* __restrict__ k,
                                           const bf16* __restrict__ v, const int* __restrict__ starts, int seq,
                                           int heads, int kv_heads, float scale) {
  typedef MmaTile<HD> T;
  constexpr int BQ = ATTN_MMA_ROWS, LD = T::LD, NT = BK / 8, DT = HD / 8;
  DYN_SMEM(bf16, qs);
  bf16* ks = qs + BQ * LD;
  bf16* vs = ks + BK * LD;
  const MmaQueryRows rows(starts, seq, heads, kv_heads, HD);
  const int q0 = rows.q0, qn = rows.qn, h = rows.h, g = rows.g;
  const size_t row0 = rows.row0, qw = rows.qw, kw = rows.kw;
  const int warp = threadIdx.x / 32, tq = threadIdx.x % 4;
  mma_tile_load<HD, BQ>(qs, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  const float c = scale * ATTN_LOG2E;
  float o[DT][4];
  ATTN_UNROLL
  for (int d = 0; d < DT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  for (int k0 = rows.smin / BK * BK; k0 < q0 + qn; k0 += BK) {
    const int kn = seq - k0 < BK ? seq - k0 : BK;
    __syncthreads();  // Q loaded; the previous tile's readers are done
    mma_tile_load<HD, BK>(ks, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    mma_tile_load<HD, BK>(vs, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    __syncthreads();
    if (rows.skips(k0, BK)) continue;
    float s[NT][4];
    ATTN_UNROLL
    for (int j = 0; j < NT; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    mma_xyT<HD, NT, LD>(s, qs + 16 * warp * LD, ks);
    const bool masked = rows.masks(k0, BK);  // else every entry is seen
    float mx0 = m0, mx1 = m1;
    ATTN_UNROLL
    for (int j = 0; j < NT; ++j) {
      ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const bool lo = e < 2;
        float x = s[j][e] * c;
        if (masked && !rows.sees(k0 + 8 * j + 2 * tq + (e & 1), lo)) x = -INFINITY;
        s[j][e] = x;
        if (lo) mx0 = fmaxf(mx0, x);
        else mx1 = fmaxf(mx1, x);
      }
    }
    mx0 = quad_max(mx0);
    mx1 = quad_max(mx1);
    // Until a row has seen a key its max is −∞: shift by 0 instead, so every exp2 is of −∞ (0).
    const float b0 = mx0 == -INFINITY ? 0.f : mx0, b1 = mx1 == -INFINITY ? 0.f : mx1;
    const float cf0 = exp2f(m0 - b0), cf1 = exp2f(m1 - b1);  // 0 while m was −∞
    m0 = mx0;
    m1 = mx1;
    float sum0 = 0.f, sum1 = 0.f;
    ATTN_UNROLL
    for (int j = 0; j < NT; ++j) {
      s[j][0] = exp2f(s[j][0] - b0);
      s[j][1] = exp2f(s[j][1] - b0);
      s[j][2] = exp2f(s[j][2] - b1);
      s[j][3] = exp2f(s[j][3] - b1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
    l0 = l0 * cf0 + sum0;
    l1 = l1 * cf1 + sum1;
    ATTN_UNROLL
    for (int d = 0; d < DT; ++d) {
      o[d][0] *= cf0;
      o[d][1] *= cf0;
      o[d][2] *= cf1;
      o[d][3] *= cf1;
    }
    mma_pY<NT, DT, LD>(o, s, vs);
  }
  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  __syncthreads();  // every load of the block is done before a warp reuses its rows
  // out through the warp's own Q rows (only this warp reads them).
  bf16* mine = qs + 16 * warp * LD;
  mma_acc_to_tile<LD, DT>(mine, o, 1.f / l0, 1.f / l1);
  __syncwarp();
  mma_rows_store<HD>(out + (row0 + rows.w0) * qw + (size_t)h * HD, qw, mine, mma_warp_rows(qn, warp));
  if (tq == 0) {
    if (rows.r0 < seq) lse[(row0 + rows.r0) * heads + h] = l0 > 0.f ? m0 * ATTN_LN2 + logf(l0) : NAN;
    if (rows.r1 < seq) lse[(row0 + rows.r1) * heads + h] = l1 > 0.f ? m1 * ATTN_LN2 + logf(l1) : NAN;
  }
}

// Instantiations (HD, BK); engine/src/backend/kernel/attn_tiles.rs repeats the table (a test
// checks).
#define ATTENTION_FORWARD_MMA(HD, BK)                                                                     \
  extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS)                                         \
      attention_forward_mma_hd##HD##_bf16(bf16* out, float* lse, const bf16* q, const bf16* k,           \
                                          const bf16* v, const int* starts, int seq, int heads,          \
                                          int kv_heads, float scale) {                                   \
    attention_forward_mma_impl<HD, BK>(out, lse, q, k, v, starts, seq, heads, kv_heads, scale);          \
  }
ATTENTION_FORWARD_MMA(64, 64)
ATTENTION_FORWARD_MMA(128, 32)
