// kernels/rope.cu: rotary position embedding in place, HF half-split layout (rotate_half).
// x [n, heads, hd] in T (bf16 or f32); cos/sin table [max_pos, hd/2] in f32 (llama3 scaling
// already applied by the host); positions [n] int32. Neighbours: common.cuh, rmsnorm.cu.
#include "common.cuh"

// For each token t, head, i < hd/2, with c = cos[pos[t], i], s = ±sin[pos[t], i]:
//   (x[i], x[i + hd/2]) <- (x[i]·c − x[i + hd/2]·s, x[i + hd/2]·c + x[i]·s)
// forward uses +sin, backward (the transpose, i.e. the inverse rotation) −sin.
// A position outside [0, max_pos) writes NaN (the host validates positions first).
// Launch: grid (ceil(n·heads·hd/2 / BLOCK_THREADS)), block (BLOCK_THREADS); one thread per
// pair. Accumulation: fp32. Deterministic: elementwise.
template <class T, bool INVERSE>
__device__ void rope_impl(T* __restrict__ x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                          const int* __restrict__ pos, int n, int heads, int hd, int max_pos) {
  const int half = hd / 2;
  const size_t total = (size_t)n * heads * half;
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int i = (int)(idx % half);
  const size_t th = idx / half;  // token * heads + head
  const int t = (int)(th / heads);
  T* v = x + th * hd;
  const int p = pos[t];
  float c, s;
  if (p < 0 || p >= max_pos) {
    c = NAN;
    s = NAN;
  } else {
    c = cos_t[(size_t)p * half + i];
    s = sin_t[(size_t)p * half + i];
  }
  if (INVERSE) s = -s;
  const float a = to_f32(v[i]), b = to_f32(v[i + half]);
  v[i] = from_f32<T>(a * c - b * s);
  v[i + half] = from_f32<T>(b * c + a * s);
}

#define ROPE_KERNELS(T, S)                                                                                   \
  extern "C" __global__ void rope_forward_##S(T* x, const float* cos_t, const float* sin_t, const int* pos,  \
                                              int n, int heads, int hd, int max_pos) {                       \
    rope_impl<T, false>(x, cos_t, sin_t, pos, n, heads, hd, max_pos);                                        \
  }                                                                                                          \
  extern "C" __global__ void rope_backward_##S(T* x, const float* cos_t, const float* sin_t, const int* pos, \
                                               int n, int heads, int hd, int max_pos) {                      \
    rope_impl<T, true>(x, cos_t, sin_t, pos, n, heads, hd, max_pos);                                         \
  }
ROPE_KERNELS(float, f32)
ROPE_KERNELS(bf16, bf16)
