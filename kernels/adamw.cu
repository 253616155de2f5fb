// kernels/adamw.cu: one AdamW step over fp32 params/grads/moments (the LoRA parameters), in
// torch.optim.AdamW's order of operations, bit-identical to the CPU backend
// (engine/src/backend/cpu/adamw.rs). Neighbours: common.cuh, norm.cu (global grad norm).
#include "common.cuh"

// For each i (torch.optim.AdamW, single-tensor path, amsgrad off), with the per-step scalars
// computed by the host in f64 and rounded to f32 (the CPU backend's `Hyper`):
//   p ← p·decay                                  decay = 1 − lr·wd
//   m ← |w| < 0.5 ? fma(w, g − m, m)              w = 1 − β1 (torch's lerp, one fused
//                 : fma(w − 1, g − m, g)          multiply-add each, like torch's kernel)
//   v ← v·β2 + ((1 − β2)·g)·g                    one_minus_beta2 = 1 − β2 (in f64)
//   denom = sqrt(v) / bc2_sqrt + eps             bc2_sqrt = sqrt(1 − β2^step)
//   p ← p + (neg_step_size·m) / denom            neg_step_size = −lr / (1 − β1^step)
// Every other operation is one IEEE rounding (`__f*_rn`: nvcc never contracts them), so the
// result matches the CPU backend bit for bit.
// Launch: grid (ceil(len / (BLOCK_THREADS·4))), block (BLOCK_THREADS); each thread one float4
// when len % 4 == 0 and the pointers are aligned, else 4 scalars. Deterministic: elementwise.
struct AdamwScalars {
  float w, beta2, one_minus_beta2, eps, decay, neg_step_size, bc2_sqrt;
};

__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, const AdamwScalars& s) {
  const float pi = __fmul_rn(p, s.decay);
  const float diff = __fsub_rn(g, m);
  m = fabsf(s.w) < 0.5f ? fmaf(s.w, diff, m) : fmaf(__fsub_rn(s.w, 1.0f), diff, g);
  v = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
  p = __fadd_rn(pi, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
}

extern "C" __global__ void adamw_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                     float* __restrict__ v, size_t len, float w, float beta2, float one_minus_beta2,
                                     float eps, float decay, float neg_step_size, float bc2_sqrt) {
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (base >= len) return;
  const AdamwScalars s{w, beta2, one_minus_beta2, eps, decay, neg_step_size, bc2_sqrt};
  if (len % 4 == 0 && aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v)) {
    float4 p = *reinterpret_cast<float4*>(param + base), g = *reinterpret_cast<const float4*>(grad + base);
    float4 mm = *reinterpret_cast<float4*>(m + base), vv = *reinterpret_cast<float4*>(v + base);
    adamw_one(p.x, g.x, mm.x, vv.x, s);
    adamw_one(p.y, g.y, mm.y, vv.y, s);
    adamw_one(p.z, g.z, mm.z, vv.z, s);
    adamw_one(p.w, g.w, mm.w, vv.w, s);
    *reinterpret_cast<float4*>(param + base) = p;
    *reinterpret_cast<float4*>(m + base) = mm;
    *reinterpret_cast<float4*>(v + base) = vv;
  } else {
    for (size_t i = base; i < base + 4 && i < len; ++i) adamw_one(param[i], grad[i], m[i], v[i], s);
  }
}
