//! Per-family kernel tests through the emulator: each kernel against a plain f64 reference
//! written here, for f32 and bf16 storage, on ragged shapes (hidden 576 and 100, vocab 1000
//! and 37, lengths not a multiple of the pack width). Neighbours: ../kernels_emu.rs (the test
//! crate root, emulator self-tests), ffi.rs (launchers, buffers, RNG, tolerance).

use super::ffi::{assert_close, both_schedules, dims, f64s, raw, Buf, Elem, Rng, BLOCK};
use half::bf16;

fn atol<T: Elem>() -> f64 {
    if T::NAME == "bf16" {
        1e-3
    } else {
        1e-6
    }
}

fn grid_for(len: usize, per_thread: usize) -> usize {
    len.div_ceil(BLOCK as usize * per_thread).max(1)
}

// ---- rmsnorm -----------------------------------------------------------------------------

fn rmsnorm_case<T: Elem>(n: usize, h: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let eps = 1e-5f32;
    let x: Vec<T> = rng.vec(n * h, -2.0, 2.0);
    let w: Vec<T> = rng.vec(h, 0.5, 1.5);
    let dout: Vec<T> = rng.vec(n * h, -1.0, 1.0);
    let dx0: Vec<T> = rng.vec(n * h, -1.0, 1.0);
    let (xf, wf, gf, dxf) = (f64s(&x), f64s(&w), f64s(&dout), f64s(&dx0));

    let mut want_out = vec![0f64; n * h];
    let mut want_rstd = vec![0f64; n];
    let mut want_dx = dxf.clone();
    for r in 0..n {
        let row = &xf[r * h..(r + 1) * h];
        let ss: f64 = row.iter().map(|v| v * v).sum();
        let rstd = 1.0 / (ss / h as f64 + eps as f64).sqrt();
        want_rstd[r] = rstd;
        let dot: f64 = (0..h).map(|i| gf[r * h + i] * wf[i] * row[i]).sum();
        for i in 0..h {
            want_out[r * h + i] = row[i] * rstd * wf[i];
            want_dx[r * h + i] +=
                rstd * wf[i] * gf[r * h + i] - row[i] * rstd.powi(3) / h as f64 * dot;
        }
    }

    let (xb, wb) = (Buf::from(&x), Buf::from(&w));
    let mut out = Buf::<T>::nan(n * h);
    let mut rstd = vec![f32::NAN; n];
    (T::K.rmsnorm_forward)(
        dims(n, BLOCK),
        out.mp(),
        rstd.as_mut_ptr(),
        xb.cp(),
        wb.cp(),
        h as i32,
        eps,
    )
    .unwrap();
    let what = format!("rmsnorm_forward_{} n={n} h={h}", T::NAME);
    assert_close(&format!("{what} rstd"), &rstd, &want_rstd, 0.0, 1e-5);
    assert_close(
        &format!("{what} out"),
        &out.f32s(),
        &want_out,
        atol::<T>(),
        T::RTOL,
    );

    let (gb, mut dxb) = (Buf::from(&dout), Buf::from(&dx0));
    (T::K.rmsnorm_backward)(
        dims(n, BLOCK),
        dxb.mp(),
        gb.cp(),
        xb.cp(),
        wb.cp(),
        rstd.as_ptr(),
        h as i32,
    )
    .unwrap();
    let what = format!("rmsnorm_backward_{} n={n} h={h}", T::NAME);
    assert_close(&what, &dxb.f32s(), &want_dx, atol::<T>(), T::RTOL);
}

#[test]
fn rmsnorm_matches_reference() {
    for (n, h, seed) in [(4, 576, 10), (3, 100, 11), (2, 1000, 12), (5, 8, 13)] {
        both_schedules(|| {
            rmsnorm_case::<f32>(n, h, seed);
            rmsnorm_case::<bf16>(n, h, seed);
        });
    }
}

// ---- rope --------------------------------------------------------------------------------

#[allow(clippy::type_complexity)]
fn rope_case<T: Elem>(n: usize, heads: usize, hd: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let half = hd / 2;
    let max_pos = 40usize;
    let mut cos = vec![0f32; max_pos * half];
    let mut sin = vec![0f32; max_pos * half];
    for p in 0..max_pos {
        for i in 0..half {
            let inv_freq = 10000f64.powf(-(2.0 * i as f64) / hd as f64);
            cos[p * half + i] = (p as f64 * inv_freq).cos() as f32;
            sin[p * half + i] = (p as f64 * inv_freq).sin() as f32;
        }
    }
    let pos: Vec<i32> = (0..n).map(|_| rng.below(max_pos as u64) as i32).collect();
    let x: Vec<T> = rng.vec(n * heads * hd, -1.0, 1.0);
    let xf = f64s(&x);
    for inverse in [false, true] {
        let mut want = xf.clone();
        for t in 0..n {
            for hh in 0..heads {
                let v = &mut want[(t * heads + hh) * hd..(t * heads + hh + 1) * hd];
                for i in 0..half {
                    let c = cos[pos[t] as usize * half + i] as f64;
                    let mut s = sin[pos[t] as usize * half + i] as f64;
                    if inverse {
                        s = -s;
                    }
                    let (a, b) = (v[i], v[i + half]);
                    v[i] = a * c - b * s;
                    v[i + half] = b * c + a * s;
                }
            }
        }
        let mut xb = Buf::from(&x);
        let f = if inverse {
            T::K.rope_backward
        } else {
            T::K.rope_forward
        };
        let d = dims(grid_for(n * heads * half, 1), BLOCK);
        let (nn, hh, dd, mp) = (n as i32, heads as i32, hd as i32, max_pos as i32);
        f(
            d,
            xb.mp(),
            cos.as_ptr(),
            sin.as_ptr(),
            pos.as_ptr(),
            nn,
            hh,
            dd,
            mp,
        )
        .unwrap();
        let what = format!(
            "rope_{}_{} n={n} heads={heads} hd={hd}",
            if inverse { "backward" } else { "forward" },
            T::NAME
        );
        assert_close(&what, &xb.f32s(), &want, atol::<T>(), T::RTOL);
    }
}

#[test]
fn rope_matches_reference() {
    for (n, heads, hd, seed) in [(5, 3, 64, 20), (7, 2, 10, 21), (1, 9, 128, 22)] {
        rope_case::<f32>(n, heads, hd, seed);
        rope_case::<bf16>(n, heads, hd, seed);
    }
}

#[test]
fn rope_backward_undoes_forward_and_bad_positions_give_nan() {
    let (n, heads, hd, max_pos) = (3usize, 2usize, 16usize, 4usize);
    let mut rng = Rng::new(23);
    let cos: Vec<f32> = (0..max_pos * hd / 2)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let sin: Vec<f32> = cos.iter().map(|c| (1.0 - c * c).sqrt()).collect();
    let pos = [0i32, 3, 1];
    let x: Vec<f32> = rng.vec(n * heads * hd, -1.0, 1.0);
    let mut xb = Buf::from(&x);
    let d = dims(1, BLOCK);
    let args = (n as i32, heads as i32, hd as i32, max_pos as i32);
    raw::emu_launch_rope_forward_f32(
        d,
        xb.mp(),
        cos.as_ptr(),
        sin.as_ptr(),
        pos.as_ptr(),
        args.0,
        args.1,
        args.2,
        args.3,
    )
    .unwrap();
    raw::emu_launch_rope_backward_f32(
        d,
        xb.mp(),
        cos.as_ptr(),
        sin.as_ptr(),
        pos.as_ptr(),
        args.0,
        args.1,
        args.2,
        args.3,
    )
    .unwrap();
    assert_close("rope round trip", &xb.f32s(), &f64s(&x), 1e-6, 1e-5);
    let bad = [0i32, 4, 1];
    raw::emu_launch_rope_forward_f32(
        d,
        xb.mp(),
        cos.as_ptr(),
        sin.as_ptr(),
        bad.as_ptr(),
        args.0,
        args.1,
        args.2,
        args.3,
    )
    .unwrap();
    let v = xb.f32s();
    let row = heads * hd;
    assert!(
        v[row..2 * row].iter().all(|x| x.is_nan()),
        "token with position 4 of 4"
    );
    assert!(v[..row].iter().chain(&v[2 * row..]).all(|x| x.is_finite()));
}

// ---- swiglu ------------------------------------------------------------------------------

fn swiglu_case<T: Elem>(len: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let gate: Vec<T> = rng.vec(len, -4.0, 4.0);
    let up: Vec<T> = rng.vec(len, -2.0, 2.0);
    let dout: Vec<T> = rng.vec(len, -1.0, 1.0);
    let (g, u, d) = (f64s(&gate), f64s(&up), f64s(&dout));
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let want_out: Vec<f64> = (0..len).map(|i| g[i] * sig(g[i]) * u[i]).collect();
    let want_dg: Vec<f64> = (0..len)
        .map(|i| d[i] * u[i] * sig(g[i]) * (1.0 + g[i] * (1.0 - sig(g[i]))))
        .collect();
    let want_du: Vec<f64> = (0..len).map(|i| d[i] * g[i] * sig(g[i])).collect();
    let (gb, ub, db) = (Buf::from(&gate), Buf::from(&up), Buf::from(&dout));
    let n = T::K.swiglu_forward;
    let per = 16 / std::mem::size_of::<T>();
    let dm = dims(grid_for(len, per), BLOCK);
    let mut out = Buf::<T>::nan(len);
    n(dm, out.mp(), gb.cp(), ub.cp(), len).unwrap();
    assert_close(
        &format!("swiglu_forward_{} len={len}", T::NAME),
        &out.f32s(),
        &want_out,
        atol::<T>(),
        T::RTOL,
    );
    let (mut dgb, mut dub) = (Buf::<T>::nan(len), Buf::<T>::nan(len));
    (T::K.swiglu_backward)(dm, dgb.mp(), dub.mp(), db.cp(), gb.cp(), ub.cp(), len).unwrap();
    assert_close(
        &format!("swiglu_backward_{} dgate len={len}", T::NAME),
        &dgb.f32s(),
        &want_dg,
        atol::<T>(),
        T::RTOL,
    );
    assert_close(
        &format!("swiglu_backward_{} dup len={len}", T::NAME),
        &dub.f32s(),
        &want_du,
        atol::<T>(),
        T::RTOL,
    );
}

#[test]
fn swiglu_matches_reference() {
    for (len, seed) in [(4096, 30), (1003, 31), (7, 32), (576 * 3, 33)] {
        swiglu_case::<f32>(len, seed);
        swiglu_case::<bf16>(len, seed);
    }
}

// ---- cross-entropy -----------------------------------------------------------------------

fn cross_entropy_case<T: Elem>(rows: usize, vocab: usize, scale: f32, seed: u64) {
    let mut rng = Rng::new(seed);
    let logits: Vec<T> = rng.vec(rows * vocab, -6.0, 6.0);
    let targets: Vec<i32> = (0..rows)
        .map(|r| {
            if r % 3 == 1 {
                -100
            } else {
                rng.below(vocab as u64) as i32
            }
        })
        .collect();
    let z = f64s(&logits);
    let mut want_loss = vec![0f64; rows];
    let mut want_grad = vec![0f64; rows * vocab];
    for r in 0..rows {
        if targets[r] == -100 {
            continue;
        }
        let row = &z[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        want_loss[r] = lse - row[targets[r] as usize];
        for j in 0..vocab {
            let onehot = if j as i32 == targets[r] { 1.0 } else { 0.0 };
            want_grad[r * vocab + j] = scale as f64 * ((row[j] - lse).exp() - onehot);
        }
    }
    let mut zb = Buf::from(&logits);
    let mut loss = vec![f32::NAN; rows];
    (T::K.cross_entropy)(
        dims(rows, BLOCK),
        loss.as_mut_ptr(),
        zb.mp(),
        targets.as_ptr(),
        vocab as i32,
        scale,
    )
    .unwrap();
    let what = format!("cross_entropy_{} rows={rows} vocab={vocab}", T::NAME);
    // Losses are accumulated in fp32 from the stored logits: f32-level tolerance.
    assert_close(&format!("{what} loss"), &loss, &want_loss, 1e-5, 1e-5);
    if scale == 0.0 {
        assert_eq!(
            zb.f32s(),
            logits.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            "{what}: logits kept"
        );
    } else {
        assert_close(
            &format!("{what} dlogits"),
            &zb.f32s(),
            &want_grad,
            1e-6,
            T::RTOL,
        );
    }
}

#[test]
fn cross_entropy_matches_reference() {
    for (rows, vocab, scale, seed) in [
        (5, 1000, 0.25, 40),
        (4, 37, 1.0, 41),
        (3, 2048, 0.0, 42),
        (2, 300, 1.0, 43),
    ] {
        both_schedules(|| {
            cross_entropy_case::<f32>(rows, vocab, scale, seed);
            cross_entropy_case::<bf16>(rows, vocab, scale, seed);
        });
    }
}

#[test]
fn cross_entropy_bad_target_gives_nan() {
    let vocab = 50;
    let logits = vec![0.5f32; 2 * vocab];
    let mut zb = Buf::from(&logits);
    let targets = [3i32, vocab as i32];
    let mut loss = [f32::NAN; 2];
    raw::emu_launch_cross_entropy_f32(
        dims(2, BLOCK),
        loss.as_mut_ptr(),
        zb.mp(),
        targets.as_ptr(),
        vocab as i32,
        1.0,
    )
    .unwrap();
    assert!((loss[0] - (vocab as f32).ln()).abs() < 1e-5, "{}", loss[0]);
    assert!(loss[1].is_nan());
    assert!(zb.f32s()[vocab..].iter().all(|v| v.is_nan()));
}

// ---- embedding, cast ---------------------------------------------------------------------

fn embedding_case<T: Elem>(n: usize, h: usize, vocab: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let table: Vec<T> = rng.vec(vocab * h, -1.0, 1.0);
    let mut ids: Vec<i32> = (0..n).map(|_| rng.below(vocab as u64) as i32).collect();
    ids[n - 1] = vocab as i32; // out of range: NaN row
    let tb = Buf::from(&table);
    let mut out = Buf::<T>::nan(n * h);
    (T::K.embedding)(
        dims(n, BLOCK),
        out.mp(),
        tb.cp(),
        ids.as_ptr(),
        h as i32,
        vocab as i32,
    )
    .unwrap();
    let got = out.vals();
    for t in 0..n - 1 {
        let src = &table[ids[t] as usize * h..(ids[t] as usize + 1) * h];
        assert_eq!(
            bytemuck::cast_slice::<T, u8>(&got[t * h..(t + 1) * h]),
            bytemuck::cast_slice::<T, u8>(src)
        );
    }
    assert!(got[(n - 1) * h..].iter().all(|v| v.to_f32().is_nan()));
}

#[test]
fn embedding_gathers_rows_exactly() {
    embedding_case::<f32>(6, 576, 30, 50);
    embedding_case::<bf16>(6, 576, 30, 51);
    embedding_case::<f32>(5, 100, 7, 52);
    embedding_case::<bf16>(5, 100, 7, 53);
}

#[test]
fn cast_round_trips_match_half() {
    let mut rng = Rng::new(60);
    for len in [4096usize, 1003, 5] {
        let mut src: Vec<f32> = (0..len).map(|_| rng.uniform(-300.0, 300.0)).collect();
        src[0] = f32::NAN;
        let mut dst = Buf::<bf16>::nan(len);
        let srcb = Buf::from(&src);
        let d = dims(grid_for(len, 8), BLOCK);
        raw::emu_launch_cast_f32_to_bf16(d, dst.mp(), srcb.vals().as_ptr(), len).unwrap();
        for (i, (&b, &s)) in dst.vals().iter().zip(&src).enumerate() {
            if s.is_nan() {
                assert!(b.is_nan());
            } else {
                assert_eq!(
                    b.to_bits(),
                    bf16::from_f32(s).to_bits(),
                    "cast_f32_to_bf16[{i}] of {s}"
                );
            }
        }
        let mut back = Buf::<f32>::nan(len);
        raw::emu_launch_cast_bf16_to_f32(d, back.mp().cast(), dst.cp(), len).unwrap();
        let want: Vec<f32> = dst.vals().iter().map(|b| b.to_f32()).collect();
        for (i, (g, w)) in back.vals().iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "cast_bf16_to_f32[{i}]"
            );
        }
    }
}

// ---- adamw, norm -------------------------------------------------------------------------

#[test]
fn adamw_matches_torch_formula_over_steps() {
    let mut rng = Rng::new(70);
    let (lr, b1, b2, eps, wd) = (1e-3f64, 0.9f64, 0.999f64, 1e-8f64, 0.01f64);
    for len in [1000usize, 1003] {
        let p0: Vec<f32> = rng.vec(len, -1.0, 1.0);
        let mut p = p0.clone();
        let (mut m, mut v) = (vec![0f32; len], vec![0f32; len]);
        let (mut rp, mut rm, mut rv) = (f64s(&p0), vec![0f64; len], vec![0f64; len]);
        for step in 1..=3i32 {
            let g: Vec<f32> = rng.vec(len, -0.5, 0.5);
            let (bc1, bc2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
            let (decay, step_size, bc2_sqrt) = (1.0 - lr * wd, lr / bc1, bc2.sqrt());
            raw::emu_launch_adamw_f32(
                dims(grid_for(len, 4), BLOCK),
                p.as_mut_ptr(),
                g.as_ptr(),
                m.as_mut_ptr(),
                v.as_mut_ptr(),
                len,
                (1.0 - b1) as f32,
                b2 as f32,
                (1.0 - b2) as f32,
                eps as f32,
                decay as f32,
                -step_size as f32,
                bc2_sqrt as f32,
            )
            .unwrap();
            for i in 0..len {
                let gi = g[i] as f64;
                rp[i] *= decay;
                rm[i] = b1 * rm[i] + (1.0 - b1) * gi;
                rv[i] = b2 * rv[i] + (1.0 - b2) * gi * gi;
                rp[i] -= step_size * rm[i] / (rv[i].sqrt() / bc2_sqrt + eps);
            }
            assert_close(
                &format!("adamw p step {step} len {len}"),
                &p,
                &rp,
                1e-7,
                1e-5,
            );
            assert_close(
                &format!("adamw m step {step} len {len}"),
                &m,
                &rm,
                1e-8,
                1e-5,
            );
            assert_close(
                &format!("adamw v step {step} len {len}"),
                &v,
                &rv,
                1e-10,
                1e-4,
            );
        }
    }
}

/// Partials per tensor (norm.cu: NORM_CHUNK 16384, NORM_MAX_PARTS 1024).
fn norm_parts(len: usize) -> usize {
    len.div_ceil(16384).clamp(1, 1024)
}

#[test]
fn sum_of_squares_two_pass_matches_f64_and_is_deterministic() {
    let mut rng = Rng::new(80);
    let tensors: Vec<Vec<f32>> = [1000usize, 16384 * 3 + 7, 1]
        .iter()
        .map(|&n| rng.vec(n, -2.0, 2.0))
        .collect();
    let parts: Vec<usize> = tensors.iter().map(|t| norm_parts(t.len())).collect();
    let total: usize = parts.iter().sum();
    let run = || {
        let mut partials = vec![f64::NAN; total];
        let mut at = 0;
        for (t, &k) in tensors.iter().zip(&parts) {
            raw::emu_launch_sumsq_partials_f32(
                dims(k, BLOCK),
                partials[at..].as_mut_ptr(),
                t.as_ptr(),
                t.len(),
            )
            .unwrap();
            at += k;
        }
        let mut out = [f64::NAN];
        raw::emu_launch_sum_partials_f64(
            dims(1, BLOCK),
            out.as_mut_ptr(),
            partials.as_ptr(),
            total as i32,
        )
        .unwrap();
        out[0]
    };
    raw::set_reverse_schedule(true);
    let reversed = run();
    raw::set_reverse_schedule(false);
    let got = run();
    assert_eq!(got.to_bits(), reversed.to_bits());
    let want: f64 = tensors.iter().flatten().map(|&x| x as f64 * x as f64).sum();
    assert!((got - want).abs() <= 1e-5 * want, "got {got}, want {want}");
    assert_eq!(got.to_bits(), run().to_bits());
}
