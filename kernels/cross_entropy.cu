// kernels/cross_entropy.cu: softmax cross-entropy over one chunk of logits [rows, vocab] in T
// (bf16 or f32) against int32 targets, with the logits gradient written in place. The host
// computes the chunk's logits with a GEMM and the dhidden GEMM after this kernel.
// Neighbours: common.cuh (block reductions), swiglu.cu.
#include "common.cuh"

// Per row r with target y (IGNORE_INDEX = −100 skips the row):
//   m = max_j z_j,  lse = m + log Σ_j exp(z_j − m),  loss[r] = lse − z_y
//   if grad_scale != 0: z_j <- grad_scale · (exp(z_j − lse) − [j == y])   (in place)
// Ignored rows: loss 0 and (if grad_scale != 0) dlogits 0. A target outside [0, vocab) that
// is not −100 gives loss NaN and NaN gradients (the host validates targets first).
// Launch: grid (rows), block (BLOCK_THREADS); one block per row, block_max then block_sum.
// Accumulation: fp32 (per-thread strided partials, then a fixed-order block reduction).
// Deterministic: yes. grad_scale = 0 computes the losses only and leaves the logits alone.
template <class T>
__device__ void cross_entropy_impl(float* __restrict__ loss, T* __restrict__ logits, const int* __restrict__ targets,
                                   int vocab, float grad_scale) {
  __shared__ float scratch[32];
  const int row = blockIdx.x;
  T* z = logits + (size_t)row * vocab;
  const int y = targets[row];
  if (y == IGNORE_INDEX) {
    if (threadIdx.x == 0) loss[row] = 0.f;
    if (grad_scale != 0.f)
      for (int j = threadIdx.x; j < vocab; j += blockDim.x) z[j] = from_f32<T>(0.f);
    return;
  }
  const bool bad = y < 0 || y >= vocab;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, to_f32(z[j]));
  m = block_max(m, scratch);
  float s = 0.f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(to_f32(z[j]) - m);
  s = block_sum(s, scratch);
  const float lse = m + logf(s);
  // Every thread reads z[y] before any thread overwrites it (block_sum ended with a barrier).
  const float zy = bad ? NAN : to_f32(z[y]);
  if (threadIdx.x == 0) loss[row] = lse - zy;
  if (grad_scale == 0.f) return;
  __syncthreads();
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float p = expf(to_f32(z[j]) - lse);
    if (j == y) p -= 1.0f;
    z[j] = from_f32<T>(bad ? NAN : grad_scale * p);
  }
}

#define CE_KERNELS(T, S)                                                                          \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                      \
      cross_entropy_##S(float* loss, T* logits, const int* targets, int vocab, float grad_scale) { \
    cross_entropy_impl<T>(loss, logits, targets, vocab, grad_scale);                              \
  }
CE_KERNELS(float, f32)
CE_KERNELS(bf16, bf16)
