// kernels/attention.cu: causal GQA attention forward with packed samples and an online
// softmax, saving the log-sum-exp for the backward (attention_backward.cu). Two kernels with one
// contract: a tiled one for head_dim 64 and 128 (query × key tiles in shared memory, CUDA cores)
// and a simple one for any head_dim up to 256 (one warp per query token and head). (A tiled
// hd 32 instance spills a few registers under ptxas 13.0, so hd 32 takes the simple kernel.)
// f32 buffers run these kernels; bf16 ones with hd 64 or 128 take the tensor-core forward of
// attention_mma.cu (same contract). Beside them, attention_decode (KV-cached generation: one
// query per sequence against its cache) shares the simple kernel's one-warp-per-query code,
// attention_warp_query. Neighbours: attention_tiles.cuh (tiles), attention_mma.cu,
// common.cuh (warp reductions), rope.cu.
#include "attention_tiles.cuh"

// Largest head_dim supported (each lane keeps ATTN_MAX_HD/32 output accumulators).
#define ATTN_MAX_HD 256
// Warps (query-token × head pairs) per block.
#define ATTN_WARPS 4

// One warp's attention of one query over the key/value rows j_lo ..= j_hi (shared by the
// forward below and attention_decode):
//   s_j = (q · k[j, :]) · scale,  lse = log Σ_j exp(s_j),  out = Σ_j exp(s_j − lse) · v[j, :]
// q, out: the query's and output's hd values (T); k, v: row j at k + j·kvstride, already
// offset to the kv head; qs: this warp's hd floats of shared memory; lse: one float, or null.
// Keys in chunks of 32, lane l scoring key j0+l; running max m and sum l updated once per
// chunk (online softmax); each lane accumulates output dims lane, lane+32, … (hd <=
// ATTN_MAX_HD). An empty key range (j_lo > j_hi) writes NaN.
// Accumulation: fp32. Deterministic: fixed chunking and in-chunk order (key j0, j0+1, …).
template <class T>
__device__ __forceinline__ void attention_warp_query(T* __restrict__ out, float* __restrict__ lse,
                                                     const T* __restrict__ q, const T* __restrict__ k,
                                                     const T* __restrict__ v, size_t kvstride, int j_lo,
                                                     int j_hi, int hd, float scale, float* qs) {
  const int lane = threadIdx.x % 32;
  for (int d = lane; d < hd; d += 32) qs[d] = to_f32(q[d]);
  __syncwarp();
  float m = -INFINITY, l = 0.f;
  float acc[ATTN_MAX_HD / 32];
  for (int c = 0; c < ATTN_MAX_HD / 32; ++c) acc[c] = 0.f;
  for (int j0 = j_lo; j0 <= j_hi; j0 += 32) {
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j <= j_hi) {
      const T* kr = k + j * kvstride;
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot += qs[d] * to_f32(kr[d]);
      s = dot * scale;
    }
    const float m_new = fmaxf(m, warp_max(s));
    const float p = j <= j_hi ? expf(s - m_new) : 0.f;
    const float corr = expf(m - m_new);
    l = l * corr + warp_sum(p);
    for (int c = 0; c < ATTN_MAX_HD / 32; ++c) acc[c] *= corr;
    const int cnt = j_hi - j0 + 1 < 32 ? j_hi - j0 + 1 : 32;
    for (int jj = 0; jj < cnt; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      const T* vr = v + (j0 + jj) * kvstride;
      for (int c = 0; c < ATTN_MAX_HD / 32; ++c) {
        const int d = lane + 32 * c;
        if (d < hd) acc[c] += pj * to_f32(vr[d]);
      }
    }
    m = m_new;
  }
  const bool empty = j_lo > j_hi;
  for (int c = 0; c < ATTN_MAX_HD / 32; ++c) {
    const int d = lane + 32 * c;
    if (d < hd) out[d] = from_f32<T>(empty ? NAN : acc[c] / l);
  }
  if (lse != nullptr && lane == 0) *lse = empty ? NAN : m + logf(l);
}

// For token t of `n = batch·seq` (row r = t / seq), query head h, kv head g = h / (heads /
// kv_heads), keys j in [r·seq + starts[t], t] (causal, within t's packed sample):
//   s_j = (q[t, h, :] · k[j, g, :]) · scale,  lse[t, h] = log Σ_j exp(s_j)
//   out[t, h, :] = Σ_j exp(s_j − lse) · v[j, g, :]
// Layouts: q, out [n, heads·hd]; k, v [n, kv_heads·hd] in T (bf16 or f32); starts [n] int32
// (in-row index of the first token of t's sample); lse [n, heads] f32. hd <= ATTN_MAX_HD.
// An empty key range (bad starts) writes NaN; the host validates starts.
// Launch: grid (ceil(n·heads / ATTN_WARPS)), block (32·ATTN_WARPS), dynamic shared memory
// ATTN_WARPS·hd·4 bytes (each warp's query in f32).
// One warp per (token, head) runs attention_warp_query (its accumulation and order above).
// Accumulation: fp32. Deterministic: fixed chunking and in-chunk order (key j0, j0+1, …).
template <class T>
__device__ void attention_forward_impl(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                                       const T* __restrict__ k, const T* __restrict__ v,
                                       const int* __restrict__ starts, int n, int seq, int heads, int kv_heads,
                                       int hd, float scale) {
  DYN_SMEM(float, qs_all);
  const int warp = threadIdx.x / 32;
  const int gw = blockIdx.x * ATTN_WARPS + warp;
  if (gw >= n * heads) return;  // the whole warp leaves together
  const int t = gw / heads, h = gw % heads;
  const int g = h / (heads / kv_heads);
  const size_t qstride = (size_t)heads * hd, kvstride = (size_t)kv_heads * hd;
  const size_t qo = t * qstride + (size_t)h * hd;
  attention_warp_query<T>(out + qo, lse + (size_t)t * heads + h, q + qo, k + (size_t)g * hd, v + (size_t)g * hd,
                          kvstride, (t / seq) * seq + starts[t], t, hd, scale, qs_all + warp * hd);
}

// Decoding: one query per sequence against its KV cache. For query i of b, query head h, kv
// head g = h / (heads / kv_heads), cache rows j in [first[i], first[i] + last[i]] (positions
// 0 ..= last[i] of i's sequence):
//   s_j = (q[i, h, :] · k[j, g, :]) · scale,  out[i, h, :] = Σ_j softmax(s)_j · v[j, g, :]
// Layouts: q, out [b, heads·hd]; k, v [m, kv_heads·hd] in T (the cache); first, last [b]
// int32 (ranges checked on the host to lie inside the cache). hd <= ATTN_MAX_HD. No lse.
// Launch: grid (ceil(b·heads / ATTN_WARPS)), block (32·ATTN_WARPS), dynamic shared memory
// ATTN_WARPS·hd·4 bytes. One warp per (query, head) runs attention_warp_query. (The launch
// bounds ask for one resident block: without a minimum, ptxas 13.0 holds this kernel to 48
// registers and spills 4 bytes; with it, 64–70 registers and no spill. The warp/row/head
// preamble repeats attention_forward_impl's on purpose: folding both into one helper made
// ptxas spill 8 bytes in the forward on sm_90.)
// Accumulation: fp32. Deterministic: fixed chunking and in-chunk order (key j0, j0+1, …).
template <class T>
__device__ void attention_decode_impl(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k,
                                      const T* __restrict__ v, const int* __restrict__ first,
                                      const int* __restrict__ last, int b, int heads, int kv_heads, int hd,
                                      float scale) {
  DYN_SMEM(float, qs_all);
  const int warp = threadIdx.x / 32;
  const int gw = blockIdx.x * ATTN_WARPS + warp;
  if (gw >= b * heads) return;  // the whole warp leaves together
  const int i = gw / heads, h = gw % heads;
  const int g = h / (heads / kv_heads);
  const size_t qo = (size_t)gw * hd, kvstride = (size_t)kv_heads * hd;
  attention_warp_query<T>(out + qo, nullptr, q + qo, k + (size_t)g * hd, v + (size_t)g * hd, kvstride, first[i],
                          first[i] + last[i], hd, scale, qs_all + warp * hd);
}

// The same contract as attention_forward_impl, for hd = HD ∈ {64, 128}, per query tile
// q0 … q0+BQ−1 (in-row) of batch row blockIdx.y and query head blockIdx.z.
// Launch: grid (ceil(seq/BQ), batch, heads), block (ATTN_TILE_THREADS), dynamic shared memory
// AttnTiles<HD, BQ, BK>::WORDS·4 bytes (attention_tiles.cuh, which has the BQ×BK table).
// Per key tile k0 = ⌊min start/BK⌋·BK, … up to the last query: scores S = scale·Q·Kᵀ (masked
// entries −∞; each dot over d in order), then one thread per query row updates the running max
// m and sum l (keys in order) and turns S into exp(S − m); the output accumulators are rescaled
// by exp(m_old − m) and add P·V (keys in order). out = acc / l, lse = m + log l.
// Accumulation: fp32; thread tid owns column d = tid % HD of rows tid / HD + (THREADS/HD)·c.
// Deterministic: one thread per output element and row statistic, fixed orders, no atomics.
template <class T, int HD, int BQ, int BK>
__device__ void attention_forward_tiled_impl(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                                             const T* __restrict__ k, const T* __restrict__ v,
                                             const int* __restrict__ starts, int seq, int heads, int kv_heads,
                                             float scale) {
  typedef AttnTiles<HD, BQ, BK> L;
  static_assert(ATTN_TILE_THREADS % HD == 0 && (BQ * BK) % ATTN_TILE_THREADS == 0, "tile split");
  constexpr int PER = BQ * HD / ATTN_TILE_THREADS, RSTEP = ATTN_TILE_THREADS / HD;
  DYN_SMEM(float, sm);
  float* m = sm + L::L;     // running max per query row
  float* l = sm + L::D;     // running sum per query row
  float* corr = sm + L::DS;  // this tile's rescale factor per query row
  int* st = reinterpret_cast<int*>(sm + L::ST);
  const int q0 = blockIdx.x * BQ, h = blockIdx.z;
  const size_t row0 = (size_t)blockIdx.y * seq;
  const int g = h / (heads / kv_heads);
  const size_t qw = (size_t)heads * HD, kw = (size_t)kv_heads * HD;
  const int qn = seq - q0 < BQ ? seq - q0 : BQ;
  const int d = threadIdx.x % HD, r0 = threadIdx.x / HD;
  attn_load_tile<T, HD, BQ>(sm + L::Q, q + (row0 + q0) * qw + (size_t)h * HD, qw, qn);
  for (int i = threadIdx.x; i < BQ; i += ATTN_TILE_THREADS) {
    st[i] = i < qn ? starts[row0 + q0 + i] : 0x7fffffff;
    m[i] = -INFINITY;
    l[i] = 0.f;
  }
  const int smin = attn_min_start(starts + row0 + q0, qn);
  float acc[PER];
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) acc[c] = 0.f;
  for (int k0 = smin / BK * BK; k0 < q0 + qn; k0 += BK) {
    const int kn = seq - k0 < BK ? seq - k0 : BK;
    __syncthreads();  // Q and the row state loaded; the previous tile's readers are done
    attn_load_tile<T, HD, BK>(sm + L::K, k + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    attn_load_tile<T, HD, BK>(sm + L::V, v + (row0 + k0) * kw + (size_t)g * HD, kw, kn);
    __syncthreads();
    for (int c = 0; c < BQ * BK / ATTN_TILE_THREADS; ++c) {
      const int e = threadIdx.x + ATTN_TILE_THREADS * c;
      const int i = e / BK, j = e % BK;
      const int qi = q0 + i, kj = k0 + j;
      float s = -INFINITY;
      if (kj <= qi && kj >= st[i]) {
        const float* qr = sm + L::Q + i * L::LD;
        const float* kr = sm + L::K + j * L::LD;
        float dot = 0.f;
        for (int dd = 0; dd < HD; ++dd) dot += qr[dd] * kr[dd];
        s = dot * scale;
      }
      sm[L::P + i * L::LS + j] = s;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < BQ; i += ATTN_TILE_THREADS) {
      float* pr = sm + L::P + i * L::LS;
      float mx = m[i];
      for (int j = 0; j < BK; ++j) mx = fmaxf(mx, pr[j]);
      // Until a row has seen a key, m = mx = −∞: shift by 0 instead, so every exp is of −∞ (0).
      const float base = mx == -INFINITY ? 0.f : mx;
      const float cf = expf(m[i] - base);  // 0 when m was −∞
      float sum = 0.f;
      for (int j = 0; j < BK; ++j) {
        const float p = expf(pr[j] - base);  // 0 for masked (−∞) entries
        pr[j] = p;
        sum += p;
      }
      l[i] = l[i] * cf + sum;
      m[i] = mx;
      corr[i] = cf;
    }
    __syncthreads();
    ATTN_UNROLL
    for (int c = 0; c < PER; ++c) acc[c] *= corr[r0 + RSTEP * c];
    for (int j = 0; j < BK; ++j) {
      ATTN_UNROLL
      for (int c = 0; c < PER; ++c) acc[c] += sm[L::P + (r0 + RSTEP * c) * L::LS + j] * sm[L::V + j * L::LD + d];
    }
  }
  ATTN_UNROLL
  for (int c = 0; c < PER; ++c) {
    const int i = r0 + RSTEP * c;
    if (i < qn) out[(row0 + q0 + i) * qw + (size_t)h * HD + d] = from_f32<T>(__fdividef(acc[c], l[i]));
  }
  for (int i = threadIdx.x; i < qn; i += ATTN_TILE_THREADS) lse[(row0 + q0 + i) * heads + h] = m[i] + logf(l[i]);
}

#define ATTENTION_FORWARD_TILED(T, S, HD, BQ, BK)                                                          \
  extern "C" __global__ void __launch_bounds__(ATTN_TILE_THREADS)                                         \
      attention_forward_tiled_hd##HD##_##S(T* out, float* lse, const T* q, const T* k, const T* v,         \
                                           const int* starts, int seq, int heads, int kv_heads, float scale) { \
    attention_forward_tiled_impl<T, HD, BQ, BK>(out, lse, q, k, v, starts, seq, heads, kv_heads, scale);    \
  }

#define ATTENTION_KERNELS(T, S)                                                                            \
  extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS)                                             \
      attention_forward_##S(T* out, float* lse, const T* q, const T* k, const T* v, const int* starts, int n, \
                            int seq, int heads, int kv_heads, int hd, float scale) {                         \
    attention_forward_impl<T>(out, lse, q, k, v, starts, n, seq, heads, kv_heads, hd, scale);              \
  }                                                                                                        \
  extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS, 1)                                             \
      attention_decode_##S(T* out, const T* q, const T* k, const T* v, const int* first, const int* last, int b, \
                           int heads, int kv_heads, int hd, float scale) {                                   \
    attention_decode_impl<T>(out, q, k, v, first, last, b, heads, kv_heads, hd, scale);                      \
  }
ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16, bf16)
ATTENTION_FORWARD_TILED(float, f32, 64, 32, 32)
ATTENTION_FORWARD_TILED(float, f32, 128, 16, 16)
ATTENTION_FORWARD_TILED(bf16, bf16, 64, 32, 32)
ATTENTION_FORWARD_TILED(bf16, bf16, 128, 16, 16)
