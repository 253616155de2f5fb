//! The kernels (through the emulator, f32 storage) against the engine's CPU backend, the
//! reference semantics the CUDA backend must match: same inputs, the kernel launched the way
//! the CUDA backend will launch it, tolerance `atol + |ref|·rtol` with rtol 1e-5 (1e-4 where
//! the CPU uses a polynomial exp: attention, cross-entropy). Neighbours: ../kernels_emu.rs,
//! ops.rs and attention.rs (the same kernels against plain f64 references), ffi.rs.

use super::ffi::{assert_close, dims, raw, Buf, Rng, BLOCK};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::{Backend, RopeTable};

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn rmsnorm_rope_swiglu_embedding_match_cpu_backend() {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng::new(100);
    let (n, h, eps) = (6usize, 576usize, 1e-5f32);
    let x: Vec<f32> = rng.vec(n * h, -2.0, 2.0);
    let w: Vec<f32> = rng.vec(h, 0.5, 1.5);
    let dout: Vec<f32> = rng.vec(n * h, -1.0, 1.0);
    let dx0: Vec<f32> = rng.vec(n * h, -1.0, 1.0);

    // rmsnorm forward + backward
    let (mut out_c, mut rstd_c, mut dx_c) = (vec![0f32; n * h], vec![0f32; n], dx0.clone());
    cpu.rmsnorm_forward(&mut out_c, &mut rstd_c, &x, &w, n, h, eps)
        .unwrap();
    cpu.rmsnorm_backward(&mut dx_c, &dout, &x, &w, &rstd_c, n, h)
        .unwrap();
    let (xb, wb, gb) = (Buf::from(&x), Buf::from(&w), Buf::from(&dout));
    let (mut out_k, mut rstd_k, mut dx_k) =
        (Buf::<f32>::nan(n * h), vec![f32::NAN; n], Buf::from(&dx0));
    raw::emu_launch_rmsnorm_forward_f32(
        dims(n, BLOCK),
        out_k.mp(),
        rstd_k.as_mut_ptr(),
        xb.cp(),
        wb.cp(),
        h as i32,
        eps,
    )
    .unwrap();
    raw::emu_launch_rmsnorm_backward_f32(
        dims(n, BLOCK),
        dx_k.mp(),
        gb.cp(),
        xb.cp(),
        wb.cp(),
        rstd_k.as_ptr(),
        h as i32,
    )
    .unwrap();
    assert_close(
        "rmsnorm_forward rstd vs cpu",
        &rstd_k,
        &f64v(&rstd_c),
        0.0,
        1e-5,
    );
    assert_close(
        "rmsnorm_forward out vs cpu",
        &out_k.f32s(),
        &f64v(&out_c),
        1e-6,
        1e-5,
    );
    assert_close(
        "rmsnorm_backward dx vs cpu",
        &dx_k.f32s(),
        &f64v(&dx_c),
        1e-5,
        1e-5,
    );

    // rope with a table of the backend's own type
    let (heads, hd, max_pos) = (4usize, 64usize, 32usize);
    let half = hd / 2;
    let (mut cos, mut sin) = (vec![0f32; max_pos * half], vec![0f32; max_pos * half]);
    for p in 0..max_pos {
        for i in 0..half {
            let a = p as f32 * 10000f32.powf(-(2.0 * i as f32) / hd as f32);
            (cos[p * half + i], sin[p * half + i]) = (a.cos(), a.sin());
        }
    }
    let table = RopeTable::<CpuBackend<f32>> {
        cos: cos.clone(),
        sin: sin.clone(),
        max_pos,
        head_dim: hd,
    };
    let positions: Vec<u32> = (0..n).map(|_| rng.below(max_pos as u64) as u32).collect();
    let pos_i32: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let q: Vec<f32> = rng.vec(n * heads * hd, -1.0, 1.0);
    for inverse in [false, true] {
        let mut q_c = q.clone();
        cpu.rope(&mut q_c, &table, &positions, n, heads, inverse)
            .unwrap();
        let mut q_k = Buf::from(&q);
        let f = if inverse {
            raw::emu_launch_rope_backward_f32
        } else {
            raw::emu_launch_rope_forward_f32
        };
        let d = dims((n * heads * half).div_ceil(BLOCK as usize), BLOCK);
        let args = (n as i32, heads as i32, hd as i32, max_pos as i32);
        f(
            d,
            q_k.mp(),
            cos.as_ptr(),
            sin.as_ptr(),
            pos_i32.as_ptr(),
            args.0,
            args.1,
            args.2,
            args.3,
        )
        .unwrap();
        assert_close(
            &format!("rope inverse={inverse} vs cpu"),
            &q_k.f32s(),
            &f64v(&q_c),
            1e-6,
            1e-5,
        );
    }

    // swiglu forward + backward on a ragged length
    let len = 1003;
    let gate: Vec<f32> = rng.vec(len, -4.0, 4.0);
    let up: Vec<f32> = rng.vec(len, -2.0, 2.0);
    let dsw: Vec<f32> = rng.vec(len, -1.0, 1.0);
    let (mut o_c, mut dg_c, mut du_c) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
    cpu.swiglu_forward(&mut o_c, &gate, &up).unwrap();
    cpu.swiglu_backward(&mut dg_c, &mut du_c, &dsw, &gate, &up)
        .unwrap();
    let (gtb, upb, dswb) = (Buf::from(&gate), Buf::from(&up), Buf::from(&dsw));
    let (mut o_k, mut dg_k, mut du_k) = (
        Buf::<f32>::nan(len),
        Buf::<f32>::nan(len),
        Buf::<f32>::nan(len),
    );
    let d = dims(len.div_ceil(BLOCK as usize * 4), BLOCK);
    raw::emu_launch_swiglu_forward_f32(d, o_k.mp(), gtb.cp(), upb.cp(), len).unwrap();
    raw::emu_launch_swiglu_backward_f32(
        d,
        dg_k.mp(),
        du_k.mp(),
        dswb.cp(),
        gtb.cp(),
        upb.cp(),
        len,
    )
    .unwrap();
    assert_close(
        "swiglu_forward vs cpu",
        &o_k.f32s(),
        &f64v(&o_c),
        1e-6,
        1e-5,
    );
    assert_close(
        "swiglu_backward dgate vs cpu",
        &dg_k.f32s(),
        &f64v(&dg_c),
        1e-6,
        1e-5,
    );
    assert_close(
        "swiglu_backward dup vs cpu",
        &du_k.f32s(),
        &f64v(&du_c),
        1e-6,
        1e-5,
    );

    // embedding
    let vocab = 50;
    let emb: Vec<f32> = rng.vec(vocab * h, -1.0, 1.0);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
    let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let mut e_c = vec![0f32; n * h];
    cpu.embedding(&mut e_c, &emb, &ids, h).unwrap();
    let (embb, mut e_k) = (Buf::from(&emb), Buf::<f32>::nan(n * h));
    raw::emu_launch_embedding_f32(
        dims(n, BLOCK),
        e_k.mp(),
        embb.cp(),
        ids_i32.as_ptr(),
        h as i32,
        vocab as i32,
    )
    .unwrap();
    assert_eq!(e_k.f32s(), e_c, "embedding vs cpu");
}

#[test]
fn adamw_and_sum_squares_match_cpu_backend() {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng::new(101);
    let len = 1003;
    let (lr, b1, b2, eps, wd) = (2e-3f32, 0.9f32, 0.999f32, 1e-8f32, 0.1f32);
    let mut p_c: Vec<f32> = rng.vec(len, -1.0, 1.0);
    let mut p_k = p_c.clone();
    let (mut m_c, mut v_c, mut m_k, mut v_k) = (
        vec![0f32; len],
        vec![0f32; len],
        vec![0f32; len],
        vec![0f32; len],
    );
    for step in 1..=3u32 {
        let g: Vec<f32> = rng.vec(len, -0.5, 0.5);
        cpu.adamw(
            &mut p_c,
            &g,
            &mut m_c,
            &mut v_c,
            lr.into(),
            b1.into(),
            b2.into(),
            eps.into(),
            wd.into(),
            step,
        )
        .unwrap();
        let (bc1, bc2) = (
            1.0 - (b1 as f64).powi(step as i32),
            1.0 - (b2 as f64).powi(step as i32),
        );
        let (decay, step_size, bc2_sqrt) =
            (1.0 - lr as f64 * wd as f64, lr as f64 / bc1, bc2.sqrt());
        let d = dims(len.div_ceil(BLOCK as usize * 4), BLOCK);
        let (pp, mp, vp) = (p_k.as_mut_ptr(), m_k.as_mut_ptr(), v_k.as_mut_ptr());
        let (dec, nss, b2s) = (decay as f32, -step_size as f32, bc2_sqrt as f32);
        let (w, omb2) = ((1.0 - b1 as f64) as f32, (1.0 - b2 as f64) as f32);
        let gp = g.as_ptr();
        raw::emu_launch_adamw_f32(d, pp, gp, mp, vp, len, w, b2, omb2, eps, dec, nss, b2s).unwrap();
        assert_close(
            &format!("adamw p step {step} vs cpu"),
            &p_k,
            &f64v(&p_c),
            1e-7,
            1e-5,
        );
        assert_close(
            &format!("adamw m step {step} vs cpu"),
            &m_k,
            &f64v(&m_c),
            1e-8,
            1e-5,
        );
        assert_close(
            &format!("adamw v step {step} vs cpu"),
            &v_k,
            &f64v(&v_c),
            1e-10,
            1e-5,
        );
    }
    let x: Vec<f32> = rng.vec(40_000, -3.0, 3.0);
    let want = cpu.sum_squares(&x).unwrap();
    let parts = x.len().div_ceil(16384).clamp(1, 1024);
    let mut partials = vec![f64::NAN; parts];
    raw::emu_launch_sumsq_partials_f32(
        dims(parts, BLOCK),
        partials.as_mut_ptr(),
        x.as_ptr(),
        x.len(),
    )
    .unwrap();
    let mut got = [f64::NAN];
    raw::emu_launch_sum_partials_f64(
        dims(1, BLOCK),
        got.as_mut_ptr(),
        partials.as_ptr(),
        parts as i32,
    )
    .unwrap();
    assert!(
        (got[0] - want).abs() <= 1e-5 * want,
        "sum_squares: kernel {} cpu {want}",
        got[0]
    );
}

#[test]
fn attention_and_chunked_cross_entropy_match_cpu_backend() {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng::new(102);
    let (batch, seq, heads, kv_heads, hd) = (2usize, 48usize, 4usize, 2usize, 32usize);
    let n = batch * seq;
    let q: Vec<f32> = rng.vec(n * heads * hd, -1.5, 1.5);
    let k: Vec<f32> = rng.vec(n * kv_heads * hd, -1.5, 1.5);
    let v: Vec<f32> = rng.vec(n * kv_heads * hd, -1.0, 1.0);
    // Two samples per row: tokens 0..20 and 20..48.
    let starts: Vec<u32> = (0..n).map(|t| if t % seq < 20 { 0 } else { 20 }).collect();
    let (mut out_c, mut lse_c) = (vec![0f32; n * heads * hd], vec![0f32; n * heads]);
    cpu.attention_forward(
        &mut out_c, &mut lse_c, &q, &k, &v, &starts, batch, seq, heads, kv_heads, hd,
    )
    .unwrap();
    let (qb, kb, vb) = (Buf::from(&q), Buf::from(&k), Buf::from(&v));
    let (mut out_k, mut lse_k) = (Buf::<f32>::nan(n * heads * hd), vec![f32::NAN; n * heads]);
    let starts_i32: Vec<i32> = starts.iter().map(|&s| s as i32).collect();
    let mut d = dims((n * heads).div_ceil(4), 128);
    d.smem = 4 * hd * 4;
    let scale = 1.0 / (hd as f32).sqrt();
    let a = (
        n as i32,
        seq as i32,
        heads as i32,
        kv_heads as i32,
        hd as i32,
    );
    let (om, lm) = (out_k.mp(), lse_k.as_mut_ptr());
    raw::emu_launch_attention_forward_f32(
        d,
        om,
        lm,
        qb.cp(),
        kb.cp(),
        vb.cp(),
        starts_i32.as_ptr(),
        a.0,
        a.1,
        a.2,
        a.3,
        a.4,
        scale,
    )
    .unwrap();
    assert_close("attention lse vs cpu", &lse_k, &f64v(&lse_c), 1e-5, 1e-4);
    assert_close(
        "attention out vs cpu",
        &out_k.f32s(),
        &f64v(&out_c),
        1e-5,
        1e-4,
    );

    // Cross-entropy as the CUDA backend will run it: logits chunk = hidden · lm_headᵀ (GEMM),
    // the kernel (losses, dlogits in place), then dhidden = dlogits · lm_head (GEMM).
    let (rows, h, vocab, loss_scale) = (12usize, 64usize, 1000usize, 0.125f32);
    let hidden: Vec<f32> = rng.vec(rows * h, -1.0, 1.0);
    let lm_head: Vec<f32> = rng.vec(vocab * h, -0.5, 0.5);
    let targets: Vec<i32> = (0..rows)
        .map(|r| {
            if r == 3 {
                -100
            } else {
                rng.below(vocab as u64) as i32
            }
        })
        .collect();
    let mut dh_c = vec![0f32; rows * h];
    let loss_c = cpu
        .cross_entropy(
            Some(&mut dh_c),
            &hidden,
            &lm_head,
            &targets,
            rows,
            h,
            vocab,
            loss_scale,
        )
        .unwrap();
    let mut logits = vec![0f32; rows * vocab];
    cpu.gemm(
        &mut logits,
        &hidden,
        &lm_head,
        rows,
        vocab,
        h,
        false,
        true,
        1.0,
        0.0,
    )
    .unwrap();
    let mut zb = Buf::from(&logits);
    let mut loss_k = vec![f32::NAN; rows];
    raw::emu_launch_cross_entropy_f32(
        dims(rows, BLOCK),
        loss_k.as_mut_ptr(),
        zb.mp(),
        targets.as_ptr(),
        vocab as i32,
        loss_scale,
    )
    .unwrap();
    let mut dh_k = vec![f32::NAN; rows * h];
    cpu.gemm(
        &mut dh_k,
        &zb.f32s(),
        &lm_head,
        rows,
        h,
        vocab,
        false,
        false,
        1.0,
        0.0,
    )
    .unwrap();
    assert_close(
        "cross_entropy loss vs cpu",
        &loss_k,
        &f64v(&loss_c),
        1e-5,
        1e-4,
    );
    assert_close(
        "cross_entropy dhidden vs cpu",
        &dh_k,
        &f64v(&dh_c),
        1e-6,
        1e-4,
    );
}
