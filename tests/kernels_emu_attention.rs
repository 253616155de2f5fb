//! Attention forward and backward kernels (kernels/attention.cu, kernels/attention_backward.cu)
//! through the CPU emulator against the engine's CPU backend, the reference semantics: causal
//! GQA attention over packed rows (2–3 samples per row, attention never crossing a sample),
//! head_dim 32, 64 and 128, f32 and bf16 storage. The CPU backend runs on the very values the
//! kernels read (bf16 inputs widened exactly), so only the kernels' own roundings (bf16 `out`
//! feeding D, bf16 gradients) and summation orders separate them: tolerance
//! `atol + |ref|·rtol` with `atol` a fraction of the tensor's largest reference value. Every
//! case runs under both emulator schedules and must give bit-identical results (the backward
//! has no atomics and fixed orders). Launch shapes follow the comments above the kernels and
//! engine/src/backend/cuda/attention.rs (whose tile table `tiles` repeats).
//! Run: `cargo test --test kernels_emu_attention`.

use std::ffi::{c_void, CStr};

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::Backend;
use half::bf16;

type VP = *mut c_void;
type CP = *const c_void;

mod sys {
    use super::{CP, VP};
    extern "C" {
        pub fn emu_last_error() -> *const std::ffi::c_char;
        pub fn emu_set_schedule(reverse: i32);
    }
    macro_rules! typed {
        ($fwd:ident, $dot:ident, [$($tiled:ident),*], $(($dkdv:ident, $dq:ident)),*) => {
            extern "C" {
                $(
                pub fn $tiled(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    out: VP, lse: *mut f32, q: CP, k: CP, v: CP, starts: *const i32, seq: i32,
                    heads: i32, kv_heads: i32, scale: f32) -> i32;
                )*
                pub fn $fwd(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    out: VP, lse: *mut f32, q: CP, k: CP, v: CP, starts: *const i32, n: i32,
                    seq: i32, heads: i32, kv_heads: i32, hd: i32, scale: f32) -> i32;
                pub fn $dot(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    dsum: *mut f32, dout: CP, out: CP, n: i32, heads: i32, hd: i32) -> i32;
                $(
                pub fn $dkdv(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    dk: VP, dv: VP, q: CP, k: CP, v: CP, dout: CP, lse: *const f32,
                    dsum: *const f32, starts: *const i32, seq: i32, heads: i32, kv_heads: i32,
                    scale: f32) -> i32;
                pub fn $dq(gx: u32, gy: u32, gz: u32, bx: u32, by: u32, bz: u32, smem: usize,
                    dq: VP, q: CP, k: CP, v: CP, dout: CP, lse: *const f32, dsum: *const f32,
                    starts: *const i32, seq: i32, heads: i32, kv_heads: i32, scale: f32) -> i32;
                )*
            }
        };
    }
    typed!(
        emu_launch_attention_forward_f32,
        emu_launch_attention_backward_dot_f32,
        [
            emu_launch_attention_forward_tiled_hd64_f32,
            emu_launch_attention_forward_tiled_hd128_f32
        ],
        (
            emu_launch_attention_backward_dkdv_hd32_f32,
            emu_launch_attention_backward_dq_hd32_f32
        ),
        (
            emu_launch_attention_backward_dkdv_hd64_f32,
            emu_launch_attention_backward_dq_hd64_f32
        ),
        (
            emu_launch_attention_backward_dkdv_hd128_f32,
            emu_launch_attention_backward_dq_hd128_f32
        )
    );
    typed!(
        emu_launch_attention_forward_bf16,
        emu_launch_attention_backward_dot_bf16,
        [
            emu_launch_attention_forward_tiled_hd64_bf16,
            emu_launch_attention_forward_tiled_hd128_bf16
        ],
        (
            emu_launch_attention_backward_dkdv_hd32_bf16,
            emu_launch_attention_backward_dq_hd32_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_hd64_bf16,
            emu_launch_attention_backward_dq_hd64_bf16
        ),
        (
            emu_launch_attention_backward_dkdv_hd128_bf16,
            emu_launch_attention_backward_dq_hd128_bf16
        )
    );
}

fn check(rc: i32, what: &str) {
    if rc != 0 {
        // SAFETY: emu_last_error returns a NUL-terminated thread-local string, valid until
        // this thread's next launch.
        let why = unsafe { CStr::from_ptr(sys::emu_last_error()) }.to_string_lossy();
        panic!("{what}: emulator launch failed ({rc}): {why}");
    }
}

type FwdFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    usize,
    VP,
    *mut f32,
    CP,
    CP,
    CP,
    *const i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
) -> i32;
type TiledFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    usize,
    VP,
    *mut f32,
    CP,
    CP,
    CP,
    *const i32,
    i32,
    i32,
    i32,
    f32,
) -> i32;
type DotFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    usize,
    *mut f32,
    CP,
    CP,
    i32,
    i32,
    i32,
) -> i32;
type DkdvFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    usize,
    VP,
    VP,
    CP,
    CP,
    CP,
    CP,
    *const f32,
    *const f32,
    *const i32,
    i32,
    i32,
    i32,
    f32,
) -> i32;
type DqFn = unsafe extern "C" fn(
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    usize,
    VP,
    CP,
    CP,
    CP,
    CP,
    *const f32,
    *const f32,
    *const i32,
    i32,
    i32,
    i32,
    f32,
) -> i32;

/// A storage dtype of the kernels and its launchers.
trait Elem: Copy + bytemuck::Pod {
    const NAME: &'static str;
    /// Relative tolerance of values stored in this dtype.
    const RTOL: f64;
    const FWD: FwdFn;
    /// (hd, tiled forward) per head_dim with a tiled forward.
    const TILED: [(usize, TiledFn); 2];
    const DOT: DotFn;
    /// (hd, dkdv, dq) per supported head_dim.
    const BWD: [(usize, DkdvFn, DqFn); 3];
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
    const RTOL: f64 = 1e-4;
    const FWD: FwdFn = sys::emu_launch_attention_forward_f32;
    const TILED: [(usize, TiledFn); 2] = [
        (64, sys::emu_launch_attention_forward_tiled_hd64_f32),
        (128, sys::emu_launch_attention_forward_tiled_hd128_f32),
    ];
    const DOT: DotFn = sys::emu_launch_attention_backward_dot_f32;
    const BWD: [(usize, DkdvFn, DqFn); 3] = [
        (
            32,
            sys::emu_launch_attention_backward_dkdv_hd32_f32,
            sys::emu_launch_attention_backward_dq_hd32_f32,
        ),
        (
            64,
            sys::emu_launch_attention_backward_dkdv_hd64_f32,
            sys::emu_launch_attention_backward_dq_hd64_f32,
        ),
        (
            128,
            sys::emu_launch_attention_backward_dkdv_hd128_f32,
            sys::emu_launch_attention_backward_dq_hd128_f32,
        ),
    ];
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Elem for bf16 {
    const NAME: &'static str = "bf16";
    const RTOL: f64 = 1.6e-2;
    const FWD: FwdFn = sys::emu_launch_attention_forward_bf16;
    const TILED: [(usize, TiledFn); 2] = [
        (64, sys::emu_launch_attention_forward_tiled_hd64_bf16),
        (128, sys::emu_launch_attention_forward_tiled_hd128_bf16),
    ];
    const DOT: DotFn = sys::emu_launch_attention_backward_dot_bf16;
    const BWD: [(usize, DkdvFn, DqFn); 3] = [
        (
            32,
            sys::emu_launch_attention_backward_dkdv_hd32_bf16,
            sys::emu_launch_attention_backward_dq_hd32_bf16,
        ),
        (
            64,
            sys::emu_launch_attention_backward_dkdv_hd64_bf16,
            sys::emu_launch_attention_backward_dq_hd64_bf16,
        ),
        (
            128,
            sys::emu_launch_attention_backward_dkdv_hd128_bf16,
            sys::emu_launch_attention_backward_dq_hd128_bf16,
        ),
    ];
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

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

const BWD_THREADS: u32 = 128;

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

/// The forward (the tiled kernel where one exists for `c.hd`, as the CUDA launcher picks,
/// unless `simple_forward`) and the backward on `x`.
fn run_kernels<T: Elem>(c: &Case, x: &Inputs<T>, simple_forward: bool) -> Got<T> {
    let n = c.batch * c.seq;
    let (qw, kw) = (c.heads * c.hd, c.kv_heads * c.hd);
    let scale = (1.0 / (c.hd as f64).sqrt()) as f32;
    let nan = T::from_f32(f32::NAN);
    let mut g = Got {
        out: vec![nan; n * qw],
        lse: vec![f32::NAN; n * c.heads],
        dq: vec![nan; n * qw],
        dk: vec![nan; n * kw],
        dv: vec![nan; n * kw],
    };
    let mut dsum = vec![f32::NAN; n * c.heads];
    let (ni, seq, heads, kvh, hd) = (
        n as i32,
        c.seq as i32,
        c.heads as i32,
        c.kv_heads as i32,
        c.hd as i32,
    );
    let cp = |v: &Vec<T>| v.as_ptr().cast::<c_void>();
    let warps = (n * c.heads).div_ceil(4) as u32;
    let (_, dkdv, dq) = *T::BWD
        .iter()
        .find(|b| b.0 == c.hd)
        .expect("a backward kernel for hd");
    let (bq, bk) = tiles(c.hd);
    let smem = bwd_smem(c.hd);
    // SAFETY: the declarations match kernels/emu/launchers.cpp; every buffer holds the values
    // the kernels' documented layouts address for these dims, and the grids are the ones
    // documented above the kernels.
    unsafe {
        let tiled = T::TILED.iter().find(|t| t.0 == c.hd && !simple_forward);
        if let Some(&(_, f)) = tiled {
            check(
                f(
                    c.seq.div_ceil(bq) as u32,
                    c.batch as u32,
                    c.heads as u32,
                    BWD_THREADS,
                    1,
                    1,
                    smem,
                    g.out.as_mut_ptr().cast(),
                    g.lse.as_mut_ptr(),
                    cp(&x.q),
                    cp(&x.k),
                    cp(&x.v),
                    x.starts.as_ptr(),
                    seq,
                    heads,
                    kvh,
                    scale,
                ),
                "attention_forward_tiled",
            );
        } else {
            let f = T::FWD;
            check(
                f(
                    warps,
                    1,
                    1,
                    128,
                    1,
                    1,
                    4 * c.hd * 4,
                    g.out.as_mut_ptr().cast(),
                    g.lse.as_mut_ptr(),
                    cp(&x.q),
                    cp(&x.k),
                    cp(&x.v),
                    x.starts.as_ptr(),
                    ni,
                    seq,
                    heads,
                    kvh,
                    hd,
                    scale,
                ),
                "attention_forward",
            );
        }
        let f = T::DOT;
        check(
            f(
                warps,
                1,
                1,
                128,
                1,
                1,
                0,
                dsum.as_mut_ptr(),
                cp(&x.dout),
                cp(&g.out),
                ni,
                heads,
                hd,
            ),
            "attention_backward_dot",
        );
        check(
            dkdv(
                c.seq.div_ceil(bk) as u32,
                c.batch as u32,
                c.kv_heads as u32,
                BWD_THREADS,
                1,
                1,
                smem,
                g.dk.as_mut_ptr().cast(),
                g.dv.as_mut_ptr().cast(),
                cp(&x.q),
                cp(&x.k),
                cp(&x.v),
                cp(&x.dout),
                g.lse.as_ptr(),
                dsum.as_ptr(),
                x.starts.as_ptr(),
                seq,
                heads,
                kvh,
                scale,
            ),
            "attention_backward_dkdv",
        );
        check(
            dq(
                c.seq.div_ceil(bq) as u32,
                c.batch as u32,
                c.heads as u32,
                BWD_THREADS,
                1,
                1,
                smem,
                g.dq.as_mut_ptr().cast(),
                cp(&x.q),
                cp(&x.k),
                cp(&x.v),
                cp(&x.dout),
                g.lse.as_ptr(),
                dsum.as_ptr(),
                x.starts.as_ptr(),
                seq,
                heads,
                kvh,
                scale,
            ),
            "attention_backward_dq",
        );
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
    let what = c.name::<T>();
    let n = c.batch * c.seq;
    let (qw, kw) = (c.heads * c.hd, c.kv_heads * c.hd);
    let mut rng = Rng(seed);
    let starts = c.starts();
    let x = Inputs::<T> {
        q: rng.vec(n * qw, 2.0),
        k: rng.vec(n * kw, 2.0),
        v: rng.vec(n * kw, 1.0),
        dout: rng.vec(n * qw, 1.0),
        starts: starts.iter().map(|&s| s as i32).collect(),
    };
    let mut runs = Vec::new();
    for reverse in [0, 1] {
        // SAFETY: sets a thread-local flag of the emulator.
        unsafe { sys::emu_set_schedule(reverse) };
        runs.push(run_kernels(c, &x, false));
    }
    // SAFETY: as above.
    unsafe { sys::emu_set_schedule(0) };
    let got = runs.pop().expect("two runs");
    assert!(
        got.same_bits(&runs[0]),
        "{what}: the two schedules gave different bits"
    );

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
    let (afrac, rtol) = if T::NAME == "bf16" {
        (1e-2, T::RTOL)
    } else {
        (2e-5, T::RTOL)
    };
    assert_close::<f32>(&format!("{what} lse"), &got.lse, &lse, 1e-5, 1e-5);
    if T::TILED.iter().any(|t| t.0 == c.hd) {
        // The simple (one warp per query) forward keeps the same contract.
        let simple = run_kernels(c, &x, true);
        assert_close::<f32>(&format!("{what} simple lse"), &simple.lse, &lse, 1e-5, 1e-5);
        assert_close(
            &format!("{what} simple out"),
            &simple.out,
            &out,
            afrac,
            rtol,
        );
    }
    assert_close(&format!("{what} out"), &got.out, &out, afrac, rtol);
    assert_close(&format!("{what} dq"), &got.dq, &dq, afrac, rtol);
    assert_close(&format!("{what} dk"), &got.dk, &dk, afrac, rtol);
    assert_close(&format!("{what} dv"), &got.dv, &dv, afrac, rtol);
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
    let mut rng = Rng(77);
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let x = Inputs::<f32> {
        q: rng.vec(seq * qw, 2.0),
        k: rng.vec(seq * kw, 2.0),
        v: rng.vec(seq * kw, 1.0),
        dout: rng.vec(seq * qw, 1.0),
        starts: packed.starts().iter().map(|&s| s as i32).collect(),
    };
    let whole = run_kernels(&packed, &x, false);
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
        let g = run_kernels(&alone, &xa, false);
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
