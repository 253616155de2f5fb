// kernels/embedding.cu: token embedding gather, out[t, :] = table[ids[t], :], in T (bf16 or
// f32). Neighbours: common.cuh (packs), cast.cu.
#include "common.cuh"

// out [n, h], table [vocab, h], ids [n] int32. An id outside [0, vocab) writes NaN (the host
// validates ids first). Launch: grid (n), block (BLOCK_THREADS); one block per token, 16-byte
// packs when h is a multiple of the pack width and the pointers are aligned. Deterministic:
// a copy.
template <class T>
__device__ void embedding_impl(T* __restrict__ out, const T* __restrict__ table, const int* __restrict__ ids, int h,
                               int vocab) {
  const int t = blockIdx.x;
  const int id = ids[t];
  T* o = out + (size_t)t * h;
  if (id < 0 || id >= vocab) {
    for (int i = threadIdx.x; i < h; i += blockDim.x) o[i] = from_f32<T>(NAN);
    return;
  }
  const T* src = table + (size_t)id * h;
  constexpr int N = Pack<T>::N;
  if (h % N == 0 && aligned16(out) && aligned16(table)) {
    for (int i = threadIdx.x * N; i < h; i += blockDim.x * N) store_pack(o + i, load_pack(src + i));
  } else {
    for (int i = threadIdx.x; i < h; i += blockDim.x) o[i] = src[i];
  }
}

#define EMBEDDING_KERNELS(T, S)                                                                    \
  extern "C" __global__ void embedding_##S(T* out, const T* table, const int* ids, int h, int vocab) { \
    embedding_impl<T>(out, table, ids, h, vocab);                                                   \
  }
EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16, bf16)
