// kernels/emu/launchers.cpp: compiles every kernels/*.cu (and selftest.cu) with g++ against
// emu.h and exports one extern "C" launcher per kernel for the Rust tests:
//   int emu_launch_<kernel>(gx, gy, gz, bx, by, bz, dyn_smem_bytes, kernel args...)
// returning 0, or non-zero with the reason in emu_last_error(). Neighbours: emu.cpp,
// tests/kernels_emu.rs (the FFI declarations, which must match the lists below).
#include "emu.h"

#include "../adamw.cu"
#include "../attention.cu"
#include "../attention_backward.cu"
#include "../attention_mma.cu"
#include "../attention_mma_backward.cu"
#include "../cast.cu"
#include "../cross_entropy.cu"
#include "../elementwise.cu"
#include "../embedding.cu"
#include "../norm.cu"
#include "../rmsnorm.cu"
#include "../rope.cu"
#include "../swiglu.cu"
#include "selftest.cu"

#define EMU_EXPAND(...) __VA_ARGS__
#define EMU_LAUNCHER(name, PARAMS, ARGS)                                                                 \
  extern "C" int emu_launch_##name(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,     \
                                   unsigned bz, size_t shmem, EMU_EXPAND PARAMS) {                       \
    return emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), shmem, [&] { name ARGS; });                  \
  }

#define EMU_TYPED(S, T)                                                                                  \
  EMU_LAUNCHER(rmsnorm_forward_##S, (T * out, float* rstd, const T* x, const T* w, int h, float eps),     \
               (out, rstd, x, w, h, eps))                                                                \
  EMU_LAUNCHER(rmsnorm_backward_##S, (T * dx, const T* dout, const T* x, const T* w, const float* rstd, int h), \
               (dx, dout, x, w, rstd, h))                                                                \
  EMU_LAUNCHER(rope_forward_##S,                                                                         \
               (T * x, const float* c, const float* s, const int* pos, int n, int heads, int hd, int max_pos), \
               (x, c, s, pos, n, heads, hd, max_pos))                                                    \
  EMU_LAUNCHER(rope_backward_##S,                                                                        \
               (T * x, const float* c, const float* s, const int* pos, int n, int heads, int hd, int max_pos), \
               (x, c, s, pos, n, heads, hd, max_pos))                                                    \
  EMU_LAUNCHER(swiglu_forward_##S, (T * out, const T* gate, const T* up, size_t len), (out, gate, up, len)) \
  EMU_LAUNCHER(swiglu_backward_##S, (T * dgate, T* dup, const T* dout, const T* gate, const T* up, size_t len), \
               (dgate, dup, dout, gate, up, len))                                                        \
  EMU_LAUNCHER(cross_entropy_##S, (float* loss, T* logits, const int* targets, int vocab, float scale),   \
               (loss, logits, targets, vocab, scale))                                                    \
  EMU_LAUNCHER(embedding_##S, (T * out, const T* table, const int* ids, int h, int vocab),               \
               (out, table, ids, h, vocab))                                                              \
  EMU_LAUNCHER(fill_##S, (T * x, size_t len, float value), (x, len, value))                               \
  EMU_LAUNCHER(copy_##S, (T * dst, const T* src, size_t len), (dst, src, len))                            \
  EMU_LAUNCHER(axpy_##S, (T * x, const T* y, size_t len, float alpha), (x, y, len, alpha))                \
  EMU_LAUNCHER(scale_##S, (T * x, size_t len, float alpha), (x, len, alpha))                              \
  EMU_LAUNCHER(add_bias_##S, (T * x, const T* bias, size_t len, int d), (x, bias, len, d))                \
  EMU_LAUNCHER(dropout_##S,                                                                              \
               (T * out, const T* x, size_t len, unsigned long long key, unsigned threshold, float scale), \
               (out, x, len, key, threshold, scale))                                                     \
  EMU_LAUNCHER(copy_rows_##S, (T * dst, const T* src, const int* rows, size_t len, int width),          \
               (dst, src, rows, len, width))                                                             \
  EMU_LAUNCHER(attention_forward_##S,                                                                    \
               (T * out, float* lse, const T* q, const T* k, const T* v, const int* starts, int n, int seq, \
                int heads, int kv_heads, int hd, float scale),                                           \
               (out, lse, q, k, v, starts, n, seq, heads, kv_heads, hd, scale))                          \
  EMU_LAUNCHER(attention_decode_##S,                                                                     \
               (T * out, const T* q, const T* k, const T* v, const int* first, const int* last, int b,   \
                int heads, int kv_heads, int hd, float scale),                                           \
               (out, q, k, v, first, last, b, heads, kv_heads, hd, scale))

// attention.cu's tiled forward per head_dim; attention_backward.cu: one dot kernel and a dkdv/dq
// pair per head_dim.
#define EMU_ATTN_BWD_HD(S, T, HD)                                                                        \
  EMU_LAUNCHER(attention_backward_dkdv_hd##HD##_##S,                                                     \
               (T * dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,      \
                const float* dsum, const int* starts, int seq, int heads, int kv_heads, float scale),    \
               (dk, dv, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, scale))                  \
  EMU_LAUNCHER(attention_backward_dq_hd##HD##_##S,                                                       \
               (T * dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,             \
                const float* dsum, const int* starts, int seq, int heads, int kv_heads, float scale),    \
               (dq, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, scale))
#define EMU_ATTN_FWD_TILED(S, T, HD)                                                                     \
  EMU_LAUNCHER(attention_forward_tiled_hd##HD##_##S,                                                     \
               (T * out, float* lse, const T* q, const T* k, const T* v, const int* starts, int seq,     \
                int heads, int kv_heads, float scale),                                                   \
               (out, lse, q, k, v, starts, seq, heads, kv_heads, scale))
#define EMU_ATTN_BWD(S, T)                                                                               \
  EMU_ATTN_FWD_TILED(S, T, 64)                                                                           \
  EMU_ATTN_FWD_TILED(S, T, 128)                                                                          \
  EMU_LAUNCHER(attention_backward_dot_##S, (float* dsum, const T* dout, const T* out, int n, int heads, int hd), \
               (dsum, dout, out, n, heads, hd))                                                          \
  EMU_ATTN_BWD_HD(S, T, 32)                                                                              \
  EMU_ATTN_BWD_HD(S, T, 64)                                                                              \
  EMU_ATTN_BWD_HD(S, T, 128)

EMU_TYPED(f32, float)
EMU_TYPED(bf16, bf16)
EMU_ATTN_BWD(f32, float)
EMU_ATTN_BWD(bf16, bf16)

// attention_mma.cu and attention_mma_backward.cu: bf16 only, per head_dim.
#define EMU_ATTN_MMA(HD)                                                                                 \
  EMU_LAUNCHER(attention_forward_mma_hd##HD##_bf16,                                                      \
               (bf16 * out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int* starts,  \
                int seq, int heads, int kv_heads, float scale),                                          \
               (out, lse, q, k, v, starts, seq, heads, kv_heads, scale))                                 \
  EMU_LAUNCHER(attention_backward_dkdv_mma_hd##HD##_bf16,                                                \
               (bf16 * dk, bf16* dv, const bf16* q, const bf16* k, const bf16* v, const bf16* dout,      \
                const float* lse, const float* dsum, const int* starts, int seq, int heads, int kv_heads, \
                float scale),                                                                            \
               (dk, dv, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, scale))                  \
  EMU_LAUNCHER(attention_backward_dq_mma_hd##HD##_bf16,                                                  \
               (bf16 * dq, const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse, \
                const float* dsum, const int* starts, int seq, int heads, int kv_heads, float scale),    \
               (dq, q, k, v, dout, lse, dsum, starts, seq, heads, kv_heads, scale))
EMU_ATTN_MMA(64)
EMU_ATTN_MMA(128)
EMU_LAUNCHER(adamw_f32,
             (float* p, const float* g, float* m, float* v, size_t len, float w, float beta2, float one_minus_beta2,
              float eps, float decay, float neg_step_size, float bc2_sqrt),
             (p, g, m, v, len, w, beta2, one_minus_beta2, eps, decay, neg_step_size, bc2_sqrt))
EMU_LAUNCHER(cast_f32_to_bf16, (bf16 * dst, const float* src, size_t len), (dst, src, len))
EMU_LAUNCHER(cast_bf16_to_f32, (float* dst, const bf16* src, size_t len), (dst, src, len))
EMU_LAUNCHER(sumsq_partials_f32, (double* partials, const float* x, size_t len), (partials, x, len))
EMU_LAUNCHER(sum_partials_f64, (double* out, const double* partials, int count), (out, partials, count))
EMU_LAUNCHER(sum_segments_f64, (double* out, const double* partials, const int* offsets, int segments),
             (out, partials, offsets, segments))
EMU_LAUNCHER(selftest_block_reduce, (float* out, const float* in), (out, in))
EMU_LAUNCHER(selftest_warp, (int* out, const int* in), (out, in))
EMU_LAUNCHER(selftest_atomics, (int* counter, float* fsum, const int* in), (counter, fsum, in))
EMU_LAUNCHER(selftest_divergent_barrier, (int* out), (out))
EMU_LAUNCHER(selftest_bad_mask, (int* out), (out))
EMU_LAUNCHER(selftest_missing_barrier, (float* out), (out))
EMU_LAUNCHER(selftest_mma, (float* d, const unsigned* a, const unsigned* b, const float* c), (d, a, b, c))
EMU_LAUNCHER(selftest_ldmatrix, (unsigned* out, const unsigned short* in, const int* rows, int words),
             (out, in, rows, words))
EMU_LAUNCHER(selftest_mma_partial_warp, (float* out), (out))
EMU_LAUNCHER(selftest_ldmatrix_bad, (unsigned* out, const bf16* global, int mode), (out, global, mode))

// Exposed for the bf16 rounding test: the emulator's float -> bf16 -> bits.
extern "C" uint16_t emu_f32_to_bf16_bits(float f) { return __float2bfloat16_rn(f).x; }
