// kernels/elementwise.cu: the element-wise ops of the Backend trait that sit between the
// GEMMs: fill, copy, axpy, scale, add_bias, inverted dropout with the CPU backend's
// counter-based mask, and copy_rows (the KV cache's write). Storage T is bf16 or f32, maths in fp32; arithmetic goes through the
// `__f*_rn` intrinsics so nvcc never contracts it into an FMA, which makes the f32 results
// bit-identical to the CPU backend (engine/src/backend/cpu/elementwise.rs).
// Neighbours: common.cuh (packs), swiglu.cu (the same launch shape), adamw.cu.
#include "common.cuh"

// The element-wise driver of this file: thread t of the grid handles elements
// [t·N, t·N + N) (N = Pack<T>::N: 4 f32 or 8 bf16) with one 16-byte pack per array when
// len % N == 0 and every pointer is 16-byte aligned, else N scalars; out[i] = f(i, a[i]).
// `out` may alias `a` (in-place ops), so neither is __restrict__.
// Launch (every kernel below): grid (ceil(len / (BLOCK_THREADS·N))), block (BLOCK_THREADS).
// Deterministic: element-wise, no reduction.
template <class T, class F>
__device__ __forceinline__ void ew_map(T* out, const T* a, size_t len, F f) {
  constexpr int N = Pack<T>::N;
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * N;
  if (base >= len) return;
  if (len % N == 0 && aligned16(out) && aligned16(a)) {
    Pack<T> pa = load_pack(a + base), o;
    for (int k = 0; k < N; ++k) o.v[k] = from_f32<T>(f(base + k, to_f32(pa.v[k])));
    store_pack(out + base, o);
  } else {
    for (size_t i = base; i < base + N && i < len; ++i) out[i] = from_f32<T>(f(i, to_f32(a[i])));
  }
}

// The splitmix64 finaliser (the CPU backend's `splitmix64_mix`).
__device__ __forceinline__ unsigned long long splitmix64_mix(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Dropout keep bit of element i (the CPU backend's `dropout_keep`):
// h = mix(key + (i + 1)·0x9E3779B97F4A7C15) (wrapping), kept when (h >> 40) >= threshold, with
// threshold = ceil(p·2^24) computed on the host.
__device__ __forceinline__ bool dropout_keep(unsigned long long key, unsigned long long i, unsigned threshold) {
  const unsigned long long h = splitmix64_mix(key + (i + 1ull) * 0x9E3779B97F4A7C15ull);
  return (unsigned)(h >> 40) >= threshold;
}

// copy_rows: dst[rows[t]·width + c] = src[t·width + c] for t < len / width, c < width (the KV
// cache's write of a step's keys or values; the host checks the rows are distinct and inside
// dst, so no element is written twice). Layout: src [len / width, width], dst [m, width] in T,
// rows [len / width] int32. Thread t handles src elements [t·N, t·N + N) (N = Pack<T>::N):
// one 16-byte pack when width % N == 0 and both pointers are 16-byte aligned (the N values
// then share a row), else N scalars.
// Launch: grid (ceil(len / (BLOCK_THREADS·N))), block (BLOCK_THREADS). Deterministic: a copy.
template <class T>
__device__ __forceinline__ void copy_rows_impl(T* __restrict__ dst, const T* __restrict__ src,
                                               const int* __restrict__ rows, size_t len, int width) {
  constexpr int N = Pack<T>::N;
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * N;
  if (base >= len) return;
  const size_t w = (size_t)width;
  if (w % N == 0 && aligned16(dst) && aligned16(src)) {
    store_pack(dst + (size_t)rows[base / w] * w + base % w, load_pack(src + base));
  } else {
    for (size_t i = base; i < base + N && i < len; ++i) dst[(size_t)rows[i / w] * w + i % w] = src[i];
  }
}

// fill:     x[i] = value
// copy:     dst[i] = src[i]
// axpy:     x[i] = x[i] + alpha·y[i]           (two roundings, as the CPU's `x += alpha * y`)
// scale:    x[i] = x[i]·alpha
// add_bias: x[i] = x[i] + bias[i % d]          (rows of width d; len a multiple of d)
// dropout:  out[i] = keep(key, i) ? x[i]·scale : 0   (scale = 1/(1 − p) in f32 on the host)
#define ELEMENTWISE_KERNELS(T, S)                                                                      \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) fill_##S(T* x, size_t len, float value) { \
    ew_map<T>(x, x, len, [&](size_t, float) { return value; });                                        \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) copy_##S(T* dst, const T* src, size_t len) { \
    ew_map<T>(dst, src, len, [&](size_t, float v) { return v; });                                      \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                           \
      axpy_##S(T* x, const T* y, size_t len, float alpha) {                                            \
    ew_map<T>(x, x, len, [&](size_t i, float v) { return __fadd_rn(v, __fmul_rn(alpha, to_f32(y[i]))); }); \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS) scale_##S(T* x, size_t len, float alpha) { \
    ew_map<T>(x, x, len, [&](size_t, float v) { return __fmul_rn(v, alpha); });                        \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                           \
      add_bias_##S(T* x, const T* bias, size_t len, int d) {                                           \
    ew_map<T>(x, x, len, [&](size_t i, float v) { return __fadd_rn(v, to_f32(bias[i % (size_t)d])); }); \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                           \
      dropout_##S(T* out, const T* x, size_t len, unsigned long long key, unsigned threshold, float scale) { \
    ew_map<T>(out, x, len, [&](size_t i, float v) {                                                    \
      return dropout_keep(key, (unsigned long long)i, threshold) ? __fmul_rn(v, scale) : 0.f;          \
    });                                                                                                \
  }                                                                                                    \
  extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)                                           \
      copy_rows_##S(T* dst, const T* src, const int* rows, size_t len, int width) {                   \
    copy_rows_impl<T>(dst, src, rows, len, width);                                                     \
  }
ELEMENTWISE_KERNELS(float, f32)
ELEMENTWISE_KERNELS(bf16, bf16)
