//! Op-by-op checks of any `Backend` against the CPU backend (the reference semantics), on
//! random inputs, shared by the kernel backend over the emulator (../kernel_backend.rs) and
//! over a GPU (../cuda_backend.rs). Ops whose kernels are written to round exactly like the
//! CPU (fill, copy, axpy, scale, add_bias, embedding, dropout, AdamW) must match bit for bit;
//! the rest within `atol + |ref|·rtol`, rtol 1e-5 (1e-4 where the CPU uses its polynomial
//! exp: attention, cross-entropy; GEMM-heavy results scaled by their magnitude).
//! Neighbours: model.rs (the whole Llama step), tests/kernels_emu/vs_cpu.rs (raw kernels).
#![allow(dead_code)]

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::{Backend, Precision, RopeTable};

/// SplitMix64 values uniform in [lo, hi).
pub struct Rng(pub u64);
impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32))
            .collect()
    }
}

/// Asserts `|got − want| <= atol + |want|·rtol` elementwise (NaN fails).
pub fn close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = atol + w.abs() * rtol;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol:e})"
        );
    }
}

/// Asserts bit equality.
pub fn same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// `be` against the CPU backend on the element-wise ops, GEMM, sum of squares, embedding,
/// dropout and AdamW.
pub fn elementwise_gemm_adamw<B: Backend>(be: &B) {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng(11);
    let up = |v: &[f32]| be.upload(v).unwrap();
    let down = |b: &B::Buf| be.download(b).unwrap();
    // 1003: the kernels' scalar path; 1024: their 16-byte packs.
    for len in [1003usize, 1024] {
        let x0 = rng.vec(len, -2.0, 2.0);
        let y = rng.vec(len, -2.0, 2.0);
        let (mut xc, mut xk, yk) = (x0.clone(), up(&x0), up(&y));
        cpu.axpy(&mut xc, 0.37, &y).unwrap();
        be.axpy(&mut xk, 0.37, &yk).unwrap();
        same("axpy", &down(&xk), &xc);
        cpu.scale(&mut xc, -1.3).unwrap();
        be.scale(&mut xk, -1.3).unwrap();
        same("scale", &down(&xk), &xc);
        let mut z = be.alloc(len).unwrap();
        be.copy(&mut z, &xk).unwrap();
        same("copy", &down(&z), &xc);
        be.fill(&mut z, 0.25).unwrap();
        same("fill", &down(&z), &vec![0.25; len]);
        assert_eq!(be.len(&z), len);
        for p in [0.1f32, 0.5] {
            let (mut oc, mut ok) = (vec![0f32; len], be.alloc(len).unwrap());
            cpu.dropout(&mut oc, &x0, p, 77).unwrap();
            be.dropout(&mut ok, &up(&x0), p, 77).unwrap();
            same(&format!("dropout p={p}"), &down(&ok), &oc);
        }
        let mut ok = be.alloc(len).unwrap();
        be.dropout(&mut ok, &up(&x0), 0.0, 5).unwrap();
        same("dropout p=0", &down(&ok), &x0);
        be.dropout(&mut ok, &up(&x0), 1.0, 5).unwrap();
        same("dropout p=1", &down(&ok), &vec![0.0; len]);
        assert!(be.dropout(&mut ok, &yk, 1.5, 5).is_err());
        assert!(be.axpy(&mut ok, 1.0, &up(&[1.0])).is_err());
    }
    // add_bias over rows of width 7 and 8.
    for (n, d) in [(9usize, 7usize), (8, 8)] {
        let x0 = rng.vec(n * d, -1.0, 1.0);
        let bias = rng.vec(d, -1.0, 1.0);
        let (mut xc, mut xk) = (x0.clone(), up(&x0));
        cpu.add_bias(&mut xc, &bias, n, d).unwrap();
        be.add_bias(&mut xk, &up(&bias), n, d).unwrap();
        same("add_bias", &down(&xk), &xc);
        assert!(be.add_bias(&mut xk, &up(&bias[..d - 1]), n, d).is_err());
    }
    // sum of squares over three partial sums.
    let x = rng.vec(40_000, -3.0, 3.0);
    let (sc, sk) = (
        cpu.sum_squares(&x).unwrap(),
        be.sum_squares(&up(&x)).unwrap(),
    );
    assert!((sc - sk).abs() <= 1e-5 * sc, "sum_squares {sk} vs {sc}");
    assert_eq!(be.sum_squares(&be.alloc(0).unwrap()).unwrap(), 0.0);
    // embedding, and an id past the table.
    let (vocab, h) = (13usize, 20usize);
    let table = rng.vec(vocab * h, -1.0, 1.0);
    let ids = [3u32, 0, 12, 3, 7];
    let mut oc = vec![0f32; ids.len() * h];
    let mut ok = be.alloc(ids.len() * h).unwrap();
    cpu.embedding(&mut oc, &table, &ids, h).unwrap();
    be.embedding(&mut ok, &up(&table), &ids, h).unwrap();
    same("embedding", &down(&ok), &oc);
    let e = be
        .embedding(&mut ok, &up(&table), &[1, 13, 0, 0, 0], h)
        .unwrap_err();
    assert!(e.to_string().contains("token 1 has id 13"), "{e}");
    // GEMM: every transpose combination, with and without accumulation.
    let (m, n, k) = (7usize, 9usize, 11usize);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = rng.vec(m * k, -1.0, 1.0);
        let b = rng.vec(k * n, -1.0, 1.0);
        let c0 = rng.vec(m * n, -1.0, 1.0);
        for beta in [0.0f32, 0.5] {
            let (mut cc, mut ck) = (c0.clone(), up(&c0));
            cpu.gemm(&mut cc, &a, &b, m, n, k, ta, tb, 0.7, beta)
                .unwrap();
            be.gemm(&mut ck, &up(&a), &up(&b), m, n, k, ta, tb, 0.7, beta)
                .unwrap();
            close(
                &format!("gemm ta={ta} tb={tb} beta={beta}"),
                &down(&ck),
                &cc,
                1e-5,
                1e-5,
            );
        }
    }
    let mut c = up(&[0.0; 6]);
    assert!(be
        .gemm(
            &mut c,
            &up(&[0.0; 5]),
            &up(&[0.0; 6]),
            2,
            3,
            2,
            false,
            false,
            1.0,
            0.0
        )
        .is_err());
    // AdamW over three steps, bit for bit.
    let len = 1003;
    let mut pc = rng.vec(len, -1.0, 1.0);
    let mut pk = up(&pc);
    let (mut mc, mut vc) = (vec![0f32; len], vec![0f32; len]);
    let (mut mk, mut vk) = (be.alloc(len).unwrap(), be.alloc(len).unwrap());
    for step in 1..=3u32 {
        let g = rng.vec(len, -0.5, 0.5);
        cpu.adamw(
            &mut pc, &g, &mut mc, &mut vc, 2e-3, 0.9, 0.999, 1e-8, 0.1, step,
        )
        .unwrap();
        be.adamw(
            &mut pk,
            &up(&g),
            &mut mk,
            &mut vk,
            2e-3,
            0.9,
            0.999,
            1e-8,
            0.1,
            step,
        )
        .unwrap();
        same(&format!("adamw p step {step}"), &down(&pk), &pc);
        same(&format!("adamw m step {step}"), &down(&mk), &mc);
        same(&format!("adamw v step {step}"), &down(&vk), &vc);
    }
    let g = up(&vec![0.0; len]);
    assert!(be
        .adamw(&mut pk, &g, &mut mk, &mut vk, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0)
        .is_err());
}

/// `sum_squares_each` on `be` against `be`'s own one-tensor `sum_squares` calls, bit for bit
/// per tensor and in the global norm (the host sum from 0 in order, today's formula), and
/// against the CPU backend within f32 rounding: tensors of 0, 1, 16384 (one partial), 16385,
/// 40000 and 655363 values (several), one whose partials round differently in another order,
/// then 420 small tensors (SmolLM2's 7 targets × 30 layers × A, B) and the empty list.
pub fn sum_squares_each<B: Backend>(be: &B) {
    use gradients_engine::optim::{clip_grad_norm, global_norm};
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng(31);
    let lens: Vec<usize> = [0usize, 1, 16384, 16385, 40_000, 16384 * 40 + 3, 7]
        .into_iter()
        .chain((0..420).map(|i| 64 + (i * 37) % 300))
        .collect();
    let mut host: Vec<Vec<f32>> = lens.iter().map(|&n| rng.vec(n, -2.0, 2.0)).collect();
    // Partials of f32 data usually add exactly in f64 whatever the order; these do not:
    // chunk 0 sums to 2^52 (ulp 1), each of the 39 others to 0.5, so only the documented
    // order of the reduction gives the one-call bits.
    let mut spread = vec![0f32; 16384 * 40];
    spread[0] = 67_108_864.0; // 2^26
    for c in 1..40 {
        spread[c * 16384] = 0.5;
        spread[c * 16384 + 1] = 0.5;
    }
    host.insert(6, spread);
    let bufs: Vec<B::Buf> = host.iter().map(|v| be.upload(v).unwrap()).collect();
    for count in [8, host.len()] {
        let refs: Vec<&B::Buf> = bufs[..count].iter().collect();
        let each = be.sum_squares_each(&refs).unwrap();
        assert_eq!(each.len(), count);
        let mut today = 0.0f64;
        for (i, (x, s)) in refs.iter().zip(&each).enumerate() {
            let one = be.sum_squares(x).unwrap();
            assert_eq!(
                s.to_bits(),
                one.to_bits(),
                "tensor {i}: {s} vs one call {one}"
            );
            let c = cpu.sum_squares(&host[i]).unwrap();
            assert!((s - c).abs() <= 1e-5 * c, "tensor {i}: {s} vs cpu {c}");
            today += one;
        }
        let norm = global_norm(be, &refs).unwrap();
        assert_eq!(
            norm.to_bits(),
            today.sqrt().to_bits(),
            "global norm of {count}"
        );
        // clipping reports the same norm (a max_norm above it leaves the grads as they are)
        let mut copies: Vec<B::Buf> = host[..count]
            .iter()
            .map(|v| be.upload(v).unwrap())
            .collect();
        let mut muts: Vec<&mut B::Buf> = copies.iter_mut().collect();
        let clipped = clip_grad_norm(be, &mut muts, 1e9).unwrap();
        assert_eq!(clipped.to_bits(), norm.to_bits(), "clip norm of {count}");
    }
    assert!(be.sum_squares_each(&[]).unwrap().is_empty());
    assert_eq!(global_norm::<B>(be, &[]).unwrap().to_bits(), 0f64.to_bits());
    let empty = be.alloc(0).unwrap();
    assert_eq!(be.sum_squares_each(&[&empty, &empty]).unwrap(), [0.0, 0.0]);
}

/// `be` against the CPU backend on RMSNorm, RoPE, SwiGLU and cross-entropy.
pub fn block_ops<B: Backend>(be: &B) {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng(12);
    let up = |v: &[f32]| be.upload(v).unwrap();
    let down = |b: &B::Buf| be.download(b).unwrap();
    // RMSNorm: h = 96 (packs) and 100 (scalars).
    for (n, h) in [(5usize, 96usize), (3, 100)] {
        let x = rng.vec(n * h, -2.0, 2.0);
        let w = rng.vec(h, 0.5, 1.5);
        let dout = rng.vec(n * h, -1.0, 1.0);
        let dx0 = rng.vec(n * h, -1.0, 1.0);
        let (mut oc, mut rc, mut dxc) = (vec![0f32; n * h], vec![0f32; n], dx0.clone());
        cpu.rmsnorm_forward(&mut oc, &mut rc, &x, &w, n, h, 1e-5)
            .unwrap();
        cpu.rmsnorm_backward(&mut dxc, &dout, &x, &w, &rc, n, h)
            .unwrap();
        let (mut ok, mut rk, mut dxk) = (be.alloc(n * h).unwrap(), be.alloc(n).unwrap(), up(&dx0));
        let (xk, wk) = (up(&x), up(&w));
        be.rmsnorm_forward(&mut ok, &mut rk, &xk, &wk, n, h, 1e-5)
            .unwrap();
        be.rmsnorm_backward(&mut dxk, &up(&dout), &xk, &wk, &rk, n, h)
            .unwrap();
        close("rmsnorm rstd", &down(&rk), &rc, 0.0, 1e-5);
        close("rmsnorm out", &down(&ok), &oc, 1e-6, 1e-5);
        close("rmsnorm dx", &down(&dxk), &dxc, 1e-5, 1e-5);
        assert!(be
            .rmsnorm_forward(&mut ok, &mut rk, &xk, &wk, n, h + 1, 1e-5)
            .is_err());
    }
    // RoPE forward then inverse, with a table built like RopeTable::new.
    let (n, heads, hd, max_pos) = (6usize, 3usize, 16usize, 32usize);
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..max_pos {
        for i in 0..half {
            let ang = p as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
            cos.push(ang.cos() as f32);
            sin.push(ang.sin() as f32);
        }
    }
    let tc = RopeTable::<CpuBackend<f32>> {
        cos: cos.clone(),
        sin: sin.clone(),
        max_pos,
        head_dim: hd,
    };
    let tk = RopeTable::<B> {
        cos: up(&cos),
        sin: up(&sin),
        max_pos,
        head_dim: hd,
    };
    let pos = [0u32, 5, 31, 2, 2, 17];
    let x = rng.vec(n * heads * hd, -1.0, 1.0);
    for inverse in [false, true] {
        let (mut xc, mut xk) = (x.clone(), up(&x));
        cpu.rope(&mut xc, &tc, &pos, n, heads, inverse).unwrap();
        be.rope(&mut xk, &tk, &pos, n, heads, inverse).unwrap();
        close(
            &format!("rope inverse={inverse}"),
            &down(&xk),
            &xc,
            1e-6,
            1e-5,
        );
    }
    let mut xk = up(&x);
    let e = be
        .rope(&mut xk, &tk, &[0, 1, 32, 0, 0, 0], n, heads, false)
        .unwrap_err();
    assert!(e.to_string().contains("position 32"), "{e}");
    // SwiGLU.
    for len in [1003usize, 1024] {
        let (g, u, d) = (
            rng.vec(len, -4.0, 4.0),
            rng.vec(len, -2.0, 2.0),
            rng.vec(len, -1.0, 1.0),
        );
        let (mut oc, mut dgc, mut duc) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
        cpu.swiglu_forward(&mut oc, &g, &u).unwrap();
        cpu.swiglu_backward(&mut dgc, &mut duc, &d, &g, &u).unwrap();
        let (gk, uk) = (up(&g), up(&u));
        let mut ok = be.alloc(len).unwrap();
        let (mut dgk, mut duk) = (be.alloc(len).unwrap(), be.alloc(len).unwrap());
        be.swiglu_forward(&mut ok, &gk, &uk).unwrap();
        be.swiglu_backward(&mut dgk, &mut duk, &up(&d), &gk, &uk)
            .unwrap();
        close("swiglu out", &down(&ok), &oc, 1e-6, 1e-5);
        close("swiglu dgate", &down(&dgk), &dgc, 1e-6, 1e-5);
        close("swiglu dup", &down(&duk), &duc, 1e-6, 1e-5);
    }
    // Cross-entropy with ignored targets; with and without dhidden; loss_scale 0; all ignored.
    let (n, h, vocab) = (37usize, 24usize, 50usize);
    let hid = rng.vec(n * h, -1.0, 1.0);
    let lm = rng.vec(vocab * h, -1.0, 1.0);
    let tg: Vec<i32> = (0..n)
        .map(|i| {
            if i % 5 == 2 {
                -100
            } else {
                (rng.next_u64() % vocab as u64) as i32
            }
        })
        .collect();
    let (hk, lk) = (up(&hid), up(&lm));
    for scale in [0.03f32, 0.0] {
        let mut dc = vec![0f32; n * h];
        let lc = cpu
            .cross_entropy(Some(&mut dc), &hid, &lm, &tg, n, h, vocab, scale)
            .unwrap();
        let mut dk = up(&vec![f32::NAN; n * h]);
        let lkk = be
            .cross_entropy(Some(&mut dk), &hk, &lk, &tg, n, h, vocab, scale)
            .unwrap();
        close("xent losses", &lkk, &lc, 1e-5, 1e-4);
        let scale_d = 1e-4 * max_abs(&dc).max(1e-30);
        close(
            &format!("xent dhidden scale={scale}"),
            &down(&dk),
            &dc,
            scale_d,
            1e-4,
        );
        let l2 = be
            .cross_entropy(None, &hk, &lk, &tg, n, h, vocab, 1.0)
            .unwrap();
        close("xent losses only", &l2, &lc, 1e-5, 1e-4);
    }
    let ign = vec![-100i32; n];
    let mut dk = up(&vec![f32::NAN; n * h]);
    let l = be
        .cross_entropy(Some(&mut dk), &hk, &lk, &ign, n, h, vocab, 1.0)
        .unwrap();
    same("xent all ignored", &l, &vec![0.0; n]);
    same("xent all ignored dhidden", &down(&dk), &vec![0.0; n * h]);
    let mut bad = tg.clone();
    bad[3] = vocab as i32;
    let e = be
        .cross_entropy(None, &hk, &lk, &bad, n, h, vocab, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("token 3 has target 50"), "{e}");
}

/// Per token of `batch` rows packed with samples of `lens`: its sample's first in-row index.
pub fn starts_of(batch: usize, lens: &[usize]) -> Vec<u32> {
    let mut row = Vec::new();
    let mut at = 0u32;
    for &l in lens {
        row.extend(std::iter::repeat_n(at, l));
        at += l as u32;
    }
    row.repeat(batch)
}

/// `be` against the CPU backend on attention forward and backward for head_dim `hd` (GQA,
/// packed rows of `lens`), in `be`'s compute precision: with bf16 (the tensor-core kernels for
/// hd 64 and 128) the CPU runs on the bf16-rounded inputs, and the tolerance is bf16's:
/// `afrac·max|ref| + |ref|·rtol` with afrac 1e-2 and rtol 1.6e-2 (the output's own rounding is
/// 2^-9·|ref|; P and dS rounded to bf16 before their mma add at most ≈ 2^-9·max|ref|, tests/
/// kernels_emu_attention.rs has the derivation); lse stays f32 (1e-5).
pub fn attention<B: Backend>(be: &B, hd: usize, lens: &[usize]) {
    let cpu = CpuBackend::<f32>::new();
    let bf16 = be.precision() == Precision::Bf16;
    let mut rng = Rng(13 + hd as u64);
    let mut vals = |n: usize| -> Vec<f32> {
        let v = rng.vec(n, -1.0, 1.0);
        match bf16 {
            true => v
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect(),
            false => v,
        }
    };
    let up = |v: &[f32]| be.upload_compute(v).unwrap();
    let down = |b: &B::Buf| be.download(b).unwrap();
    let (batch, heads, kvh) = (2usize, 4usize, 2usize);
    let seq: usize = lens.iter().sum();
    let n = batch * seq;
    let starts = starts_of(batch, lens);
    let (qw, kw) = (heads * hd, kvh * hd);
    let q = vals(n * qw);
    let k = vals(n * kw);
    let v = vals(n * kw);
    let dout = vals(n * qw);
    let (mut oc, mut lc) = (vec![0f32; n * qw], vec![0f32; n * heads]);
    cpu.attention_forward(
        &mut oc, &mut lc, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
    )
    .unwrap();
    let (qk, kk, vk) = (up(&q), up(&k), up(&v));
    let (mut ok, mut lk) = (
        be.alloc_compute(n * qw).unwrap(),
        be.alloc(n * heads).unwrap(),
    );
    be.attention_forward(
        &mut ok, &mut lk, &qk, &kk, &vk, &starts, batch, seq, heads, kvh, hd,
    )
    .unwrap();
    let what = |name: &str| format!("attention {name} hd={hd} bf16={bf16}");
    let (out_atol, rtol) = if bf16 {
        (1e-2 * max_abs(&oc), 1.6e-2)
    } else {
        (1e-5, 1e-4)
    };
    close(&what("out"), &down(&ok), &oc, out_atol, rtol);
    close(&what("lse"), &down(&lk), &lc, 1e-5, 1e-4);
    let mut g = [vec![0f32; n * qw], vec![0f32; n * kw], vec![0f32; n * kw]];
    let [dqc, dkc, dvc] = &mut g;
    let r = cpu.attention_backward(
        dqc, dkc, dvc, &dout, &q, &k, &v, &oc, &lc, &starts, batch, seq, heads, kvh, hd,
    );
    r.unwrap();
    let (mut dq, mut dk, mut dv) = (
        up(&vec![f32::NAN; n * qw]),
        be.alloc_compute(n * kw).unwrap(),
        be.alloc_compute(n * kw).unwrap(),
    );
    let res = be.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &up(&dout),
        &qk,
        &kk,
        &vk,
        &ok,
        &lk,
        &starts,
        batch,
        seq,
        heads,
        kvh,
        hd,
    );
    if ![32, 64, 128].contains(&hd) {
        let e = res.unwrap_err().to_string();
        assert!(e.contains("head_dim"), "{e}");
        return;
    }
    res.unwrap();
    let (afrac, rtol) = if bf16 { (1e-2, 1.6e-2) } else { (1e-4, 1e-4) };
    for (name, got, want) in [("dq", &dq, &g[0]), ("dk", &dk, &g[1]), ("dv", &dv, &g[2])] {
        close(&what(name), &down(got), want, afrac * max_abs(want), rtol);
    }
    let mut bad = starts.clone();
    bad[1] = 2;
    assert!(be
        .attention_forward(&mut ok, &mut lk, &qk, &kk, &vk, &bad, batch, seq, heads, kvh, hd)
        .is_err());
}

/// `be` against the CPU backend on the KV cache's ops: `copy_rows` bit for bit (a width of
/// whole 16-byte packs and an odd one), and `attention_decode` for head_dim `hd` (GQA 2:1,
/// 1 to 70 keys per query, so the kernel's 32-key chunks end anywhere), within `1e-5 +
/// 1e-4·|ref|` (the CPU's polynomial exp); bad rows and key ranges are errors.
pub fn decode<B: Backend>(be: &B, hd: usize) {
    let cpu = CpuBackend::<f32>::new();
    let mut rng = Rng(29 + hd as u64);
    let up = |v: &[f32]| be.upload(v).unwrap();
    let down = |b: &B::Buf| be.download(b).unwrap();
    let rows = [41u32, 3, 0, 17, 49];
    for width in [2 * hd, 7] {
        let src = rng.vec(rows.len() * width, -1.0, 1.0);
        let dst = rng.vec(50 * width, -1.0, 1.0);
        let mut dc = dst.clone();
        cpu.copy_rows(&mut dc, &src, &rows, width).unwrap();
        let mut dk = up(&dst);
        be.copy_rows(&mut dk, &up(&src), &rows, width).unwrap();
        same(&format!("copy_rows width={width}"), &down(&dk), &dc);
        let e = be
            .copy_rows(&mut dk, &up(&src[..2 * width]), &[4, 4], width)
            .unwrap_err();
        assert!(e.to_string().contains("dst row 4 is written twice"), "{e}");
    }
    let (heads, kvh, max_len) = (4usize, 2usize, 80usize);
    let (qw, kw) = (heads * hd, kvh * hd);
    let first = [240u32, 80, 0, 160];
    let last = [0u32, 31, 32, 69];
    let k = rng.vec(4 * max_len * kw, -1.0, 1.0);
    let v = rng.vec(4 * max_len * kw, -1.0, 1.0);
    let q = rng.vec(4 * qw, -1.0, 1.0);
    let mut oc = vec![0f32; 4 * qw];
    cpu.attention_decode(&mut oc, &q, &k, &v, &first, &last, heads, kvh, hd)
        .unwrap();
    let (qk, kk, vk) = (up(&q), up(&k), up(&v));
    let mut ok = up(&vec![f32::NAN; 4 * qw]);
    be.attention_decode(&mut ok, &qk, &kk, &vk, &first, &last, heads, kvh, hd)
        .unwrap();
    close(
        &format!("attention_decode hd={hd}"),
        &down(&ok),
        &oc,
        1e-5,
        1e-4,
    );
    let e = be
        .attention_decode(
            &mut ok,
            &qk,
            &kk,
            &vk,
            &first,
            &[0, 0, 0, 160],
            heads,
            kvh,
            hd,
        )
        .unwrap_err();
    assert!(e.to_string().contains("query 3: keys 160 ..= 320"), "{e}");
}
