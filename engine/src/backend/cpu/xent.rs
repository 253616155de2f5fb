//! Chunked cross-entropy of the CPU backend: the lm_head GEMM, log-softmax, per-token loss
//! and the gradient to the hidden states, [`ROWS`] tokens at a time so the `[n, vocab]`
//! logits never exist whole (only a `[ROWS, vocab]` scratch).
//!
//! For each chunk: `z = hidden·lm_headᵀ` (faer), then per row (rayon) with `mx = max z`,
//! `e_j = exp(z_j − mx)` (`simd.rs`), `s = Σ e_j` (fixed lane order, `simd.rs`), `lse = mx + ln s`, `loss = lse − z_t`;
//! when a gradient is wanted the row becomes `dz_j = e_j · (loss_scale / s) − [j = t]·loss_scale`
//! (all zero for ignored targets) and `dhidden = dz·lm_head` (faer, overwriting).
//! Only tokens with a target reach the lm_head: when some are ignored (prompt tokens of SFT,
//! padding), their rows are gathered into a dense block first and the results scattered
//! back (losses 0 and dhidden 0 for ignored tokens), so masked tokens cost no lm_head FLOPs.

use rayon::prelude::*;

use super::gemm::Gemm;
use super::gemm_bf16::{gemm_packed, pack_b, PackedB};
use super::simd::{exp_sub_sum, row_max, scale_row};
use super::Real;
use crate::error::{Error, Result};

/// Tokens per chunk: the logits scratch is `ROWS × vocab`.
const ROWS: usize = 128;
/// The target value that marks an ignored token.
const IGNORE: i32 = -100;

/// The dims of one call: `n` tokens, width `h`, `vocab` classes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub n: usize,
    pub h: usize,
    pub vocab: usize,
}

/// Per-token losses of `hidden [n, h] · lm_head [vocab, h]ᵀ` against `targets`, and when
/// `dhidden` is given, `∂(loss_scale · Σ loss)/∂hidden` written into it. With
/// `bf16 = Some(min_rows)` (f32 only) and at least `min_rows` labelled tokens, the two lm_head
/// products run bf16 × bf16 → f32 (`gemm_bf16.rs`), the lm_head packed once per call for each.
/// Lengths must have been checked; targets are checked here.
pub(crate) fn cross_entropy<T: Real>(
    dhidden: Option<&mut Vec<T>>,
    hidden: &[T],
    lm_head: &[T],
    targets: &[i32],
    d: Dims,
    loss_scale: T,
    bf16: Option<usize>,
) -> Result<Vec<f32>> {
    let Dims { n, h, vocab } = d;
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != IGNORE && (t < 0 || t as usize >= vocab))
    {
        return Err(Error::shape(
            "cross_entropy",
            format!("token {i} has target {t}, outside 0..{vocab} (and not the ignore value -100)"),
        ));
    }
    let labelled: Vec<usize> = (0..n).filter(|&i| targets[i] != IGNORE).collect();
    let head = match super::as_f32(lm_head) {
        Some(w) if bf16.is_some_and(|min| labelled.len() >= min.max(1)) => Head::Bf16 {
            fwd: pack_b(w, vocab, h, true),
            bwd: dhidden.is_some().then(|| pack_b(w, h, vocab, false)),
        },
        _ => Head::Dense(lm_head),
    };
    if labelled.len() == n {
        let mut losses = vec![0.0f32; n];
        dense(
            dhidden.map(|v| v.as_mut_slice()),
            hidden,
            &head,
            targets,
            &mut losses,
            d,
            loss_scale,
        );
        return Ok(losses);
    }
    // Only labelled tokens reach the lm_head: gather their rows, run them densely, scatter
    // the losses and gradient rows back (ignored tokens: loss 0, gradient 0).
    let m = labelled.len();
    let mut xs = vec![T::ZERO; m * h];
    for (dst, &i) in xs.chunks_exact_mut(h.max(1)).zip(&labelled) {
        dst.copy_from_slice(&hidden[i * h..(i + 1) * h]);
    }
    let ts: Vec<i32> = labelled.iter().map(|&i| targets[i]).collect();
    let mut ls = vec![0.0f32; m];
    let mut dxs = dhidden.as_ref().map(|_| vec![T::ZERO; m * h]);
    dense(
        dxs.as_deref_mut(),
        &xs,
        &head,
        &ts,
        &mut ls,
        Dims { n: m, h, vocab },
        loss_scale,
    );
    let mut losses = vec![0.0f32; n];
    for (&i, &l) in labelled.iter().zip(&ls) {
        losses[i] = l;
    }
    if let (Some(dh), Some(dxs)) = (dhidden, dxs) {
        dh[..n * h].fill(T::ZERO);
        for (src, &i) in dxs.chunks_exact(h.max(1)).zip(&labelled) {
            dh[i * h..(i + 1) * h].copy_from_slice(src);
        }
    }
    Ok(losses)
}

/// The lm_head as the products read it.
enum Head<'a, T> {
    /// `[vocab, h]` values, multiplied in `T`.
    Dense(&'a [T]),
    /// Packed for the bf16 products: `fwd` for `hidden·lm_headᵀ`, `bwd` for `dz·lm_head`.
    Bf16 { fwd: PackedB, bwd: Option<PackedB> },
}

impl<T: Real> Head<'_, T> {
    /// `z [r, vocab] = x [r, h]·lm_headᵀ`.
    fn logits(&self, z: &mut [T], x: &[T], r: usize, d: Dims) {
        match self {
            Head::Dense(w) => Gemm {
                m: r,
                n: d.vocab,
                k: d.h,
                trans_a: false,
                trans_b: true,
            }
            .run(z, x, w, T::ONE, T::ZERO),
            Head::Bf16 { fwd, .. } => gemm_packed(
                f32s_mut(z),
                super::as_f32(x).expect("f32"),
                r,
                fwd,
                1.0,
                0.0,
            ),
        }
    }

    /// `dx [r, h] = dz [r, vocab]·lm_head`.
    fn input_grad(&self, dx: &mut [T], dz: &[T], r: usize, d: Dims) {
        match self {
            Head::Dense(w) => Gemm {
                m: r,
                n: d.h,
                k: d.vocab,
                trans_a: false,
                trans_b: false,
            }
            .run(dx, dz, w, T::ONE, T::ZERO),
            Head::Bf16 { bwd, .. } => {
                let bwd = bwd.as_ref().expect("packed for the gradient");
                gemm_packed(
                    f32s_mut(dx),
                    super::as_f32(dz).expect("f32"),
                    r,
                    bwd,
                    1.0,
                    0.0,
                )
            }
        }
    }
}

/// `s` as f32 (the bf16 head exists for f32 buffers only).
fn f32s_mut<T: Real>(s: &mut [T]) -> &mut [f32] {
    super::as_f32_mut(s).expect("the bf16 mode is f32 only")
}

/// The chunked computation over `d.n` rows, writing `losses` and, when given, every row of
/// `dhidden` (rows with ignored targets get zeros).
fn dense<T: Real>(
    mut dhidden: Option<&mut [T]>,
    hidden: &[T],
    head: &Head<'_, T>,
    targets: &[i32],
    losses: &mut [f32],
    d: Dims,
    loss_scale: T,
) {
    let Dims { n, h, vocab } = d;
    let want_grad = dhidden.is_some();
    let mut logits = vec![T::ZERO; ROWS.min(n) * vocab];
    let mut c0 = 0;
    while c0 < n {
        let r = ROWS.min(n - c0);
        let tg = &targets[c0..c0 + r];
        let rows = c0..c0 + r;
        c0 += r;
        let z = &mut logits[..r * vocab];
        head.logits(z, &hidden[rows.start * h..rows.end * h], r, d);
        z.par_chunks_mut(vocab)
            .zip(tg.par_iter())
            .zip(losses[rows.clone()].par_iter_mut())
            .for_each(|((row, &t), loss)| row_softmax(row, t, want_grad, loss_scale, loss));
        if let Some(dh) = dhidden.as_deref_mut() {
            head.input_grad(&mut dh[rows.start * h..rows.end * h], z, r, d);
        }
    }
}

/// Loss of one row of logits against target `t`; with `want_grad`, the row is replaced by
/// its scaled gradient (zeros when `t` is ignored).
fn row_softmax<T: Real>(row: &mut [T], t: i32, want_grad: bool, scale: T, loss: &mut f32) {
    if t == IGNORE {
        *loss = 0.0;
        if want_grad {
            row.fill(T::ZERO);
        }
        return;
    }
    let t = t as usize;
    let zt = row[t];
    let mx = row_max(row);
    let s = exp_sub_sum(row, mx);
    let lse = mx + s.ln();
    *loss = (lse - zt).to_f32();
    if want_grad {
        scale_row(row, scale / s);
        row[t] -= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::testutil::{check_grad, in_pool, randn, randn_f32, same_bits, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// Losses by the definition, in f64, one token at a time.
    fn reference(hidden: &[f64], lm: &[f64], targets: &[i32], h: usize, vocab: usize) -> Vec<f64> {
        targets
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t < 0 {
                    return 0.0;
                }
                let z: Vec<f64> = (0..vocab)
                    .map(|v| (0..h).map(|k| hidden[i * h + k] * lm[v * h + k]).sum())
                    .collect();
                let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
                lse - z[t as usize]
            })
            .collect()
    }

    fn targets(rng: &mut Rng, n: usize, vocab: usize) -> Vec<i32> {
        (0..n)
            .map(|_| {
                if rng.uniform() < 0.2 {
                    IGNORE
                } else {
                    (rng.next_u64() % vocab as u64) as i32
                }
            })
            .collect()
    }

    #[test]
    fn losses_and_gradient_match_reference_and_finite_differences() {
        let be = CpuBackend::<f64>::new();
        // n spans two chunks, the second partial.
        let (n, h, vocab) = (ROWS + 5, 6, 11);
        let mut rng = Rng(10);
        let hidden = randn(&mut rng, n * h);
        let lm = randn(&mut rng, vocab * h);
        let tg = targets(&mut rng, n, vocab);
        let scale = 0.37f32;
        let mut dh = vec![f64::NAN; n * h];
        let losses = be
            .cross_entropy(Some(&mut dh), &hidden, &lm, &tg, n, h, vocab, scale)
            .unwrap();
        let want = reference(&hidden, &lm, &tg, h, vocab);
        for i in 0..n {
            assert!((f64::from(losses[i]) - want[i]).abs() < 1e-5 * want[i].max(1.0));
        }
        // Losses come back as f32, too coarse for finite differences: differentiate the f64
        // reference (checked equal to them above) instead.
        let f = |x: &[f64]| f64::from(scale) * reference(x, &lm, &tg, h, vocab).iter().sum::<f64>();
        let idx: Vec<usize> = (0..n * h).step_by(7).chain(n * h - 6..n * h).collect();
        check_grad("cross_entropy dhidden", &hidden, &dh, Some(&idx), 1e-6, f);
        for (i, &t) in tg.iter().enumerate() {
            if t == IGNORE {
                assert!(dh[i * h..(i + 1) * h].iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn ignored_chunks_and_bad_targets() {
        let be = CpuBackend::<f32>::new();
        let (n, h, vocab) = (ROWS + 3, 4, 5);
        let mut rng = Rng(12);
        let hidden = randn_f32(&mut rng, n * h);
        let lm = randn_f32(&mut rng, vocab * h);
        let mut tg = vec![IGNORE; n];
        tg[ROWS + 1] = 2;
        let mut dh = vec![f32::NAN; n * h];
        let l = be
            .cross_entropy(Some(&mut dh), &hidden, &lm, &tg, n, h, vocab, 1.0)
            .unwrap();
        assert!(l
            .iter()
            .enumerate()
            .all(|(i, &v)| (v > 0.0) == (i == ROWS + 1)));
        assert!(dh.iter().all(|v| v.is_finite()));
        tg[0] = vocab as i32;
        let err = be
            .cross_entropy(None, &hidden, &lm, &tg, n, h, vocab, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("cross_entropy"), "{err}");
        tg[0] = -1;
        assert!(be
            .cross_entropy(None, &hidden, &lm, &tg, n, h, vocab, 1.0)
            .is_err());
    }

    #[test]
    fn thread_count_bit_identity() {
        let be = CpuBackend::<f32>::new();
        let (n, h, vocab) = (300, 64, 1000);
        let mut rng = Rng(13);
        let hidden = randn_f32(&mut rng, n * h);
        let lm = randn_f32(&mut rng, vocab * h);
        let tg = targets(&mut rng, n, vocab);
        let run = |threads| {
            in_pool(threads, || {
                let mut dh = vec![0.0f32; n * h];
                let l = be
                    .cross_entropy(Some(&mut dh), &hidden, &lm, &tg, n, h, vocab, 0.01)
                    .unwrap();
                (l, dh)
            })
        };
        let (l1, d1) = run(1);
        for threads in [2, 3] {
            let (l2, d2) = run(threads);
            assert!(same_bits(&l1, &l2), "{threads} threads");
            assert!(same_bits(&d1, &d2), "{threads} threads");
        }
    }

    /// The bf16 mode: losses and gradients within bf16 rounding of f32, masked rows still 0,
    /// bit-identical on any thread count and whether or not other rows are masked; below the
    /// row threshold, the f32 bits.
    #[test]
    fn bf16_head_tracks_f32_and_repeats() {
        let Ok(default) = CpuBackend::<f32>::with_precision(crate::backend::Precision::Bf16) else {
            eprintln!("skipped: this CPU has no AVX512_BF16 (the bf16 mode cannot run here)");
            return;
        };
        let bf = default.clone().with_bf16_min_rows(1);
        let f32be = CpuBackend::<f32>::new();
        let (n, h, vocab) = (ROWS + 37, 48, 700);
        let mut rng = Rng(15);
        let hidden = randn_f32(&mut rng, n * h);
        let lm: Vec<f32> = randn_f32(&mut rng, vocab * h)
            .iter()
            .map(|x| x * 0.2)
            .collect();
        let mut tg = targets(&mut rng, n, vocab);
        for i in (0..n).step_by(5) {
            tg[i] = IGNORE;
        }
        let run = |be: &CpuBackend<f32>, tg: &[i32], threads| {
            in_pool(threads, || {
                let mut dh = vec![f32::NAN; n * h];
                let l = be
                    .cross_entropy(Some(&mut dh), &hidden, &lm, tg, n, h, vocab, 0.5)
                    .unwrap();
                (l, dh)
            })
        };
        let (lf, df) = run(&f32be, &tg, 2);
        let (lb, db) = run(&bf, &tg, 2);
        let (mut dmax, mut gmax) = (0f32, 0f32);
        for i in 0..n {
            assert_eq!(lb[i] == 0.0, tg[i] == IGNORE, "row {i}");
            dmax = dmax.max((lb[i] - lf[i]).abs() / lf[i].max(1.0));
        }
        for (x, y) in db.iter().zip(&df) {
            gmax = gmax.max((x - y).abs());
        }
        let gscale = df.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(dmax < 2e-2, "loss differs from f32 by {dmax} (relative)");
        assert!(dmax > 0.0, "the bf16 mode computed in f32");
        assert!(
            gmax < 3e-2 * gscale,
            "gradient differs from f32 by {gmax} (max |g| {gscale})"
        );
        // with the default threshold, fewer labelled tokens than it: the f32 products
        let few: Vec<i32> = (0..n)
            .map(|i| if i < 40 { tg[i] } else { IGNORE })
            .collect();
        let labelled = few.iter().filter(|&&t| t != IGNORE).count();
        assert!(labelled > 0 && labelled < crate::backend::cpu::BF16_MIN_ROWS);
        let ((ld, dd), (lf, df)) = (run(&default, &few, 2), run(&f32be, &few, 2));
        assert!(same_bits(&ld, &lf) && same_bits(&dd, &df));
        for threads in [1, 3] {
            let (l, d) = run(&bf, &tg, threads);
            assert!(
                same_bits(&l, &lb) && same_bits(&d, &db),
                "{threads} threads"
            );
        }
        // unmasking every row changes nothing in the rows labelled before
        let all: Vec<i32> = tg
            .iter()
            .map(|&t| if t == IGNORE { 1 } else { t })
            .collect();
        let (la, da) = run(&bf, &all, 2);
        for i in (0..n).filter(|&i| tg[i] != IGNORE) {
            assert_eq!(la[i].to_bits(), lb[i].to_bits(), "row {i}");
            assert!(
                same_bits(&da[i * h..(i + 1) * h], &db[i * h..(i + 1) * h]),
                "row {i}"
            );
        }
    }

    /// Timing at SmolLM2's lm_head shape for `XENT_N` tokens (default 256), single thread:
    /// `cargo test --lib xent_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn xent_timing() {
        let n: usize = std::env::var("XENT_N").map_or(256, |v| v.parse().unwrap());
        let (h, vocab) = (576, 49152);
        let be = CpuBackend::<f32>::new();
        let mut rng = Rng(14);
        let hidden: Vec<f32> = randn_f32(&mut rng, n * h)
            .iter()
            .map(|x| x * 0.05)
            .collect();
        let lm: Vec<f32> = randn_f32(&mut rng, vocab * h)
            .iter()
            .map(|x| x * 0.05)
            .collect();
        let tg = targets(&mut rng, n, vocab);
        let mut dh = vec![0.0f32; n * h];
        in_pool(1, || {
            let t = std::time::Instant::now();
            be.cross_entropy(Some(&mut dh), &hidden, &lm, &tg, n, h, vocab, 1.0)
                .unwrap();
            let dt = t.elapsed().as_secs_f64();
            let gflop = 4.0 * (n * h * vocab) as f64 * 1e-9;
            println!("n={n}: {dt:.3} s, {:.1} GFLOP/s", gflop / dt);
        });
    }
}
