//! Attention forward and backward kernels (kernels/attention.cu, attention_backward.cu on CUDA
//! cores; attention_mma.cu, attention_mma_backward.cu on tensor cores) through the CPU emulator
//! against the engine's CPU backend, the reference semantics: causal GQA attention over packed
//! rows (1–3 samples per row, attention never crossing a sample), head_dim 32, 64 and 128,
//! GQA ratios 1 to 4, seq not a multiple of any tile, f32 and bf16 storage; bf16 with hd 64
//! and 128 runs both the CUDA-core and the tensor-core kernels. The CPU backend runs on the
//! very values the kernels read (bf16 inputs widened exactly), so only the kernels' own
//! roundings (bf16 `out` feeding D, bf16 gradients, the tensor-core path's bf16 P and dS) and
//! summation orders separate them: tolerance `atol + |ref|·rtol` with `atol` a fraction of the
//! tensor's largest reference value. Every case runs under both emulator schedules and must
//! give bit-identical results (no atomics, fixed orders). Launch shapes follow the comments
//! above the kernels and engine/src/backend/kernel/attn_tiles.rs (whose CUDA-core tile table
//! `tiles` repeats; the tensor-core one comes from `mma_tiles`, and a wrong shared-memory size
//! fails the emulator's bounds checks). FFI declarations: kernels_emu_attention/ffi.rs.
//! Run: `cargo test --test kernels_emu_attention`.

#[path = "kernels_emu_attention/ffi.rs"]
mod ffi;

use std::ffi::c_void;

use ffi::{check, sys, DkdvFn, DqFn, Elem, TiledFn};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::mma_tiles;
use gradients_engine::backend::Backend;
use half::bf16;

/// Tile rows (BQ, BK) per head_dim: the table in attention_tiles.cuh.
fn tiles(hd: usize) -> (usize, usize) {
    match hd {
        32 | 64 => (32, 32),
        128 => (16, 16),
        _ => panic!("no backward kernel for hd {hd}"),
    }
}

/// Dynamic shared memory of the dkdv and dq kernels and the tiled forward (`AttnTiles::WORDS`·4).
fn bwd_smem(hd: usize) -> usize {
    let (bq, bk) = tiles(hd);
    4 * ((2 * bk + 2 * bq) * (hd + 1) + 2 * bq * (bk + 1) + 3 * bq)
}

/// Threads per block of every attention kernel (ATTN_TILE_THREADS, ATTN_MMA_THREADS and
/// 32·ATTN_WARPS are all 128).
const THREADS: u32 = 128;

/// SplitMix64 for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `len` values uniform in [-scale, scale), rounded to T.
    fn vec<T: Elem>(&mut self, len: usize, scale: f32) -> Vec<T> {
        (0..len).map(|_| T::from_f32(scale * self.next())).collect()
    }
}

/// One case: `batch` rows of `seq` tokens, each row packed with samples of `lens` (summing to
/// `seq`).
struct Case {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    lens: Vec<usize>,
}

impl Case {
    /// Per token: the in-row index of its sample's first token.
    fn starts(&self) -> Vec<u32> {
        assert_eq!(self.lens.iter().sum::<usize>(), self.seq, "sample lengths");
        let row: Vec<u32> = self
            .lens
            .iter()
            .scan(0usize, |at, &l| {
                let s = *at;
                *at += l;
                Some(std::iter::repeat_n(s as u32, l))
            })
            .flatten()
            .collect();
        row.repeat(self.batch)
    }
    fn name<T: Elem>(&self) -> String {
        format!(
            "{} batch={} seq={} heads={}/{} hd={} samples={:?}",
            T::NAME,
            self.batch,
            self.seq,
            self.heads,
            self.kv_heads,
            self.hd,
            self.lens
        )
    }
}

/// The kernels' results for one case.
struct Got<T> {
    out: Vec<T>,
    lse: Vec<f32>,
    dq: Vec<T>,
    dk: Vec<T>,
    dv: Vec<T>,
}

impl<T: Elem> Got<T> {
    /// True when every output has the same bits in both.
    fn same_bits(&self, o: &Got<T>) -> bool {
        let b = |v: &[T]| bytemuck::cast_slice::<T, u8>(v).to_vec();
        b(&self.out) == b(&o.out)
            && bytemuck::cast_slice::<f32, u8>(&self.lse) == bytemuck::cast_slice::<f32, u8>(&o.lse)
            && b(&self.dq) == b(&o.dq)
            && b(&self.dk) == b(&o.dk)
            && b(&self.dv) == b(&o.dv)
    }
}

/// Inputs (rounded to T) of one case.
struct Inputs<T> {
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    dout: Vec<T>,
    starts: Vec<i32>,
}

impl<T: Elem> Inputs<T> {
    /// Random q, k (in ±2), v, dout (in ±1) for `c`, and its starts.
    fn random(c: &Case, seed: u64) -> Self {
        let n = c.batch * c.seq;
        let (qw, kw) = (c.heads * c.hd, c.kv_heads * c.hd);
        let mut rng = Rng(seed);
        Inputs {
            q: rng.vec(n * qw, 2.0),
            k: rng.vec(n * kw, 2.0),
            v: rng.vec(n * kw, 1.0),
            dout: rng.vec(n * qw, 1.0),
            starts: c.starts().iter().map(|&s| s as i32).collect(),
        }
    }
}

/// Which kernels run a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The one-warp-per-query forward, then the CUDA-core backward.
    Simple,
    /// The tiled CUDA-core forward where one exists for the head_dim (else the simple one), then
    /// the CUDA-core backward: what f32 buffers take.
    Tiled,
    /// The tensor-core forward and backward: what bf16 buffers with hd 64 or 128 take.
    Mma,
}

/// Grid (x, y, z) and dynamic shared memory bytes of one launch of 128 threads.
type Geom = ([u32; 3], usize);

/// The pointer `shift` values into `v`.
fn at<T>(v: &[T], shift: usize) -> *const c_void {
    v[shift..].as_ptr().cast()
}
fn at_mut<T>(v: &mut [T], shift: usize) -> *mut c_void {
    v[shift..].as_mut_ptr().cast()
}

/// The forward and backward kernels of `path` on `x` (launch shapes from the comments above
/// the kernels and engine/src/backend/kernel/attention.rs), every T buffer addressed `shift`
/// values past its start: `x`'s vectors then lead with `shift` values, and shift 1 misaligns
/// every pointer for 16-byte accesses.
fn run_kernels<T: Elem>(c: &Case, x: &Inputs<T>, path: Path, shift: usize) -> Got<T> {
    let n = c.batch * c.seq;
    let (qw, kw) = (c.heads * c.hd, c.kv_heads * c.hd);
    let scale = (1.0 / (c.hd as f64).sqrt()) as f32;
    let nan = T::from_f32(f32::NAN);
    let mut g = Got {
        out: vec![nan; shift + n * qw],
        lse: vec![f32::NAN; n * c.heads],
        dq: vec![nan; shift + n * qw],
        dk: vec![nan; shift + n * kw],
        dv: vec![nan; shift + n * kw],
    };
    let mut dsum = vec![f32::NAN; n * c.heads];
    let (ni, seq, heads, kvh, hd) = (
        n as i32,
        c.seq as i32,
        c.heads as i32,
        c.kv_heads as i32,
        c.hd as i32,
    );
    let (b, hq, hk) = (c.batch as u32, c.heads as u32, c.kv_heads as u32);
    let tiles_of = |rows: usize| c.seq.div_ceil(rows) as u32;
    // (forward with the tiled parameters, or None for the simple one), dkdv, dq, their geometry
    type Kernels = (Option<TiledFn>, DkdvFn, DqFn, Geom, Geom, Geom);
    let (fwd, dkdv, dq, fg, kg, qg): Kernels = if path == Path::Mma {
        let &(_, f, dkdv, dq) = T::MMA
            .iter()
            .find(|m| m.0 == c.hd)
            .expect("a tensor-core kernel for hd");
        let t = mma_tiles(c.hd).expect("tensor-core tiles for hd");
        let r = tiles_of(64);
        (
            Some(f),
            dkdv,
            dq,
            ([r, b, hq], t.forward_smem(c.hd)),
            ([r, b, hk], t.dkdv_smem(c.hd)),
            ([r, b, hq], t.dq_smem(c.hd)),
        )
    } else {
        let &(_, dkdv, dq) = T::BWD
            .iter()
            .find(|k| k.0 == c.hd)
            .expect("a backward kernel for hd");
        let (bq, bk) = tiles(c.hd);
        let smem = bwd_smem(c.hd);
        let tiled = T::TILED.iter().find(|t| t.0 == c.hd && path == Path::Tiled);
        (
            tiled.map(|t| t.1),
            dkdv,
            dq,
            ([tiles_of(bq), b, hq], smem),
            ([tiles_of(bk), b, hk], smem),
            ([tiles_of(bq), b, hq], smem),
        )
    };
    let warps = (n * c.heads).div_ceil(4) as u32;
    let (q, k, v, dout, st) = (
        at(&x.q, shift),
        at(&x.k, shift),
        at(&x.v, shift),
        at(&x.dout, shift),
        x.starts.as_ptr(),
    );
    let ([gx, gy, gz], smem) = fg;
    // SAFETY: the declarations match kernels/emu/launchers.cpp; every buffer holds the values
    // the kernels' documented layouts address for these dims (past `shift`), and the grids
    // are the ones documented above the kernels.
    unsafe {
        let (out, lse) = (at_mut(&mut g.out, shift), g.lse.as_mut_ptr());
        match fwd {
            Some(f) => check(
                f(
                    gx, gy, gz, THREADS, 1, 1, smem, out, lse, q, k, v, st, seq, heads, kvh, scale,
                ),
                "attention forward (tiled parameters)",
            ),
            None => check(
                (T::FWD)(
                    warps,
                    1,
                    1,
                    THREADS,
                    1,
                    1,
                    4 * c.hd * 4,
                    out,
                    lse,
                    q,
                    k,
                    v,
                    st,
                    ni,
                    seq,
                    heads,
                    kvh,
                    hd,
                    scale,
                ),
                "attention_forward",
            ),
        }
        let ds = dsum.as_mut_ptr();
        check(
            (T::DOT)(warps, 1, 1, THREADS, 1, 1, 0, ds, dout, out, ni, heads, hd),
            "attention_backward_dot",
        );
        let (ds, lse) = (dsum.as_ptr(), g.lse.as_ptr());
        let ([gx, gy, gz], smem) = kg;
        let (dkp, dvp) = (at_mut(&mut g.dk, shift), at_mut(&mut g.dv, shift));
        check(
            dkdv(
                gx, gy, gz, THREADS, 1, 1, smem, dkp, dvp, q, k, v, dout, lse, ds, st, seq, heads,
                kvh, scale,
            ),
            "attention backward dkdv",
        );
        let ([gx, gy, gz], smem) = qg;
        let dqp = at_mut(&mut g.dq, shift);
        check(
            dq(
                gx, gy, gz, THREADS, 1, 1, smem, dqp, q, k, v, dout, lse, ds, st, seq, heads, kvh,
                scale,
            ),
            "attention backward dq",
        );
    }
    for buf in [&mut g.out, &mut g.dq, &mut g.dk, &mut g.dv] {
        buf.drain(..shift);
    }
    g
}

/// Asserts `|got − want| <= atol + |want|·rtol` with `atol = afrac·max|want|`; the reference
/// must not be all zeros (the check would be empty).
fn assert_close<T: Elem>(what: &str, got: &[T], want: &[f32], afrac: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
    assert!(max > 0.0, "{what}: the reference is all zeros");
    let atol = afrac * max;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f32() as f64, w as f64);
        let tol = atol + w.abs() * rtol;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (err {:.3e} > tol {tol:.3e}, max|ref| {max:.3e})",
            (g - w).abs()
        );
    }
}

fn widen<T: Elem>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Runs `c` in the emulator under both schedules (bit-identical) and compares with the CPU
/// backend on the same (rounded) inputs.
fn check_case<T: Elem>(c: &Case, seed: u64) {
    let n = c.batch * c.seq;
    let (qw, kw) = (c.heads * c.hd, c.kv_heads * c.hd);
    let starts = c.starts();
    let x = Inputs::<T>::random(c, seed);
    let cpu = CpuBackend::<f32>::new();
    let (q, k, v, dout) = (widen(&x.q), widen(&x.k), widen(&x.v), widen(&x.dout));
    let (mut out, mut lse) = (vec![0f32; n * qw], vec![0f32; n * c.heads]);
    cpu.attention_forward(
        &mut out, &mut lse, &q, &k, &v, &starts, c.batch, c.seq, c.heads, c.kv_heads, c.hd,
    )
    .unwrap();
    let (mut dq, mut dk, mut dv) = (vec![0f32; n * qw], vec![0f32; n * kw], vec![0f32; n * kw]);
    cpu.attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, c.batch, c.seq, c.heads,
        c.kv_heads, c.hd,
    )
    .unwrap();
    // bf16: u = 2^-9 per rounding. The outputs' own rounding is u·|ref| (inside rtol); the
    // tensor-core path also rounds P and dS to bf16 before their mma, an error bounded by
    // u·Σ_j P_ij·|v_j| <= u·max|v| for out (and alike for the gradients), which atol covers
    // at afrac = 1e-2 ≈ 5u of the largest reference value. (A scratch check of the
    // tensor-core kernels on the emulator against an f64 reference, 2026-12-07, used at most
    // 0.3 of this tolerance.)
    let (afrac, rtol) = if T::NAME == "bf16" {
        (1e-2, T::RTOL)
    } else {
        (2e-5, T::RTOL)
    };
    let mut paths = vec![Path::Tiled];
    if T::MMA.iter().any(|m| m.0 == c.hd) {
        paths.push(Path::Mma);
    }
    for path in paths {
        let what = format!("{} ({path:?})", c.name::<T>());
        let mut runs = Vec::new();
        for reverse in [0, 1] {
            // SAFETY: sets a thread-local flag of the emulator.
            unsafe { sys::emu_set_schedule(reverse) };
            runs.push(run_kernels(c, &x, path, 0));
        }
        // SAFETY: as above.
        unsafe { sys::emu_set_schedule(0) };
        let got = runs.pop().expect("two runs");
        assert!(
            got.same_bits(&runs[0]),
            "{what}: the two schedules gave different bits"
        );
        assert_close::<f32>(&format!("{what} lse"), &got.lse, &lse, 1e-5, 1e-5);
        assert_close(&format!("{what} out"), &got.out, &out, afrac, rtol);
        assert_close(&format!("{what} dq"), &got.dq, &dq, afrac, rtol);
        assert_close(&format!("{what} dk"), &got.dk, &dk, afrac, rtol);
        assert_close(&format!("{what} dv"), &got.dv, &dv, afrac, rtol);
    }
    if T::TILED.iter().any(|t| t.0 == c.hd) {
        // The simple (one warp per query) forward keeps the same contract.
        let what = c.name::<T>();
        let simple = run_kernels(c, &x, Path::Simple, 0);
        assert_close::<f32>(&format!("{what} simple lse"), &simple.lse, &lse, 1e-5, 1e-5);
        assert_close(
            &format!("{what} simple out"),
            &simple.out,
            &out,
            afrac,
            rtol,
        );
    }
}

fn cases() -> Vec<Case> {
    vec![
        // GQA 2:1, two rows of three samples, three key tiles per row.
        Case {
            batch: 2,
            seq: 70,
            heads: 4,
            kv_heads: 2,
            hd: 64,
            lens: vec![30, 25, 15],
        },
        // hd 128 (16-row tiles), GQA 3:1, samples crossing tile boundaries.
        Case {
            batch: 1,
            seq: 45,
            heads: 3,
            kv_heads: 1,
            hd: 128,
            lens: vec![7, 21, 17],
        },
        // hd 128 without GQA, one sample per row, a ragged last tile.
        Case {
            batch: 2,
            seq: 21,
            heads: 2,
            kv_heads: 2,
            hd: 128,
            lens: vec![21],
        },
        // hd 64, MQA (one kv head for four query heads), two samples.
        Case {
            batch: 1,
            seq: 40,
            heads: 4,
            kv_heads: 1,
            hd: 64,
            lens: vec![33, 7],
        },
        // hd 128, GQA 3:1, three query blocks of the tensor-core kernels: a sample ending on a
        // 64-row block boundary, a single-token one, a ragged last block.
        Case {
            batch: 1,
            seq: 135,
            heads: 3,
            kv_heads: 1,
            hd: 128,
            lens: vec![64, 1, 70],
        },
        // hd 64 without GQA, two rows, a sample boundary inside the first 64-row block.
        Case {
            batch: 2,
            seq: 100,
            heads: 2,
            kv_heads: 2,
            hd: 64,
            lens: vec![17, 83],
        },
        // hd 32, single-token samples beside a long one.
        Case {
            batch: 2,
            seq: 36,
            heads: 2,
            kv_heads: 1,
            hd: 32,
            lens: vec![1, 1, 34],
        },
    ]
}

#[test]
fn attention_backward_f32_matches_cpu_backend() {
    for (i, c) in cases().iter().enumerate() {
        check_case::<f32>(c, 500 + i as u64);
    }
}

#[test]
fn attention_backward_bf16_matches_cpu_backend() {
    for (i, c) in cases().iter().enumerate() {
        check_case::<bf16>(c, 600 + i as u64);
    }
}

#[test]
fn mma_kernels_give_the_same_bits_on_misaligned_buffers() {
    // Shift 1: every bf16 pointer sits 2 bytes past a 16-byte boundary, so the tile loads and
    // row stores take their 2-byte path instead of the 16-byte one.
    let cases = [
        Case {
            batch: 1,
            seq: 70,
            heads: 2,
            kv_heads: 1,
            hd: 64,
            lens: vec![40, 30],
        },
        Case {
            batch: 1,
            seq: 40,
            heads: 2,
            kv_heads: 2,
            hd: 128,
            lens: vec![9, 31],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let x = Inputs::<bf16>::random(c, 700 + i as u64);
        assert_eq!(
            x.q.as_ptr() as usize % 16,
            0,
            "the allocator's 16-byte alignment"
        );
        let pad = |v: &[bf16]| [&[bf16::ZERO][..], v].concat();
        let shifted = Inputs::<bf16> {
            q: pad(&x.q),
            k: pad(&x.k),
            v: pad(&x.v),
            dout: pad(&x.dout),
            starts: x.starts.clone(),
        };
        let aligned = run_kernels(c, &x, Path::Mma, 0);
        let misaligned = run_kernels(c, &shifted, Path::Mma, 1);
        assert!(
            aligned.same_bits(&misaligned),
            "{}: 16-byte and 2-byte paths differ",
            c.name::<bf16>()
        );
    }
}

#[test]
fn packed_row_equals_its_samples_run_alone() {
    // A row packing samples [a | b] gives a and b the outputs and gradients they get alone in a
    // row: nothing of one sample reaches the other. (Equal up to rounding only: the forward's
    // online softmax rescales at tile boundaries, which sit elsewhere relative to a sample
    // that starts mid-tile.)
    let (heads, kv_heads, hd) = (2, 1, 64);
    let (la, lb) = (19usize, 26usize);
    let seq = la + lb;
    let packed = Case {
        batch: 1,
        seq,
        heads,
        kv_heads,
        hd,
        lens: vec![la, lb],
    };
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let x = Inputs::<f32>::random(&packed, 77);
    let whole = run_kernels(&packed, &x, Path::Tiled, 0);
    for (lo, len) in [(0, la), (la, lb)] {
        let alone = Case {
            batch: 1,
            seq: len,
            heads,
            kv_heads,
            hd,
            lens: vec![len],
        };
        let part = |v: &[f32], w: usize| v[lo * w..(lo + len) * w].to_vec();
        let xa = Inputs::<f32> {
            q: part(&x.q, qw),
            k: part(&x.k, kw),
            v: part(&x.v, kw),
            dout: part(&x.dout, qw),
            starts: vec![0; len],
        };
        let g = run_kernels(&alone, &xa, Path::Tiled, 0);
        for (name, a, b, w) in [
            ("out", &g.out, &whole.out, qw),
            ("dq", &g.dq, &whole.dq, qw),
            ("dk", &g.dk, &whole.dk, kw),
            ("dv", &g.dv, &whole.dv, kw),
        ] {
            let want: Vec<f32> = part(b, w);
            let what = format!("sample at {lo} of length {len}: {name}");
            assert_close::<f32>(&what, a, &want, 1e-6, 1e-5);
        }
    }
}

/// With `--features cuda`: every attention kernel is in the ptxas report for sm_80 and sm_90
/// without spills; prints the register count of each (the numbers the report quotes).
#[cfg(feature = "cuda")]
#[test]
fn ptxas_report_has_the_attention_kernels_without_spills() {
    use gradients_engine::backend::cuda::PTXAS_REPORT;
    let mut names = Vec::new();
    for s in ["f32", "bf16"] {
        names.push(format!("attention_forward_{s}"));
        names.push(format!("attention_backward_dot_{s}"));
        for hd in [32, 64, 128] {
            names.push(format!("attention_backward_dkdv_hd{hd}_{s}"));
            names.push(format!("attention_backward_dq_hd{hd}_{s}"));
        }
    }
    for hd in [64, 128] {
        for k in ["forward", "backward_dkdv", "backward_dq"] {
            names.push(format!("attention_{k}_mma_hd{hd}_bf16"));
        }
    }
    for name in &names {
        for arch in ["sm_80", "sm_90"] {
            let entry = format!("Compiling entry function '{name}' for '{arch}'");
            let at = PTXAS_REPORT
                .find(&entry)
                .unwrap_or_else(|| panic!("missing {entry}"));
            let rest = &PTXAS_REPORT[at + entry.len()..];
            let block = &rest[..rest.find("Compiling entry function").unwrap_or(rest.len())];
            assert!(
                block.contains("0 bytes spill stores, 0 bytes spill loads"),
                "{name} ({arch}) spills: {block}"
            );
            let regs = block
                .split("Used ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("?");
            eprintln!("{name} {arch}: {regs} registers, 0 spills");
        }
    }
}
