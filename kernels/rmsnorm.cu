// kernels/rmsnorm.cu: RMSNorm forward (saving rstd) and backward (dx accumulated into the
// residual-stream gradient). Row-major [n, h] activations in T (bf16 or f32), weight [h] in T,
// fp32 accumulation. Neighbours: common.cuh (packs, block reductions), rope.cu, swiglu.cu.
#include "common.cuh"

// out[r, i] = x[r, i] * rstd[r] * w[i],  rstd[r] = 1 / sqrt(mean_i(x[r, i]^2) + eps)
// Launch: grid (n), block (BLOCK_THREADS) — one block per row; any h.
// Accumulation: fp32 per-thread partials, thread t taking elements [t·N, t·N + N) every
// blockDim·N (N = pack width; 16-byte packs when h % N == 0 and the pointers are aligned,
// scalars in the same order otherwise), then block_sum in a fixed order.
// Deterministic: the reduction order depends only on h and the block size, not alignment.
template <class T>
__device__ void rmsnorm_forward_impl(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                     const T* __restrict__ w, int h, float eps) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  const T* xr = x + (size_t)row * h;
  T* outr = out + (size_t)row * h;
  constexpr int N = Pack<T>::N;
  const bool vec = h % N == 0 && aligned16(x) && aligned16(out) && aligned16(w);
  float ss = 0.f;
  if (vec) {
    for (int i = threadIdx.x * N; i < h; i += blockDim.x * N) {
      Pack<T> p = load_pack(xr + i);
      for (int k = 0; k < N; ++k) {
        float v = to_f32(p.v[k]);
        ss += v * v;
      }
    }
  } else {
    // Same partition and order as the pack path, so alignment never changes the result.
    for (int i0 = threadIdx.x * N; i0 < h; i0 += blockDim.x * N)
      for (int i = i0; i < i0 + N && i < h; ++i) {
        float v = to_f32(xr[i]);
        ss += v * v;
      }
  }
  ss = block_sum(ss, scratch);
  const float r = rsqrtf(ss / (float)h + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  if (vec) {
    for (int i = threadIdx.x * N; i < h; i += blockDim.x * N) {
      Pack<T> p = load_pack(xr + i), pw = load_pack(w + i), o;
      for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(to_f32(p.v[k]) * r * to_f32(pw.v[k]));
      store_pack(outr + i, o);
    }
  } else {
    for (int i = threadIdx.x; i < h; i += blockDim.x) outr[i] = from_f32<T>(to_f32(xr[i]) * r * to_f32(w[i]));
  }
}

// dx[r, i] += rstd * w[i] * dout[r, i] - x[r, i] * rstd^3 / h * sum_j(dout[r, j] * w[j] * x[r, j])
// (the norm's input gradient added to the residual-stream gradient already in dx).
// Launch: grid (n), block (BLOCK_THREADS) — one block per row; any h.
// Accumulation: fp32, the dot product reduced per thread then by block_sum (fixed order).
// Deterministic: yes (no atomics; order depends only on h and the block size).
template <class T>
__device__ void rmsnorm_backward_impl(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ x,
                                      const T* __restrict__ w, const float* __restrict__ rstd, int h) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  const size_t off = (size_t)row * h;
  constexpr int N = Pack<T>::N;
  const bool vec = h % N == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w);
  float dot = 0.f;
  if (vec) {
    for (int i = threadIdx.x * N; i < h; i += blockDim.x * N) {
      Pack<T> pg = load_pack(dout + off + i), px = load_pack(x + off + i), pw = load_pack(w + i);
      for (int k = 0; k < N; ++k) dot += to_f32(pg.v[k]) * to_f32(pw.v[k]) * to_f32(px.v[k]);
    }
  } else {
    // Same partition and order as the pack path, so alignment never changes the result.
    for (int i0 = threadIdx.x * N; i0 < h; i0 += blockDim.x * N)
      for (int i = i0; i < i0 + N && i < h; ++i) dot += to_f32(dout[off + i]) * to_f32(w[i]) * to_f32(x[off + i]);
  }
  dot = block_sum(dot, scratch);
  const float r = rstd[row];
  const float c = dot * r * r * r / (float)h;
  if (vec) {
    for (int i = threadIdx.x * N; i < h; i += blockDim.x * N) {
      Pack<T> pg = load_pack(dout + off + i), px = load_pack(x + off + i), pw = load_pack(w + i);
      Pack<T> pd = load_pack(dx + off + i);
      for (int k = 0; k < N; ++k)
        pd.v[k] = from_f32<T>(to_f32(pd.v[k]) + r * to_f32(pw.v[k]) * to_f32(pg.v[k]) - to_f32(px.v[k]) * c);
      store_pack(dx + off + i, pd);
    }
  } else {
    for (int i = threadIdx.x; i < h; i += blockDim.x)
      dx[off + i] = from_f32<T>(to_f32(dx[off + i]) + r * to_f32(w[i]) * to_f32(dout[off + i]) - to_f32(x[off + i]) * c);
  }
}

#define RMSNORM_KERNELS(T, S)                                                                                \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                                 \
      rmsnorm_forward_##S(T* out, float* rstd, const T* x, const T* w, int h, float eps) {                   \
    rmsnorm_forward_impl<T>(out, rstd, x, w, h, eps);                                                        \
  }                                                                                                          \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                                 \
      rmsnorm_backward_##S(T* dx, const T* dout, const T* x, const T* w, const float* rstd, int h) {         \
    rmsnorm_backward_impl<T>(dx, dout, x, w, rstd, h);                                                       \
  }
RMSNORM_KERNELS(float, f32)
RMSNORM_KERNELS(bf16, bf16)
