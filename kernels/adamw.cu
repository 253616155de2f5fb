// kernels/adamw.cu: one AdamW step over fp32 params/grads/moments (the LoRA parameters), in
// torch.optim.AdamW's order of operations. Neighbours: common.cuh, norm.cu (global grad norm).
#include "common.cuh"

// For each i (torch.optim.AdamW, single-tensor path, amsgrad off):
//   p *= decay                       decay = 1 − lr·wd            (host, f64 → f32)
//   m = lerp(m, g, 1 − β1)           (torch's lerp: m + w·(g − m) for w < 0.5)
//   v = v·β2 + (1 − β2)·g·g
//   denom = sqrt(v) / bc2_sqrt + eps bc2_sqrt = sqrt(1 − β2^step)  (host, f64 → f32)
//   p += (−step_size · m) / denom    step_size = lr / (1 − β1^step)  (host, f64 → f32)
// Launch: grid (ceil(len / (BLOCK_THREADS·4))), block (BLOCK_THREADS); each thread one float4
// when len % 4 == 0 and the pointers are aligned, else 4 scalars. Deterministic: elementwise.
__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, float beta1, float beta2, float eps,
                                          float decay, float step_size, float bc2_sqrt) {
  p = p * decay;
  const float w = 1.0f - beta1;
  m = w < 0.5f ? m + w * (g - m) : g - (g - m) * (1.0f - w);
  v = v * beta2 + (1.0f - beta2) * g * g;
  const float denom = sqrtf(v) / bc2_sqrt + eps;
  p = p + (-step_size * m) / denom;
}

extern "C" __global__ void adamw_f32(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                                     float* __restrict__ v, size_t len, float beta1, float beta2, float eps,
                                     float decay, float step_size, float bc2_sqrt) {
  const size_t base = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (base >= len) return;
  if (len % 4 == 0 && aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v)) {
    float4 p = *reinterpret_cast<float4*>(param + base), g = *reinterpret_cast<const float4*>(grad + base);
    float4 mm = *reinterpret_cast<float4*>(m + base), vv = *reinterpret_cast<float4*>(v + base);
    adamw_one(p.x, g.x, mm.x, vv.x, beta1, beta2, eps, decay, step_size, bc2_sqrt);
    adamw_one(p.y, g.y, mm.y, vv.y, beta1, beta2, eps, decay, step_size, bc2_sqrt);
    adamw_one(p.z, g.z, mm.z, vv.z, beta1, beta2, eps, decay, step_size, bc2_sqrt);
    adamw_one(p.w, g.w, mm.w, vv.w, beta1, beta2, eps, decay, step_size, bc2_sqrt);
    *reinterpret_cast<float4*>(param + base) = p;
    *reinterpret_cast<float4*>(m + base) = mm;
    *reinterpret_cast<float4*>(v + base) = vv;
  } else {
    for (size_t i = base; i < base + 4 && i < len; ++i)
      adamw_one(param[i], grad[i], m[i], v[i], beta1, beta2, eps, decay, step_size, bc2_sqrt);
  }
}
