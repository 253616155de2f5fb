//! Attention forward (kernels/attention.cu) through the emulator against an f64 reference of
//! causal GQA attention with packed samples: outputs and saved log-sum-exp, f32 and bf16.
//! Neighbours: ../kernels_emu.rs (crate root), ops.rs (the other families), ffi.rs.

use super::ffi::{assert_close, both_schedules, dims, f64s, Buf, Elem, Rng};
use half::bf16;

struct Shape {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    /// One sample per row (keys span many 32-key chunks) instead of random packing.
    whole_rows: bool,
}

/// Sample starts for each row: samples of random lengths packed back to back.
fn packed_starts(rng: &mut Rng, batch: usize, seq: usize) -> Vec<i32> {
    let mut starts = Vec::with_capacity(batch * seq);
    for _ in 0..batch {
        let mut start = 0;
        let mut left = 0;
        for i in 0..seq {
            if left == 0 {
                start = i;
                left = 1 + rng.below(seq as u64 / 2 + 1) as usize;
            }
            starts.push(start as i32);
            left -= 1;
        }
    }
    starts
}

fn attention_case<T: Elem>(s: &Shape, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = s.batch * s.seq;
    let (qw, kw) = (s.heads * s.hd, s.kv_heads * s.hd);
    let q: Vec<T> = rng.vec(n * qw, -2.0, 2.0);
    let k: Vec<T> = rng.vec(n * kw, -2.0, 2.0);
    let v: Vec<T> = rng.vec(n * kw, -1.0, 1.0);
    let starts = if s.whole_rows {
        vec![0; n]
    } else {
        packed_starts(&mut rng, s.batch, s.seq)
    };
    let scale = 1.0 / (s.hd as f64).sqrt();
    let (qf, kf, vf) = (f64s(&q), f64s(&k), f64s(&v));
    let mut want_out = vec![0f64; n * qw];
    let mut want_lse = vec![0f64; n * s.heads];
    for t in 0..n {
        let lo = t / s.seq * s.seq + starts[t] as usize;
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            let qv = &qf[t * qw + h * s.hd..t * qw + (h + 1) * s.hd];
            let scores: Vec<f64> = (lo..=t)
                .map(|j| {
                    let kv = &kf[j * kw + g * s.hd..j * kw + (g + 1) * s.hd];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + scores.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            want_lse[t * s.heads + h] = lse;
            for (idx, j) in (lo..=t).enumerate() {
                let p = (scores[idx] - lse).exp();
                for d in 0..s.hd {
                    want_out[t * qw + h * s.hd + d] += p * vf[j * kw + g * s.hd + d];
                }
            }
        }
    }
    let (qb, kb, vb) = (Buf::from(&q), Buf::from(&k), Buf::from(&v));
    let mut out = Buf::<T>::nan(n * qw);
    let mut lse = vec![f32::NAN; n * s.heads];
    let mut d = dims((n * s.heads).div_ceil(4), 128);
    d.smem = 4 * s.hd * 4;
    let args = (
        n as i32,
        s.seq as i32,
        s.heads as i32,
        s.kv_heads as i32,
        s.hd as i32,
    );
    let (nn, seq, heads, kvh, hd) = args;
    let f = T::K.attention_forward;
    f(
        d,
        out.mp(),
        lse.as_mut_ptr(),
        qb.cp(),
        kb.cp(),
        vb.cp(),
        starts.as_ptr(),
        nn,
        seq,
        heads,
        kvh,
        hd,
        scale as f32,
    )
    .unwrap();
    let what = format!(
        "attention_forward_{} seq={} heads={}/{} hd={}",
        T::NAME,
        s.seq,
        s.heads,
        s.kv_heads,
        s.hd
    );
    assert_close(&format!("{what} lse"), &lse, &want_lse, 1e-5, 1e-5);
    let atol = if T::NAME == "bf16" { 2e-3 } else { 1e-5 };
    assert_close(
        &format!("{what} out"),
        &out.f32s(),
        &want_out,
        atol,
        T::RTOL,
    );
}

#[test]
fn attention_forward_matches_reference() {
    // (batch, seq, heads, kv_heads, hd, whole_rows)
    let shapes = [
        (2, 40, 3, 1, 64, false),
        (1, 70, 4, 2, 24, false),
        (1, 100, 2, 1, 32, true),
        (3, 5, 2, 2, 128, false),
    ]
    .map(|(batch, seq, heads, kv_heads, hd, whole_rows)| Shape {
        batch,
        seq,
        heads,
        kv_heads,
        hd,
        whole_rows,
    });
    both_schedules(|| {
        for (i, s) in shapes.iter().enumerate() {
            attention_case::<f32>(s, 90 + i as u64);
            attention_case::<bf16>(s, 90 + i as u64);
        }
    });
}
