// kernels/swiglu.cu: the SwiGLU activation of the Llama MLP, out = silu(gate) · up, and its
// backward. All buffers [n·f] flattened in T (bf16 or f32); fp32 maths. Neighbours:
// common.cuh (packs), rmsnorm.cu, cross_entropy.cu.
#include "common.cuh"

__device__ __forceinline__ float sigmoidf_(float g) { return 1.0f / (1.0f + expf(-g)); }

// out[i] = g·σ(g)·u with g = gate[i], u = up[i].
// Launch: grid (ceil(len / (BLOCK_THREADS·N))), block (BLOCK_THREADS), N = pack width
// (4 f32 or 8 bf16); each thread handles one 16-byte pack when all pointers are aligned and
// len % N == 0, else N scalars. Accumulation: fp32. Deterministic: elementwise.
template <class T>
__device__ void swiglu_forward_impl(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                                    size_t len) {
  constexpr int N = Pack<T>::N;
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * N;
  if (base >= len) return;
  if (len % N == 0 && aligned16(out) && aligned16(gate) && aligned16(up)) {
    Pack<T> pg = load_pack(gate + base), pu = load_pack(up + base), o;
    for (int k = 0; k < N; ++k) {
      const float g = to_f32(pg.v[k]);
      o.v[k] = from_f32<T>(g * sigmoidf_(g) * to_f32(pu.v[k]));
    }
    store_pack(out + base, o);
  } else {
    for (size_t i = base; i < base + N && i < len; ++i) {
      const float g = to_f32(gate[i]);
      out[i] = from_f32<T>(g * sigmoidf_(g) * to_f32(up[i]));
    }
  }
}

// dgate[i] = d·u·σ(g)·(1 + g·(1 − σ(g))),  dup[i] = d·g·σ(g)  with d = dout[i] (overwritten).
// Launch, accumulation and determinism as swiglu_forward.
template <class T>
__device__ void swiglu_backward_impl(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dout,
                                     const T* __restrict__ gate, const T* __restrict__ up, size_t len) {
  constexpr int N = Pack<T>::N;
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * N;
  if (base >= len) return;
  if (len % N == 0 && aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up)) {
    Pack<T> pd = load_pack(dout + base), pg = load_pack(gate + base), pu = load_pack(up + base), og, ou;
    for (int k = 0; k < N; ++k) {
      const float d = to_f32(pd.v[k]), g = to_f32(pg.v[k]), u = to_f32(pu.v[k]), s = sigmoidf_(g);
      og.v[k] = from_f32<T>(d * u * s * (1.0f + g * (1.0f - s)));
      ou.v[k] = from_f32<T>(d * g * s);
    }
    store_pack(dgate + base, og);
    store_pack(dup + base, ou);
  } else {
    for (size_t i = base; i < base + N && i < len; ++i) {
      const float d = to_f32(dout[i]), g = to_f32(gate[i]), u = to_f32(up[i]), s = sigmoidf_(g);
      dgate[i] = from_f32<T>(d * u * s * (1.0f + g * (1.0f - s)));
      dup[i] = from_f32<T>(d * g * s);
    }
  }
}

#define SWIGLU_KERNELS(T, S)                                                                              \
  extern "C" __global__ void swiglu_forward_##S(T* out, const T* gate, const T* up, size_t len) {        \
    swiglu_forward_impl<T>(out, gate, up, len);                                                           \
  }                                                                                                       \
  extern "C" __global__ void swiglu_backward_##S(T* dgate, T* dup, const T* dout, const T* gate, const T* up, \
                                                 size_t len) {                                            \
    swiglu_backward_impl<T>(dgate, dup, dout, gate, up, len);                                             \
  }
SWIGLU_KERNELS(float, f32)
SWIGLU_KERNELS(bf16, bf16)
