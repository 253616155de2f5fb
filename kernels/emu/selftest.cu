// kernels/emu/selftest.cu: known-answer kernels that check the emulator itself (barriers,
// static and dynamic shared memory, shuffles, votes, atomics) and negative kernels that must
// be reported as launch errors. Not part of the GPU fatbin. Neighbours: emu.h, launchers.cpp.
#include "../common.cuh"

// out[0] = Σ in[i] over blockDim.x (≤ 1024, multiple of 32) values by block_sum; out[1] = the
// same sum through a shared-memory tree (static shared + __syncthreads); out[2] = a tree over
// dynamic shared memory. Launch: grid (1), block (n), dynamic smem n·4 bytes.
extern "C" __global__ void selftest_block_reduce(float* out, const float* in) {
  __shared__ float scratch[32];
  __shared__ float tree[1024];
  DYN_SMEM(float, dyn);
  const int t = threadIdx.x;
  const float v = in[t];
  const float s = block_sum(v, scratch);
  tree[t] = v;
  dyn[t] = v;
  __syncthreads();
  for (int active = blockDim.x; active > 1; active = (active + 1) / 2) {
    const int half = (active + 1) / 2;
    if (t < active - half) {
      tree[t] += tree[t + half];
      dyn[t] += dyn[t + half];
    }
    __syncthreads();
  }
  if (t == 0) {
    out[0] = s;
    out[1] = tree[0];
    out[2] = dyn[0];
  }
}

// Per thread i (global index, 1-D, full warps): a row of 8 results
//   [shfl(v, 5), shfl_xor(v, 3), shfl_down(v, 4), shfl_up(v, 2), shfl_down(v, 1, width 8),
//    ballot(v odd), all(v > 0), any(v == 7)]  with v = in[i].
extern "C" __global__ void selftest_warp(int* out, const int* in) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = in[i];
  int* o = out + (size_t)i * 8;
  o[0] = __shfl_sync(0xffffffffu, v, 5);
  o[1] = __shfl_xor_sync(0xffffffffu, v, 3);
  o[2] = __shfl_down_sync(0xffffffffu, v, 4);
  o[3] = __shfl_up_sync(0xffffffffu, v, 2);
  o[4] = __shfl_down_sync(0xffffffffu, v, 1, 8);
  o[5] = (int)__ballot_sync(0xffffffffu, v & 1);
  o[6] = __all_sync(0xffffffffu, v > 0);
  o[7] = __any_sync(0xffffffffu, v == 7);
}

// counter[0] += 1 per thread, counter[1] = max over threads of in[i] (atomicAdd/atomicMax on
// ints), fsum[0] += in[i] as float (atomicAdd on float; exact for small integers).
extern "C" __global__ void selftest_atomics(int* counter, float* fsum, const int* in) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&counter[0], 1);
  atomicMax(&counter[1], in[i]);
  atomicAdd(&fsum[0], (float)in[i]);
}

// Negative: threads of even warps and odd warps wait at different __syncthreads.
extern "C" __global__ void selftest_divergent_barrier(int* out) {
  if ((threadIdx.x / 32) % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Negative: lane 0 returns early, the others shuffle with the full mask.
extern "C" __global__ void selftest_bad_mask(int* out) {
  if (threadIdx.x % 32 == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

// Negative: a missing __syncthreads between writing and reading dynamic shared memory.
// out[t] = dyn[(t + 1) % n] — correct only if thread t+1 happened to run first.
extern "C" __global__ void selftest_missing_barrier(float* out) {
  DYN_SMEM(float, dyn);
  const int t = threadIdx.x;
  dyn[t] = (float)t;
  out[t] = dyn[(t + 1) % blockDim.x];
}
