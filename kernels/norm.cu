// kernels/norm.cu: deterministic sum of squares of fp32 tensors (global gradient norm for
// clipping), in two passes and without float atomics. Neighbours: common.cuh, adamw.cu.
#include "common.cuh"

// Number of partial sums for a tensor of `len` values: ceil(len / NORM_CHUNK), at most
// NORM_MAX_PARTS; a function of the size only, never of the SM count.
#define NORM_CHUNK 16384
#define NORM_MAX_PARTS 1024

// Pass 1: partials[b] = Σ x[i]² over the contiguous chunk b of x, for b < gridDim.x.
// chunk = ceil(len / gridDim.x); the host launches grid (parts), block (BLOCK_THREADS) with
// parts = min(ceil(len / NORM_CHUNK), NORM_MAX_PARTS) (≥ 1), and may place several tensors'
// partials side by side in one buffer. Accumulation: fp32 per thread (strided), then f64 in
// the block reduction; partials are f64. Deterministic: fixed partition and order.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    sumsq_partials_f32(double* __restrict__ partials, const float* __restrict__ x, size_t len) {
  __shared__ double scratch[32];
  const size_t chunk = (len + gridDim.x - 1) / gridDim.x;
  const size_t lo = (size_t)blockIdx.x * chunk;
  const size_t hi = lo + chunk < len ? lo + chunk : len;
  float acc = 0.f;
  for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += x[i] * x[i];
  const double s = block_sum((double)acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Pass 2: out[0] = Σ partials[0..count) in f64. Launch: grid (1), block (BLOCK_THREADS).
// Thread k sums partials k, k+blockDim, … in order, then block_sum. Deterministic.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    sum_partials_f64(double* __restrict__ out, const double* __restrict__ partials, int count) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  const double s = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = s;
}
