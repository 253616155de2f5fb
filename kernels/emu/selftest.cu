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

// mma_bf16_16816 on raw fragments: thread i (global index, full warps) passes a[4i … 4i+3],
// b[2i, 2i+1] and acc = c[4i … 4i+3], and writes the result to d[4i … 4i+3].
extern "C" __global__ void selftest_mma(float* d, const unsigned* a, const unsigned* b, const float* c) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t af[4] = {a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]};
  const uint32_t bf[2] = {b[2 * i], b[2 * i + 1]};
  float acc[4] = {c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]};
  mma_bf16_16816(acc, af, bf);
  for (int e = 0; e < 4; ++e) d[4 * i + e] = acc[e];
}

// ldmatrix_b16 from dynamic shared memory holding `words` b16 values in[] (16-byte rows of 8):
// lane l of the (single-warp) block passes row rows[l]; out[14l …] gets the registers of .x1,
// .x2, .x4, then .x1.trans, .x2.trans, .x4.trans. Launch: grid (1), block (32), smem words·2.
extern "C" __global__ void selftest_ldmatrix(unsigned* out, const unsigned short* in, const int* rows, int words) {
  DYN_SMEM(bf16, sm);
  unsigned short* bits = reinterpret_cast<unsigned short*>(sm);
  for (int e = threadIdx.x; e < words; e += blockDim.x) bits[e] = in[e];
  __syncthreads();
  const bf16* p = sm + rows[threadIdx.x] * 8;
  uint32_t r1[1], r2[2], r4[4], t1[1], t2[2], t4[4];
  ldmatrix_b16<1, false>(r1, p);
  ldmatrix_b16<2, false>(r2, p);
  ldmatrix_b16<4, false>(r4, p);
  ldmatrix_b16<1, true>(t1, p);
  ldmatrix_b16<2, true>(t2, p);
  ldmatrix_b16<4, true>(t4, p);
  const uint32_t all[14] = {r1[0], r2[0], r2[1], r4[0], r4[1], r4[2], r4[3],
                            t1[0], t2[0], t2[1], t4[0], t4[1], t4[2], t4[3]};
  for (int e = 0; e < 14; ++e) out[14 * threadIdx.x + e] = all[e];
}

// Negative: lane 0 returns, the other 31 lanes issue an mma.
extern "C" __global__ void selftest_mma_partial_warp(float* out) {
  if (threadIdx.x % 32 == 0) return;
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  mma_bf16_16816(acc, a, b);
  out[threadIdx.x] = acc[0];
}

// Negative: an ldmatrix row address that is misaligned (mode 0: lane 3 is 2 bytes off) or not
// in shared memory (mode 1: lane 5 passes a global pointer). Launch: block (32), smem 512 bytes.
extern "C" __global__ void selftest_ldmatrix_bad(unsigned* out, const bf16* global, int mode) {
  DYN_SMEM(bf16, sm);
  const int lane = threadIdx.x % 32;
  const bf16* p = sm + (lane % 8) * 8;
  if (mode == 0 && lane == 3) p += 1;
  if (mode == 1 && lane == 5) p = global;
  uint32_t r[4];
  ldmatrix_b16<4, false>(r, p);
  out[lane] = r[0];
}
