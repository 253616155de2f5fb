// kernels/norm.cu: deterministic sum of squares of fp32 tensors (global gradient norm for
// clipping), in two passes and without float atomics; the second pass for one tensor or for
// a list of tensors in one launch. Neighbours: common.cuh, adamw.cu.
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

// Σ partials[0..count) in f64, the same for every caller: thread k sums partials k,
// k+blockDim, … in order, then block_sum. Every thread of the block must call it.
__device__ __forceinline__ double sum_range_f64(const double* __restrict__ partials, int count,
                                                double* scratch) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  return block_sum(acc, scratch);
}

// Pass 2: out[0] = Σ partials[0..count) in f64. Launch: grid (1), block (BLOCK_THREADS).
// Deterministic (sum_range_f64).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    sum_partials_f64(double* __restrict__ out, const double* __restrict__ partials, int count) {
  __shared__ double scratch[32];
  const double s = sum_range_f64(partials, count, scratch);
  if (threadIdx.x == 0) out[0] = s;
}

// Pass 2 for many tensors at once: out[b] = Σ partials[offsets[b]..offsets[b+1]) in f64 for
// b < segments (offsets holds segments+1 ascending values; an empty range gives 0). Launch:
// grid (segments), block (BLOCK_THREADS). Block b reduces its range exactly as
// sum_partials_f64 reduces that range on its own (sum_range_f64), so out[b] is bit-identical
// to the one-tensor pass; the host downloads all of out at once.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    sum_segments_f64(double* __restrict__ out, const double* __restrict__ partials,
                     const int* __restrict__ offsets, int segments) {
  __shared__ double scratch[32];
  const int b = blockIdx.x;
  if (b >= segments) return;
  const int lo = offsets[b];
  const double s = sum_range_f64(partials + lo, offsets[b + 1] - lo, scratch);
  if (threadIdx.x == 0) out[b] = s;
}
