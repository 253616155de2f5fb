// kernels/cast.cu: f32 <-> bf16 conversion (round to nearest even, NaN stays NaN).
// Neighbours: common.cuh (packs, conversions), embedding.cu.
#include "common.cuh"

// dst[i] = bf16_rne(src[i]) or f32(src[i]), len elements.
// Launch: grid (ceil(len / (BLOCK_THREADS·8))), block (BLOCK_THREADS); each thread 8 elements
// (one bf16 pack, two f32 packs) when len % 8 == 0 and the pointers are aligned, else 8
// scalars. Deterministic: elementwise.
template <class D, class S>
__device__ void cast_impl(D* __restrict__ dst, const S* __restrict__ src, size_t len) {
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
  if (base >= len) return;
  if (len % 8 == 0 && aligned16(dst) && aligned16(src)) {
    Pack<D> d[8 / Pack<D>::N];
    Pack<S> s[8 / Pack<S>::N];
    for (int k = 0; k < 8 / Pack<S>::N; ++k) s[k] = load_pack(src + base + k * Pack<S>::N);
    for (int k = 0; k < 8; ++k)
      d[k / Pack<D>::N].v[k % Pack<D>::N] = from_f32<D>(to_f32(s[k / Pack<S>::N].v[k % Pack<S>::N]));
    for (int k = 0; k < 8 / Pack<D>::N; ++k) store_pack(dst + base + k * Pack<D>::N, d[k]);
  } else {
    for (size_t i = base; i < base + 8 && i < len; ++i) dst[i] = from_f32<D>(to_f32(src[i]));
  }
}

extern "C" __global__ void cast_f32_to_bf16(bf16* dst, const float* src, size_t len) { cast_impl(dst, src, len); }
extern "C" __global__ void cast_bf16_to_f32(float* dst, const bf16* src, size_t len) { cast_impl(dst, src, len); }
