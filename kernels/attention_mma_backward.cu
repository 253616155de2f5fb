// kernels/attention_mma_backward.cu: the backward of causal GQA attention with packed samples
// on tensor cores (mma.sync m16n8k16, bf16 operands, f32 accumulation) for bf16 storage and
// head_dim 64 and 128: the dkdv and dq steps of attention_backward.cu's three launches
//   1. attention_backward_dot_bf16 (attention_backward.cu): D[t, h] = Σ_d dout·out
//   2. attention_backward_dkdv_mma_hd*: dK, dV of 64 keys of one kv head (all its query heads)
//   3. attention_backward_dq_mma_hd*:   dQ of 64 queries of one query head
// with the same maths: P_ij = exp(scale·q_i·k_j − lse_i) (recomputed from the forward's lse),
// dP_ij = dout_i·v_j, dS_ij = P_ij·(dP_ij − D_i), dv_j = Σ_i P_ij·dout_i,
// dk_j = scale·Σ_i dS_ij·q_i, dq_i = scale·Σ_j dS_ij·k_j (dk, dv summed over the query heads
// of kv head g = h / (heads / kv_heads)); token i sees keys j with starts[i] <= j <= i (in-row).
// P and dS enter the mma as bf16 (rounded from f32); every sum accumulates in f32.
// Deterministic: each output element is written by exactly one warp, which sums in a fixed order
// (query heads of the group in order, tiles in order, k in order inside each mma chain); no
// atomics. Neighbours: attention_mma.cuh (tiles, warp products), attention_mma.cu (forward).
#include "attention_mma.cuh"

// dK, dV for keys k0 … k0+63 (in-row) of batch row blockIdx.y and kv head blockIdx.z.
// Layouts: q, dout [n, heads·HD], k, v, dk, dv [n, kv_heads·HD] bf16; lse, dsum [n, heads] f32;
// starts [n] int32, n = batch·seq. HD ∈ {64, 128}; BQ query rows per tile (64 for hd 64, 16
// for hd 128).
// Launch: grid (ceil(seq/64), batch, kv_heads), block (ATTN_MMA_THREADS = 128), dynamic shared
// memory (2·64 + 2·BQ)·(HD + 8)·2 + 3·BQ·4 bytes: K, V tiles (64 key rows), Q, dO tiles (BQ
// rows), all bf16 [row][HD + 8], then per query row lse·log2(e), D (f32) and its start (int32).
// Warp w owns key rows k0 + 16w … k0 + 16w + 15. The block walks the group's query heads in
// order and, per head, the query tiles q0 = ⌊k0/BQ⌋·BQ, … in order (skipping tiles whose
// queries see none of the 64 keys); per tile each warp whose keys some query sees computes
//   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ by mma (16 × BQ), Pᵀ = exp2(Sᵀ·scale·log2 e − lse·log2 e) (masked 0),
//   dSᵀ = Pᵀ∘(dPᵀ − D), dV += bf16(Pᵀ)·dO, dK += bf16(dSᵀ)·Q by mma (16 × HD, f32).
// dK·scale and dV leave through the warp's own K and V rows in shared memory (16-byte stores).
template <int HD, int BQ>
__device__ void attention_backward_dkdv_mma_impl(bf16* __restrict__ dk, bf16* __restrict__ dv,
                                                 const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                 const bf16* __restrict__ v, const bf16* __restrict__ dout,
                                                 const float* __restrict__ lse, const float* __restrict__ dsum,
                                                 const int* __restrict__ starts, int seq, int heads, int kv_heads,
                                                 float scale) {
  typedef MmaTile<HD> T;
  constexpr int BK = ATTN_MMA_ROWS, LD = T::LD, NT = BQ / 8, DT = HD / 8;
  DYN_SMEM(bf16, ks);
  bf16* vs = ks + BK * LD;
  bf16* qs = vs + BK * LD;
  bf16* dos = qs + BQ * LD;
  float* lse2 = reinterpret_cast<float*>(dos + BQ * LD);
  float* dd = lse2 + BQ;
  int* st = reinterpret_cast<int*>(dd + BQ);
  const int k0 = blockIdx.x * BK, g = blockIdx.z;
  const size_t row0 = (size_t)blockIdx.y * seq;
  const int group = heads / kv_heads;
  const size_t qw = (size_t)heads * HD, kw = (size_t)kv_heads * HD;
  const int kn = seq - k0 < BK ? seq - k0 : BK;
  const int k_last = k0 + kn - 1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gr = lane / 4, tq = lane % 4;
  // This warp's keys (in-row) and this lane's two fragment rows of them.
  const int kw0 = k0 + 16 * warp, kr0 = kw0 + gr, kr1 = kr0 + 8;
  const int kw_last = kw0 + 15 < k_last ? kw0 + 15 : k_last;  // < kw0 when the warp has no key
  mma_tile_load<HD, BK>(ks, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
  mma_tile_load<HD, BK>(vs, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
  const float c = scale * ATTN_LOG2E;
  float dka[DT][4], dva[DT][4];
  ATTN_UNROLL
  for (int d = 0; d < DT; ++d) {
    dka[d][0] = dka[d][1] = dka[d][2] = dka[d][3] = 0.f;
    dva[d][0] = dva[d][1] = dva[d][2] = dva[d][3] = 0.f;
  }
  for (int hh = 0; hh < group; ++hh) {
    const int h = g * group + hh;
    for (int q0 = k0 / BQ * BQ; q0 < seq; q0 += BQ) {
      const int qn = seq - q0 < BQ ? seq - q0 : BQ;
      const int smin = attn_min_start(starts + row0 + q0, qn);
      if (smin > k_last) continue;  // block-uniform: every thread computed the same smin
      __syncthreads();              // K, V loaded; the previous tile's readers are done
      mma_tile_load<HD, BQ>(qs, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
      mma_tile_load<HD, BQ>(dos, dout + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
      for (int i = threadIdx.x; i < BQ; i += ATTN_MMA_THREADS) {
        const size_t t = row0 + q0 + i;
        lse2[i] = i < qn ? lse[t * heads + h] * ATTN_LOG2E : 0.f;
        dd[i] = i < qn ? dsum[t * heads + h] : 0.f;
        st[i] = i < qn ? starts[t] : 0x7fffffff;
      }
      __syncthreads();
      // warp-uniform: no query of the tile sees a key of this warp
      if (kw_last < kw0 || q0 + qn - 1 < kw0 || smin > kw_last) continue;
      float s[NT][4], dp[NT][4];
      ATTN_UNROLL
      for (int j = 0; j < NT; ++j) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
        dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
      }
      mma_xyT<HD, NT, LD>(s, ks + 16 * warp * LD, qs);    // Sᵀ: rows keys, columns queries
      mma_xyT<HD, NT, LD>(dp, vs + 16 * warp * LD, dos);  // dPᵀ
      ATTN_UNROLL
      for (int j = 0; j < NT; ++j) {
        ATTN_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int i = 8 * j + 2 * tq + (e & 1), key = e < 2 ? kr0 : kr1;
          const bool seen = key <= q0 + i && key >= st[i];  // padding queries: st = INT_MAX
          const float p = seen ? exp2f(s[j][e] * c - lse2[i]) : 0.f;
          s[j][e] = p;
          dp[j][e] = p * (dp[j][e] - dd[i]);
        }
      }
      mma_pY<NT, DT, LD>(dva, s, dos);  // dV += Pᵀ·dO
      mma_pY<NT, DT, LD>(dka, dp, qs);  // dK += dSᵀ·Q
    }
  }
  __syncthreads();  // every load of the block is done before a warp reuses its rows
  // dK·scale and dV through the warp's own K and V rows (only this warp reads them).
  bf16* kmine = ks + 16 * warp * LD;
  bf16* vmine = vs + 16 * warp * LD;
  mma_acc_to_tile<LD, DT>(kmine, dka, scale, scale);
  mma_acc_to_tile<LD, DT>(vmine, dva, 1.f, 1.f);
  __syncwarp();
  const int rows = mma_warp_rows(kn, warp);
  mma_rows_store<HD>(dk + (row0 + kw0) * kw + (size_t)g * HD, kw, kmine, rows);
  mma_rows_store<HD>(dv + (row0 + kw0) * kw + (size_t)g * HD, kw, vmine, rows);
}

// dQ for queries q0 … q0+63 (in-row) of batch row blockIdx.y and query head blockIdx.z:
//   dq_i = scale·Σ_j dS_ij·k_j over the keys j the query sees (kv head h / (heads/kv_heads)).
// Layouts as attention_backward_dkdv_mma; dq [n, heads·HD] bf16. BK key rows per tile (64 for
// hd 64, 16 for hd 128).
// Launch: grid (ceil(seq/64), batch, heads), block (ATTN_MMA_THREADS = 128), dynamic shared
// memory (2·64 + 2·BK)·(HD + 8)·2 bytes: Q, dO tiles (64 query rows), K, V tiles (BK rows),
// bf16 [row][HD + 8]. Warp w owns query rows q0 + 16w … q0 + 16w + 15 and keeps their lse·log2 e
// and D in registers. Per key tile k0 = ⌊min start/BK⌋·BK, … up to the block's last query, each
// warp whose rows see a key of the tile computes
//   S = Q·Kᵀ, dP = dO·Vᵀ by mma (16 × BK), P = exp2(S·scale·log2 e − lse·log2 e) (masked 0),
//   dS = P∘(dP − D), dQ += bf16(dS)·K by mma (16 × HD, f32);
// dQ·scale leaves through the warp's own Q rows in shared memory (16-byte stores).
template <int HD, int BK>
__device__ void attention_backward_dq_mma_impl(bf16* __restrict__ dq, const bf16* __restrict__ q,
                                               const bf16* __restrict__ k, const bf16* __restrict__ v,
                                               const bf16* __restrict__ dout, const float* __restrict__ lse,
                                               const float* __restrict__ dsum, const int* __restrict__ starts,
                                               int seq, int heads, int kv_heads, float scale) {
  typedef MmaTile<HD> T;
  constexpr int BQ = ATTN_MMA_ROWS, LD = T::LD, NT = BK / 8, DT = HD / 8;
  DYN_SMEM(bf16, qs);
  bf16* dos = qs + BQ * LD;
  bf16* ks = dos + BQ * LD;
  bf16* vs = ks + BK * LD;
  const MmaQueryRows rows(starts, seq, heads, kv_heads, HD);
  const int q0 = rows.q0, qn = rows.qn, h = rows.h, g = rows.g;
  const size_t row0 = rows.row0, qw = rows.qw, kw = rows.kw;
  const int warp = threadIdx.x / 32, tq = threadIdx.x % 4;
  mma_tile_load<HD, BQ>(qs, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  mma_tile_load<HD, BQ>(dos, dout + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  // This lane's fragment rows' lse·log2 e and D (0 for rows past seq, which see no key).
  const bool in0 = rows.r0 < seq, in1 = rows.r1 < seq;
  const float ls0 = in0 ? lse[(row0 + rows.r0) * heads + h] * ATTN_LOG2E : 0.f;
  const float ls1 = in1 ? lse[(row0 + rows.r1) * heads + h] * ATTN_LOG2E : 0.f;
  const float d0 = in0 ? dsum[(row0 + rows.r0) * heads + h] : 0.f;
  const float d1 = in1 ? dsum[(row0 + rows.r1) * heads + h] : 0.f;
  const float c = scale * ATTN_LOG2E;
  float dqa[DT][4];
  ATTN_UNROLL
  for (int d = 0; d < DT; ++d) dqa[d][0] = dqa[d][1] = dqa[d][2] = dqa[d][3] = 0.f;
  for (int k0 = rows.smin / BK * BK; k0 < q0 + qn; k0 += BK) {
    const int kn = seq - k0 < BK ? seq - k0 : BK;
    __syncthreads();  // Q, dO loaded; the previous tile's readers are done
    mma_tile_load<HD, BK>(ks, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    mma_tile_load<HD, BK>(vs, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    __syncthreads();
    if (rows.skips(k0, BK)) continue;
    float s[NT][4], dp[NT][4];
    ATTN_UNROLL
    for (int j = 0; j < NT; ++j) {
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
      dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.f;
    }
    mma_xyT<HD, NT, LD>(s, qs + 16 * warp * LD, ks);
    mma_xyT<HD, NT, LD>(dp, dos + 16 * warp * LD, vs);
    const bool masked = rows.masks(k0, BK);
    ATTN_UNROLL
    for (int j = 0; j < NT; ++j) {
      ATTN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const bool lo = e < 2;
        const bool seen = !masked || rows.sees(k0 + 8 * j + 2 * tq + (e & 1), lo);
        const float p = seen ? exp2f(s[j][e] * c - (lo ? ls0 : ls1)) : 0.f;
        s[j][e] = p * (dp[j][e] - (lo ? d0 : d1));  // dS
      }
    }
    mma_pY<NT, DT, LD>(dqa, s, ks);  // dQ += dS·K
  }
  __syncthreads();  // every load of the block is done before a warp reuses its rows
  bf16* mine = qs + 16 * warp * LD;
  mma_acc_to_tile<LD, DT>(mine, dqa, scale, scale);
  __syncwarp();
  mma_rows_store<HD>(dq + (row0 + rows.w0) * qw + (size_t)h * HD, qw, mine, mma_warp_rows(qn, warp));
}

// Instantiations (HD, BQ of dkdv, BK of dq); engine/src/backend/kernel/attn_tiles.rs repeats the
// table (a test checks).
#define ATTENTION_BACKWARD_MMA(HD, BQ, BK)                                                                  \
  extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS)                                           \
      attention_backward_dkdv_mma_hd##HD##_bf16(bf16* dk, bf16* dv, const bf16* q, const bf16* k,           \
                                                const bf16* v, const bf16* dout, const float* lse,         \
                                                const float* dsum, const int* starts, int seq, int heads,  \
                                                int kv_heads, float scale) {                               \
    attention_backward_dkdv_mma_impl<HD, BQ>(dk, dv, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, \
                                             scale);                                                        \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(ATTN_MMA_THREADS)                                           \
      attention_backward_dq_mma_hd##HD##_bf16(bf16* dq, const bf16* q, const bf16* k, const bf16* v,        \
                                              const bf16* dout, const float* lse, const float* dsum,       \
                                              const int* starts, int seq, int heads, int kv_heads,         \
                                              float scale) {                                               \
    attention_backward_dq_mma_impl<HD, BK>(dq, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads,      \
                                           scale);                                                          \
  }
ATTENTION_BACKWARD_MMA(64, 64, 64)
ATTENTION_BACKWARD_MMA(128, 16, 16)
