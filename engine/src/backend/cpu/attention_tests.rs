//! Tests of the CPU attention (`attention.rs`) and its reference: the one-query-at-a-time
//! forward and backward by the definition, against which the blocked kernels are checked;
//! finite-difference gradients in f64 (GQA, packed samples, batch 2), packed rows equal to
//! separate samples, shape errors, thread-count bit-identity and a timing harness; decoding
//! attention (one query per sequence against a KV cache) against the full forward.

use rayon::prelude::*;

use super::attention::{score_scale, Dims, Grads, Saved};
use super::Real;

#[inline(always)]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// The forward by the definition, one query at a time; one rayon item per batch row.
pub(crate) fn forward_naive<T: Real>(
    d: &Dims,
    out: &mut [T],
    lse: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    starts: &[u32],
) {
    let (seq, hd, heads, kvh) = (d.seq, d.hd, d.heads, d.kv_heads);
    let (qw, kw) = (heads * hd, kvh * hd);
    if seq == 0 || qw == 0 {
        return;
    }
    let scale: T = score_scale(d);
    out.par_chunks_mut(seq * qw)
        .zip(lse.par_chunks_mut(seq * heads))
        .enumerate()
        .for_each(|(b, (out, lse))| {
            let q = &q[b * seq * qw..(b + 1) * seq * qw];
            let k = &k[b * seq * kw..(b + 1) * seq * kw];
            let v = &v[b * seq * kw..(b + 1) * seq * kw];
            let starts = &starts[b * seq..(b + 1) * seq];
            let mut p = vec![T::ZERO; seq];
            for h in 0..heads {
                let g = h / d.group;
                for i in 0..seq {
                    let s0 = starts[i] as usize;
                    let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
                    let mut mx = T::NEG_INFINITY;
                    for j in s0..=i {
                        let s = dot(qi, &k[j * kw + g * hd..j * kw + (g + 1) * hd]) * scale;
                        p[j] = s;
                        mx = mx.max(s);
                    }
                    let mut l = T::ZERO;
                    for pj in &mut p[s0..=i] {
                        *pj = (*pj - mx).exp();
                        l += *pj;
                    }
                    let oi = &mut out[i * qw + h * hd..i * qw + (h + 1) * hd];
                    oi.fill(T::ZERO);
                    for j in s0..=i {
                        let w = p[j] / l;
                        for (o, &vv) in oi
                            .iter_mut()
                            .zip(&v[j * kw + g * hd..j * kw + (g + 1) * hd])
                        {
                            *o += w * vv;
                        }
                    }
                    lse[i * heads + h] = mx + l.ln();
                }
            }
        });
}

/// The backward by the definition, one query at a time; one rayon item per batch row.
pub(crate) fn backward_naive<T: Real>(d: &Dims, g: Grads<'_, T>, s: Saved<'_, T>, starts: &[u32]) {
    let (seq, hd, heads, kvh) = (d.seq, d.hd, d.heads, d.kv_heads);
    let (qw, kw) = (heads * hd, kvh * hd);
    if seq == 0 || qw == 0 {
        return;
    }
    let scale: T = score_scale(d);
    g.dq.par_chunks_mut(seq * qw)
        .zip(g.dk.par_chunks_mut(seq * kw))
        .zip(g.dv.par_chunks_mut(seq * kw))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            dq.fill(T::ZERO);
            dk.fill(T::ZERO);
            dv.fill(T::ZERO);
            let rq = b * seq * qw..(b + 1) * seq * qw;
            let rk = b * seq * kw..(b + 1) * seq * kw;
            let (q, dout, out) = (&s.q[rq.clone()], &s.dout[rq.clone()], &s.out[rq]);
            let (k, v) = (&s.k[rk.clone()], &s.v[rk]);
            let lse = &s.lse[b * seq * heads..(b + 1) * seq * heads];
            let starts = &starts[b * seq..(b + 1) * seq];
            for h in 0..heads {
                let gk = h / d.group;
                for i in 0..seq {
                    let s0 = starts[i] as usize;
                    let qs = i * qw + h * hd..i * qw + (h + 1) * hd;
                    let (qi, doi) = (&q[qs.clone()], &dout[qs.clone()]);
                    let di = dot(doi, &out[qs.clone()]);
                    let li = lse[i * heads + h];
                    for j in s0..=i {
                        let ks = j * kw + gk * hd..j * kw + (gk + 1) * hd;
                        let p = (dot(qi, &k[ks.clone()]) * scale - li).exp();
                        let dp = dot(doi, &v[ks.clone()]);
                        let ds = p * (dp - di) * scale;
                        for c in 0..hd {
                            dv[ks.start + c] += p * doi[c];
                            dq[qs.start + c] += ds * k[ks.start + c];
                            dk[ks.start + c] += ds * qi[c];
                        }
                    }
                }
            }
        });
}

use crate::backend::cpu::testutil::{
    check_grad, dot as fdot, in_pool, randn, randn_f32, same_bits, Rng,
};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;

/// One attention problem: dims, sample starts and random q, k, v.
struct Case {
    batch: usize,
    seq: usize,
    heads: usize,
    kvh: usize,
    hd: usize,
    starts: Vec<u32>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
}

/// Rows of `seq` tokens split into samples of the given lengths (per row).
fn case(
    rng: &mut Rng,
    seq: usize,
    samples: &[&[usize]],
    heads: usize,
    kvh: usize,
    hd: usize,
) -> Case {
    let batch = samples.len();
    let mut starts = Vec::new();
    for row in samples {
        assert_eq!(row.iter().sum::<usize>(), seq);
        let mut s = 0;
        for &len in row.iter() {
            starts.extend(std::iter::repeat_n(s as u32, len));
            s += len;
        }
    }
    let n = batch * seq;
    Case {
        batch,
        seq,
        heads,
        kvh,
        hd,
        starts,
        q: randn(rng, n * heads * hd),
        k: randn(rng, n * kvh * hd),
        v: randn(rng, n * kvh * hd),
    }
}

fn fwd(c: &Case, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let be = CpuBackend::<f64>::new();
    let n = c.batch * c.seq;
    let mut out = vec![f64::NAN; n * c.heads * c.hd];
    let mut lse = vec![f64::NAN; n * c.heads];
    be.attention_forward(
        &mut out,
        &mut lse,
        &q.to_vec(),
        &k.to_vec(),
        &v.to_vec(),
        &c.starts,
        c.batch,
        c.seq,
        c.heads,
        c.kvh,
        c.hd,
    )
    .unwrap();
    (out, lse)
}

fn bwd(c: &Case, dout: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let be = CpuBackend::<f64>::new();
    let (out, lse) = fwd(c, &c.q, &c.k, &c.v);
    let mut dq = vec![f64::NAN; c.q.len()];
    let mut dk = vec![f64::NAN; c.k.len()];
    let mut dv = vec![f64::NAN; c.v.len()];
    be.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &dout.to_vec(),
        &c.q,
        &c.k,
        &c.v,
        &out,
        &lse,
        &c.starts,
        c.batch,
        c.seq,
        c.heads,
        c.kvh,
        c.hd,
    )
    .unwrap();
    (dq, dk, dv)
}

fn grad_check(c: &Case, seed: u64) {
    let mut rng = Rng(seed);
    let dout = randn(&mut rng, c.q.len());
    let (dq, dk, dv) = bwd(c, &dout);
    let tol = 1e-6;
    check_grad("attention dq", &c.q, &dq, None, tol, |q| {
        fdot(&dout, &fwd(c, q, &c.k, &c.v).0)
    });
    check_grad("attention dk", &c.k, &dk, None, tol, |k| {
        fdot(&dout, &fwd(c, &c.q, k, &c.v).0)
    });
    check_grad("attention dv", &c.v, &dv, None, tol, |v| {
        fdot(&dout, &fwd(c, &c.q, &c.k, v).0)
    });
}

#[test]
fn gradients_gqa_packed_batch2() {
    let mut rng = Rng(20);
    // 4 query heads on 2 kv heads; row 0 holds two samples, row 1 one.
    let c = case(&mut rng, 7, &[&[3, 4], &[7]], 4, 2, 4);
    grad_check(&c, 21);
    // Multi-query (one kv head), three samples in a row.
    let c = case(&mut rng, 6, &[&[1, 2, 3]], 3, 1, 5);
    grad_check(&c, 22);
}

/// Attention over a packed row equals attention over each sample run on its own.
#[test]
fn packed_equals_separate() {
    let mut rng = Rng(23);
    let (heads, kvh, hd) = (4, 2, 8);
    let lens = [5usize, 9, 2];
    let seq: usize = lens.iter().sum();
    let c = case(&mut rng, seq, &[&lens], heads, kvh, hd);
    let (out, lse) = fwd(&c, &c.q, &c.k, &c.v);
    let mut rng = Rng(24);
    let dout = randn(&mut rng, c.q.len());
    let (dq, dk, dv) = bwd(&c, &dout);
    let (qw, kw) = (heads * hd, kvh * hd);
    let mut s0 = 0;
    for &len in &lens {
        let sub = Case {
            batch: 1,
            seq: len,
            heads,
            kvh,
            hd,
            starts: vec![0; len],
            q: c.q[s0 * qw..(s0 + len) * qw].to_vec(),
            k: c.k[s0 * kw..(s0 + len) * kw].to_vec(),
            v: c.v[s0 * kw..(s0 + len) * kw].to_vec(),
        };
        let (o, l) = fwd(&sub, &sub.q, &sub.k, &sub.v);
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&o, &out[s0 * qw..(s0 + len) * qw]));
        assert!(close(&l, &lse[s0 * heads..(s0 + len) * heads]));
        let (sq, sk, sv) = bwd(&sub, &dout[s0 * qw..(s0 + len) * qw]);
        assert!(close(&sq, &dq[s0 * qw..(s0 + len) * qw]));
        assert!(close(&sk, &dk[s0 * kw..(s0 + len) * kw]));
        assert!(close(&sv, &dv[s0 * kw..(s0 + len) * kw]));
        s0 += len;
    }
}

/// The blocked forward and backward equal the one-query-at-a-time definition, on rows
/// longer than a query block with samples crossing block boundaries.
#[test]
fn blocked_matches_naive() {
    let mut rng = Rng(26);
    let c = case(&mut rng, 150, &[&[30, 70, 50], &[1, 149]], 6, 2, 16);
    let d = Dims::new("test", &c.starts, c.batch, c.seq, c.heads, c.kvh, c.hd).unwrap();
    let (out, lse) = fwd(&c, &c.q, &c.k, &c.v);
    let (mut o2, mut l2) = (vec![0.0; out.len()], vec![0.0; lse.len()]);
    forward_naive(&d, &mut o2, &mut l2, &c.q, &c.k, &c.v, &c.starts);
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() < 1e-12 * x.abs().max(1.0))
    };
    assert!(close(&out, &o2));
    assert!(close(&lse, &l2));
    let dout = randn(&mut rng, out.len());
    let (dq, dk, dv) = bwd(&c, &dout);
    let (mut q2, mut k2, mut v2) = (
        vec![0.0; dq.len()],
        vec![0.0; dk.len()],
        vec![0.0; dv.len()],
    );
    backward_naive(
        &d,
        Grads {
            dq: &mut q2,
            dk: &mut k2,
            dv: &mut v2,
        },
        Saved {
            dout: &dout,
            q: &c.q,
            k: &c.k,
            v: &c.v,
            out: &out,
            lse: &lse,
        },
        &c.starts,
    );
    assert!(close(&dq, &q2));
    assert!(close(&dk, &k2));
    assert!(close(&dv, &v2));
}

/// Timing at SmolLM2-135M head shapes, single thread, for `ATT_SHAPE=batch,seq,reps`
/// (default 4,256,3): `cargo test --lib attention_timing -- --ignored --nocapture`
/// (under `perf stat -e task-clock` on a busy machine).
#[test]
#[ignore]
fn attention_timing() {
    let spec = std::env::var("ATT_SHAPE").unwrap_or_else(|_| "4,256,3".into());
    let v: Vec<usize> = spec.split(',').map(|x| x.parse().unwrap()).collect();
    let (batch, seq, reps) = (v[0], v[1], v[2]);
    let be = CpuBackend::<f32>::new();
    let (heads, kvh, hd) = (9, 3, 64);
    let n = batch * seq;
    let mut rng = Rng(27);
    let starts = vec![0u32; n];
    let q = randn_f32(&mut rng, n * heads * hd);
    let k = randn_f32(&mut rng, n * kvh * hd);
    let v = randn_f32(&mut rng, n * kvh * hd);
    let dout = randn_f32(&mut rng, n * heads * hd);
    let mut out = vec![0.0f32; q.len()];
    let mut lse = vec![0.0f32; n * heads];
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; q.len()],
        vec![0.0f32; k.len()],
        vec![0.0f32; v.len()],
    );
    let flops = (batch * heads) as f64 * (seq * seq) as f64 / 2.0 * hd as f64 * 2.0;
    in_pool(1, || {
        let (mut tf, mut tb) = (0.0, 0.0);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            be.attention_forward(
                &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
            )
            .unwrap();
            tf += t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            be.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                heads, kvh, hd,
            )
            .unwrap();
            tb += t.elapsed().as_secs_f64();
        }
        let r = reps as f64;
        println!(
            "batch {batch} seq {seq}: fwd {:.2} ms ({:.1} GFLOP/s), bwd {:.2} ms ({:.1} GFLOP/s)",
            tf / r * 1e3,
            2.0 * flops * r / tf * 1e-9,
            tb / r * 1e3,
            5.0 * flops * r / tb * 1e-9
        );
    });
}

#[test]
fn rejects_bad_starts_and_shapes() {
    let be = CpuBackend::<f32>::new();
    let (mut out, mut lse) = (vec![0.0f32; 2 * 4], vec![0.0f32; 2]);
    let q = vec![0.0f32; 8];
    let kv = vec![0.0f32; 8];
    let err = be
        .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 2], 1, 2, 1, 1, 4)
        .unwrap_err();
    assert!(err.to_string().contains("attention_forward"), "{err}");
    assert!(be
        .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 0], 1, 2, 2, 1, 4)
        .is_err());
    assert!(be
        .attention_forward(&mut out, &mut lse, &q, &kv, &kv, &[0, 0], 1, 2, 1, 2, 4)
        .is_err());
}

#[test]
fn thread_count_bit_identity() {
    let be = CpuBackend::<f32>::new();
    let (batch, seq, heads, kvh, hd) = (2, 96, 6, 2, 16);
    let n = batch * seq;
    let mut rng = Rng(25);
    let starts: Vec<u32> = (0..n).map(|t| if t % seq < 40 { 0 } else { 40 }).collect();
    let q = randn_f32(&mut rng, n * heads * hd);
    let k = randn_f32(&mut rng, n * kvh * hd);
    let v = randn_f32(&mut rng, n * kvh * hd);
    let dout = randn_f32(&mut rng, n * heads * hd);
    let run = |threads| {
        in_pool(threads, || {
            let mut out = vec![0.0f32; q.len()];
            let mut lse = vec![0.0f32; n * heads];
            be.attention_forward(
                &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
            )
            .unwrap();
            let (mut dq, mut dk, mut dv) = (
                vec![0.0f32; q.len()],
                vec![0.0f32; k.len()],
                vec![0.0f32; v.len()],
            );
            be.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                heads, kvh, hd,
            )
            .unwrap();
            [out, lse, dq, dk, dv]
        })
    };
    let a = run(1);
    for threads in [2, 3] {
        let b = run(threads);
        for (x, y) in a.iter().zip(&b) {
            assert!(same_bits(x, y), "{threads} threads");
        }
    }
}

/// Decoding: each sequence's queries, put one at a time against a cache that holds that
/// sequence's keys and values at rows `first ..` (other rows random), give the full forward's
/// outputs at every position (f64, to rounding); f32 results are the same for 1 and 3 threads.
#[test]
fn decode_matches_the_full_forward_at_every_position() {
    let mut rng = Rng(31);
    let (seq, heads, kvh, hd) = (9, 4, 2, 8);
    let c = case(&mut rng, seq, &[&[seq], &[seq]], heads, kvh, hd);
    let (out, _) = fwd(&c, &c.q, &c.k, &c.v);
    let (qw, kw) = (heads * hd, kvh * hd);
    // a cache of 3 slots of 12 rows: row 1 of the batch in slot 0, row 0 in slot 2
    let (slots, max_len) = (3, 12);
    let first = [2 * max_len as u32, 0];
    let mut kc = randn(&mut rng, slots * max_len * kw);
    let mut vc = randn(&mut rng, slots * max_len * kw);
    let be = CpuBackend::<f64>::new();
    for (b, &f) in first.iter().enumerate() {
        let rows: Vec<u32> = (0..seq as u32).map(|t| f + t).collect();
        let src = |x: &[f64]| x[b * seq * kw..(b + 1) * seq * kw].to_vec();
        be.copy_rows(&mut kc, &src(&c.k), &rows, kw).unwrap();
        be.copy_rows(&mut vc, &src(&c.v), &rows, kw).unwrap();
    }
    for pos in 0..seq {
        let mut q = Vec::new();
        for b in 0..2 {
            let t = b * seq + pos;
            q.extend_from_slice(&c.q[t * qw..(t + 1) * qw]);
        }
        let mut got = vec![f64::NAN; 2 * qw];
        let last = [pos as u32; 2];
        be.attention_decode(&mut got, &q, &kc, &vc, &first, &last, heads, kvh, hd)
            .unwrap();
        for b in 0..2 {
            let t = b * seq + pos;
            for (x, y) in got[b * qw..(b + 1) * qw].iter().zip(&out[t * qw..]) {
                assert!(
                    (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
                    "pos {pos}: {x} vs {y}"
                );
            }
        }
    }
    let e = be
        .attention_decode(
            &mut vec![0.0; 2 * qw],
            &c.q[..2 * qw].to_vec(),
            &kc,
            &vc,
            &first,
            &[12, 0],
            heads,
            kvh,
            hd,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("query 0: keys 24 ..= 36 outside"),
        "{e}"
    );
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (q, k, v) = (f32s(&c.q[..2 * qw]), f32s(&kc), f32s(&vc));
    let run = |threads| {
        in_pool(threads, || {
            let mut o = vec![0f32; 2 * qw];
            CpuBackend::<f32>::new()
                .attention_decode(&mut o, &q, &k, &v, &first, &[8, 5], heads, kvh, hd)
                .unwrap();
            o
        })
    };
    assert!(same_bits(&run(1), &run(3)));
}
