// kernels/attention_backward.cu: the backward of causal GQA attention with packed samples
// (the forward is attention.cu, which saves the per-row log-sum-exp). Three kernels, run in
// this order by the launcher (engine/src/backend/kernel/attention.rs):
//   1. attention_backward_dot:  D[t, h] = Σ_d dout[t, h, d]·out[t, h, d]
//   2. attention_backward_dkdv: dK, dV of one key tile of one kv head (all its query heads)
//   3. attention_backward_dq:   dQ of one query tile of one query head
// The probabilities are recomputed from q, k and the saved lse, P_ij = exp(scale·q_i·k_j −
// lse_i); no [T, T] matrix ever reaches global memory. With dP_ij = dout_i·v_j and
// dS_ij = P_ij·(dP_ij − D_i):
//   dv_j = Σ_i P_ij·dout_i,  dk_j = scale·Σ_i dS_ij·q_i,  dq_i = scale·Σ_j dS_ij·k_j,
// where dk, dv also sum over the query heads h of kv head g = h / (heads / kv_heads).
// Token i (in-row index) sees keys j of its row with starts[i] <= j <= i — the CPU backend's
// packed-sample rule (engine/src/backend/cpu/attention.rs), so attention never crosses samples.
// Deterministic: every output element is written by exactly one thread, which sums in a fixed
// order (query heads of the group in head order, query tiles in order, rows in order); no
// atomics anywhere. CUDA cores only (fp32 FMA on shared-memory tiles): the f32 mode's kernels,
// and bf16's for hd 32; bf16 with hd 64 or 128 takes the tensor-core dkdv and dq of
// attention_mma_backward.cu (after this file's dot kernel).
// Neighbours: attention.cu (forward), attention_tiles.cuh (the shared-memory tiles both use),
// attention_mma_backward.cu (the tensor-core dkdv and dq), common.cuh (conversions, warp
// reductions).
#include "attention_tiles.cuh"

// Warps (token × head pairs) per block of attention_backward_dot.
#define ATTN_BWD_DOT_WARPS 4

// D[t, h] = Σ_d dout[t, h·hd + d] · out[t, h·hd + d]  (the softmax backward's row term).
// Layouts: dout, out [n, heads·hd] in T; dsum [n, heads] f32. Any hd.
// Launch: grid (ceil(n·heads / ATTN_BWD_DOT_WARPS)), block (32·ATTN_BWD_DOT_WARPS), no shared
// memory; one warp per (token, head).
// Accumulation: fp32, lane l summing d = l, l+32, … in order, then warp_sum (fixed butterfly).
// Deterministic: the order depends on hd only.
template <class T>
__device__ void attention_backward_dot_impl(float* __restrict__ dsum, const T* __restrict__ dout,
                                            const T* __restrict__ out, int n, int heads, int hd) {
  const int lane = threadIdx.x % 32;
  const int gw = blockIdx.x * ATTN_BWD_DOT_WARPS + threadIdx.x / 32;
  if (gw >= n * heads) return;  // the whole warp leaves together
  const size_t base = (size_t)gw * hd;  // (t·heads + h)·hd = t·heads·hd + h·hd
  float s = 0.f;
  for (int d = lane; d < hd; d += 32) s += to_f32(dout[base + d]) * to_f32(out[base + d]);
  s = warp_sum(s);
  if (lane == 0) dsum[gw] = s;
}

// L, D and ST of query rows q0 … q0+BQ−1 of the row starting at token `row0`, head h; rows past
// `qn` get L = D = 0 and ST = INT_MAX (they see no key).
template <int HD, int BQ, int BK>
__device__ __forceinline__ void attn_bwd_load_rows(float* sm, const float* __restrict__ lse,
                                                   const float* __restrict__ dsum, const int* __restrict__ starts,
                                                   size_t row0, int q0, int qn, int heads, int h) {
  typedef AttnTiles<HD, BQ, BK> L;
  int* st = reinterpret_cast<int*>(sm + L::ST);
  for (int i = threadIdx.x; i < BQ; i += ATTN_TILE_THREADS) {
    const size_t t = row0 + q0 + i;
    sm[L::L + i] = i < qn ? lse[t * heads + h] : 0.f;
    sm[L::D + i] = i < qn ? dsum[t * heads + h] : 0.f;
    st[i] = i < qn ? starts[t] : 0x7fffffff;
  }
}

// P and dS of the tile pair (queries q0 + i, keys k0 + j; in-row indices) from the Q, dO, K, V,
// L, D, ST tiles: P_ij = exp(scale·q_i·k_j − L_i) and dS_ij = P_ij·(dout_i·v_j − D_i) where
// ST_i <= k0 + j <= q0 + i, else 0. Thread tid computes entries tid, tid + THREADS, … (row-major
// i, j); each dot runs over d = 0 … HD−1 in order.
template <int HD, int BQ, int BK>
__device__ __forceinline__ void attn_bwd_scores(float* sm, int q0, int k0, float scale) {
  typedef AttnTiles<HD, BQ, BK> L;
  static_assert((BQ * BK) % ATTN_TILE_THREADS == 0, "tile entries must split evenly over the block");
  const int* st = reinterpret_cast<const int*>(sm + L::ST);
  for (int c = 0; c < BQ * BK / ATTN_TILE_THREADS; ++c) {
    const int e = threadIdx.x + ATTN_TILE_THREADS * c;
    const int i = e / BK, j = e % BK;
    const int qi = q0 + i, kj = k0 + j;
    float p = 0.f, ds = 0.f;
    if (kj <= qi && kj >= st[i]) {
      const float* qr = sm + L::Q + i * L::LD;
      const float* dor = sm + L::DO + i * L::LD;
      const float* kr = sm + L::K + j * L::LD;
      const float* vr = sm + L::V + j * L::LD;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < HD; ++d) {
        s += qr[d] * kr[d];
        dp += dor[d] * vr[d];
      }
      p = expf(s * scale - sm[L::L + i]);
      ds = p * (dp - sm[L::D + i]);
    }
    sm[L::P + i * L::LS + j] = p;
    sm[L::DS + i * L::LS + j] = ds;
  }
}

// dK, dV for keys k0 … k0+BK−1 (in-row) of batch row blockIdx.y and kv head blockIdx.z:
//   dv_j = Σ_{h in group} Σ_i P_ij·dout_i,  dk_j = scale·Σ_{h in group} Σ_i dS_ij·q_i.
// Layouts: q, dout [n, heads·HD], k, v, dk, dv [n, kv_heads·HD] in T; lse, dsum [n, heads] f32;
// starts [n] int32 (in-row index of the first token of each token's sample), n = batch·seq.
// Launch: grid (ceil(seq/BK), batch, kv_heads), block (ATTN_TILE_THREADS), dynamic shared memory
// AttnTiles<HD, BQ, BK>::WORDS·4 bytes. K, V stay in shared memory; the block walks the
// group's query heads in order and, per head, the query tiles q0 = ⌊k0/BQ⌋·BQ, … in order,
// skipping tiles where no query sees a key of the tile (min start > last key).
// Accumulation: fp32 registers, thread tid owning column d = tid % HD of
// key rows j = tid / HD + (THREADS/HD)·c (HD must divide THREADS: 32, 64, 128).
// Deterministic: one thread per output element, fixed loop order, no atomics.
template <class T, int HD, int BQ, int BK>
__device__ void attention_backward_dkdv_impl(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ q,
                                             const T* __restrict__ k, const T* __restrict__ v,
                                             const T* __restrict__ dout, const float* __restrict__ lse,
                                             const float* __restrict__ dsum, const int* __restrict__ starts, int seq,
                                             int heads, int kv_heads, float scale) {
  typedef AttnTiles<HD, BQ, BK> L;
  static_assert((BK * HD) % ATTN_TILE_THREADS == 0, "key tile must split evenly over the block");
  constexpr int PER = BK * HD / ATTN_TILE_THREADS, RSTEP = ATTN_TILE_THREADS / HD;
  static_assert(ATTN_TILE_THREADS % HD == 0, "a thread keeps one column d of its key rows");
  const int d = threadIdx.x % HD, r0 = threadIdx.x / HD;  // this thread: rows r0 + RSTEP·c
  DYN_SMEM(float, sm);
  const int k0 = blockIdx.x * BK, g = blockIdx.z;
  const size_t row0 = (size_t)blockIdx.y * seq;
  const int group = heads / kv_heads;
  const size_t qw = (size_t)heads * HD, kw = (size_t)kv_heads * HD;
  const int kn = seq - k0 < BK ? seq - k0 : BK;
  const int k_last = k0 + kn - 1;
  attn_load_tile<T, HD, BK>(sm + L::K, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
  attn_load_tile<T, HD, BK>(sm + L::V, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
  float dka[PER], dva[PER];
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) dka[c] = dva[c] = 0.f;
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int q0 = k0 / BQ * BQ; q0 < seq; q0 += BQ) {
      const int qn = seq - q0 < BQ ? seq - q0 : BQ;
      const int smin = attn_min_start(starts + row0 + q0, qn);
      if (smin > k_last) continue;  // block-uniform: every thread computed the same smin
      __syncthreads();              // K, V loaded; the previous tile's readers are done
      attn_load_tile<T, HD, BQ>(sm + L::Q, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
      attn_load_tile<T, HD, BQ>(sm + L::DO, dout + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
      attn_bwd_load_rows<HD, BQ, BK>(sm, lse, dsum, starts, row0, q0, qn, heads, h);
      __syncthreads();
      attn_bwd_scores<HD, BQ, BK>(sm, q0, k0, scale);
      __syncthreads();
      for (int i = 0; i < BQ; ++i) {
        ATTN_UNROLL
        for (int c = 0; c < PER; ++c) {
          const int j = r0 + RSTEP * c;
          dva[c] += sm[L::P + i * L::LS + j] * sm[L::DO + i * L::LD + d];
          dka[c] += sm[L::DS + i * L::LS + j] * sm[L::Q + i * L::LD + d];
        }
      }
    }
  }
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) {
    const int j = r0 + RSTEP * c;
    if (j < kn) {
      const size_t at = (row0 + k0 + j) * kw + (size_t)g * HD + d;
      dk[at] = from_f32<T>(dka[c] * scale);
      dv[at] = from_f32<T>(dva[c]);
    }
  }
}

// dQ for queries q0 … q0+BQ−1 (in-row) of batch row blockIdx.y and query head blockIdx.z:
//   dq_i = scale·Σ_j dS_ij·k_j over the keys j the query sees (kv head h / (heads/kv_heads)).
// Layouts as attention_backward_dkdv; dq [n, heads·HD] in T.
// Launch: grid (ceil(seq/BQ), batch, heads), block (ATTN_TILE_THREADS), dynamic shared memory
// AttnTiles<HD, BQ, BK>::WORDS·4 bytes. Q, dO, L, D stay in shared memory; the block walks the
// key tiles from ⌊min start/BK⌋·BK to the tile's last query, in order.
// Accumulation: fp32 registers, thread tid owning column d = tid % HD of
// query rows i = tid / HD + (THREADS/HD)·c (HD must divide THREADS: 32, 64, 128).
// Deterministic: one thread per output element, fixed loop order, no atomics.
template <class T, int HD, int BQ, int BK>
__device__ void attention_backward_dq_impl(T* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k,
                                           const T* __restrict__ v, const T* __restrict__ dout,
                                           const float* __restrict__ lse, const float* __restrict__ dsum,
                                           const int* __restrict__ starts, int seq, int heads, int kv_heads,
                                           float scale) {
  typedef AttnTiles<HD, BQ, BK> L;
  static_assert((BQ * HD) % ATTN_TILE_THREADS == 0, "query tile must split evenly over the block");
  constexpr int PER = BQ * HD / ATTN_TILE_THREADS, RSTEP = ATTN_TILE_THREADS / HD;
  static_assert(ATTN_TILE_THREADS % HD == 0, "a thread keeps one column d of its query rows");
  const int d = threadIdx.x % HD, r0 = threadIdx.x / HD;  // this thread: rows r0 + RSTEP·c
  DYN_SMEM(float, sm);
  const int q0 = blockIdx.x * BQ, h = blockIdx.z;
  const size_t row0 = (size_t)blockIdx.y * seq;
  const int g = h / (heads / kv_heads);
  const size_t qw = (size_t)heads * HD, kw = (size_t)kv_heads * HD;
  const int qn = seq - q0 < BQ ? seq - q0 : BQ;
  attn_load_tile<T, HD, BQ>(sm + L::Q, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  attn_load_tile<T, HD, BQ>(sm + L::DO, dout + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  attn_bwd_load_rows<HD, BQ, BK>(sm, lse, dsum, starts, row0, q0, qn, heads, h);
  const int smin = attn_min_start(starts + row0 + q0, qn);
  float dqa[PER];
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) dqa[c] = 0.f;
  for (int k0 = smin / BK * BK; k0 < q0 + qn; k0 += BK) {
    const int kn = seq - k0 < BK ? seq - k0 : BK;
    __syncthreads();  // Q, dO, rows loaded; the previous tile's readers are done
    attn_load_tile<T, HD, BK>(sm + L::K, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    attn_load_tile<T, HD, BK>(sm + L::V, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    __syncthreads();
    attn_bwd_scores<HD, BQ, BK>(sm, q0, k0, scale);
    __syncthreads();
    for (int j = 0; j < BK; ++j) {
      ATTN_UNROLL
      for (int c = 0; c < PER; ++c) {
        const int i = r0 + RSTEP * c;
        dqa[c] += sm[L::DS + i * L::LS + j] * sm[L::K + j * L::LD + d];
      }
    }
  }
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) {
    const int i = r0 + RSTEP * c;
    if (i < qn) dq[(row0 + q0 + i) * qw + (size_t)h * HD + d] = from_f32<T>(dqa[c] * scale);
  }
}

// Tile sizes per head_dim (BQ query rows, BK key rows): the table in attention_tiles.cuh, which
// engine/src/backend/kernel/attn_tiles.rs repeats (a test checks).
#define ATTENTION_BACKWARD_HD(T, S, HD, BQ, BK)                                                                  \
  extern "C" __global__ void __launch_bounds__(ATTN_TILE_THREADS)                                              \
      attention_backward_dkdv_hd##HD##_##S(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,   \
                                           const float* lse, const float* dsum, const int* starts, int seq,     \
                                           int heads, int kv_heads, float scale) {                              \
    attention_backward_dkdv_impl<T, HD, BQ, BK>(dk, dv, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, \
                                                scale);                                                         \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(ATTN_TILE_THREADS)                                              \
      attention_backward_dq_hd##HD##_##S(T* dq, const T* q, const T* k, const T* v, const T* dout,              \
                                         const float* lse, const float* dsum, const int* starts, int seq,       \
                                         int heads, int kv_heads, float scale) {                                \
    attention_backward_dq_impl<T, HD, BQ, BK>(dq, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads,       \
                                              scale);                                                           \
  }

#define ATTENTION_BACKWARD_KERNELS(T, S)                                                                   \
  extern "C" __global__ void __launch_bounds__(32 * ATTN_BWD_DOT_WARPS)                                     \
      attention_backward_dot_##S(float* dsum, const T* dout, const T* out, int n, int heads, int hd) {       \
    attention_backward_dot_impl<T>(dsum, dout, out, n, heads, hd);                                         \
  }                                                                                                        \
  ATTENTION_BACKWARD_HD(T, S, 32, 32, 32)                                                                  \
  ATTENTION_BACKWARD_HD(T, S, 64, 32, 32)                                                                  \
  ATTENTION_BACKWARD_HD(T, S, 128, 16, 16)
ATTENTION_BACKWARD_KERNELS(float, f32)
ATTENTION_BACKWARD_KERNELS(bf16, bf16)
