// kernels/attention.cu: causal GQA attention forward with packed samples and an online
// softmax, saving the log-sum-exp for the backward. A simple, deterministic first version
// (one warp per query token and head, CUDA cores only); a tiled tensor-core kernel replaces it
// later with the same contract. Neighbours: common.cuh (warp reductions), rope.cu.
#include "common.cuh"

// Largest head_dim supported (each lane keeps ATTN_MAX_HD/32 output accumulators).
#define ATTN_MAX_HD 256
// Warps (query-token × head pairs) per block.
#define ATTN_WARPS 4

// For token t of `n = batch·seq` (row r = t / seq), query head h, kv head g = h / (heads /
// kv_heads), keys j in [r·seq + starts[t], t] (causal, within t's packed sample):
//   s_j = (q[t, h, :] · k[j, g, :]) · scale,  lse[t, h] = log Σ_j exp(s_j)
//   out[t, h, :] = Σ_j exp(s_j − lse) · v[j, g, :]
// Layouts: q, out [n, heads·hd]; k, v [n, kv_heads·hd] in T (bf16 or f32); starts [n] int32
// (in-row index of the first token of t's sample); lse [n, heads] f32. hd <= ATTN_MAX_HD.
// An empty key range (bad starts) writes NaN; the host validates starts.
// Launch: grid (ceil(n·heads / ATTN_WARPS)), block (32·ATTN_WARPS), dynamic shared memory
// ATTN_WARPS·hd·4 bytes (each warp's query in f32).
// Per warp: keys in chunks of 32, lane l scoring key j0+l; running max m and sum l updated
// once per chunk (online softmax); each lane accumulates output dims lane, lane+32, …
// Accumulation: fp32. Deterministic: fixed chunking and in-chunk order (key j0, j0+1, …).
template <class T>
__device__ void attention_forward_impl(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q,
                                       const T* __restrict__ k, const T* __restrict__ v,
                                       const int* __restrict__ starts, int n, int seq, int heads, int kv_heads,
                                       int hd, float scale) {
  DYN_SMEM(float, qs_all);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int gw = blockIdx.x * ATTN_WARPS + warp;
  if (gw >= n * heads) return;  // the whole warp leaves together
  const int t = gw / heads, h = gw % heads;
  const int g = h / (heads / kv_heads);
  const size_t qstride = (size_t)heads * hd, kvstride = (size_t)kv_heads * hd;
  const int j_lo = (t / seq) * seq + starts[t], j_hi = t;
  float* qs = qs_all + warp * hd;
  for (int d = lane; d < hd; d += 32) qs[d] = to_f32(q[t * qstride + (size_t)h * hd + d]);
  __syncwarp();
  float m = -INFINITY, l = 0.f;
  float acc[ATTN_MAX_HD / 32];
  for (int c = 0; c < ATTN_MAX_HD / 32; ++c) acc[c] = 0.f;
  for (int j0 = j_lo; j0 <= j_hi; j0 += 32) {
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j <= j_hi) {
      const T* kr = k + j * kvstride + (size_t)g * hd;
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
      const T* vr = v + (j0 + jj) * kvstride + (size_t)g * hd;
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
    if (d < hd) out[t * qstride + (size_t)h * hd + d] = from_f32<T>(empty ? NAN : acc[c] / l);
  }
  if (lane == 0) lse[(size_t)t * heads + h] = empty ? NAN : m + logf(l);
}

#define ATTENTION_KERNELS(T, S)                                                                            \
  extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS)                                             \
      attention_forward_##S(T* out, float* lse, const T* q, const T* k, const T* v, const int* starts, int n, \
                            int seq, int heads, int kv_heads, int hd, float scale) {                         \
    attention_forward_impl<T>(out, lse, q, k, v, starts, n, seq, heads, kv_heads, hd, scale);              \
  }
ATTENTION_KERNELS(float, f32)
ATTENTION_KERNELS(bf16, bf16)
