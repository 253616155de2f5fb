//! Attention of the CUDA backend (engine/src/backend/kernel/attention.rs on `CudaDevice`) on GPU 0
//! against the CPU backend: causal GQA attention over packed rows, head_dim 64 and 128, f32
//! (CUDA-core kernels) and bf16 storage (tensor-core kernels, kernels/attention_mma*.cu; the
//! CPU runs on the same rounded inputs), tolerance `atol + |ref|·rtol`;
//! two backward runs bit-identical; shape and dtype errors. Without the `cuda` feature this
//! file is empty; without a usable GPU each test prints why it skips (set
//! GRADIENTS_REQUIRE_GPU=1 to make that a failure, for runs on a GPU machine). The same
//! kernels run in the emulator in tests/kernels_emu_attention.rs.
//! Run: `cargo test --features cuda --test cuda_attention`.
#![cfg(feature = "cuda")]

mod common;

use std::sync::OnceLock;

use gradients_engine::backend::attention_dims::check_starts;
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::cuda::{CudaBackend, CudaBuf};
use gradients_engine::backend::Backend;
use gradients_engine::DType;
use half::bf16;

/// The CUDA backend on GPU 0, shared by the tests; `None` (with the reason printed) when
/// there is none.
fn gpu() -> Option<&'static CudaBackend> {
    static BE: OnceLock<Result<CudaBackend, String>> = OnceLock::new();
    common::gpu_or_skip(BE.get_or_init(|| CudaBackend::on_gpu(0).map_err(|e| e.to_string())))
}

/// SplitMix64 stream of uniform f32 in [-scale, scale).
struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.0;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                scale * (((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }
}

/// `|got − want| <= afrac·max|want| + |want|·rtol` elementwise; the reference is not all zero.
fn assert_close(what: &str, got: &[f32], want: &[f32], afrac: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max = want.iter().fold(0f32, |m, w| m.max(w.abs()));
    assert!(max > 0.0, "{what}: reference all zeros");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = afrac * max + w.abs() * rtol;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

/// Per token of `batch` rows packed with samples of `lens`: its sample's first in-row index.
fn starts_of(batch: usize, lens: &[usize]) -> Vec<u32> {
    let mut row = Vec::new();
    let mut at = 0u32;
    for &l in lens {
        row.extend(std::iter::repeat_n(at, l));
        at += l as u32;
    }
    row.repeat(batch)
}

struct Out {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run_gpu(
    be: &CudaBackend,
    dt: DType,
    x: [&[f32]; 4],
    starts: &[u32],
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
) -> Out {
    let n = batch * seq;
    let [q, k, v, dout] = x.map(|a| be.upload_as(dt, a).unwrap());
    let zeros = |len: usize| be.upload_as(dt, &vec![0.0; len]).unwrap();
    let mut out = zeros(n * heads * hd);
    let mut lse = be.alloc(n * heads).unwrap();
    be.attention_forward(
        &mut out, &mut lse, &q, &k, &v, starts, batch, seq, heads, kv_heads, hd,
    )
    .unwrap();
    let mut dq = zeros(n * heads * hd);
    let mut dk = zeros(n * kv_heads * hd);
    let mut dv = zeros(n * kv_heads * hd);
    be.attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, starts, batch, seq, heads,
        kv_heads, hd,
    )
    .unwrap();
    let dl = |b: &CudaBuf| be.download(b).unwrap();
    Out {
        out: dl(&out),
        lse: dl(&lse),
        dq: dl(&dq),
        dk: dl(&dk),
        dv: dl(&dv),
    }
}

/// (batch, seq, heads, kv_heads, hd, sample lengths per row).
type Case = (usize, usize, usize, usize, usize, &'static [usize]);

#[test]
fn attention_forward_backward_match_cpu_backend() {
    let Some(be) = gpu() else { return };
    let cpu = CpuBackend::<f32>::new();
    // (batch, seq, heads, kv_heads, hd, sample lengths per row)
    let cases: [Case; 4] = [
        (2, 300, 8, 2, 64, &[120, 100, 80]),
        (1, 257, 6, 3, 128, &[200, 57]),
        (3, 64, 4, 4, 64, &[64]),
        (1, 512, 9, 3, 128, &[1, 300, 211]),
    ];
    for (i, &(batch, seq, heads, kv_heads, hd, lens)) in cases.iter().enumerate() {
        let n = batch * seq;
        let mut rng = Rng(40 + i as u64);
        let (qw, kw) = (heads * hd, kv_heads * hd);
        let starts = starts_of(batch, lens);
        let raw = [
            rng.vec(n * qw, 2.0),
            rng.vec(n * kw, 2.0),
            rng.vec(n * kw, 1.0),
            rng.vec(n * qw, 1.0),
        ];
        for dt in [DType::F32, DType::BF16] {
            let what = format!("{dt:?} batch={batch} seq={seq} heads={heads}/{kv_heads} hd={hd}");
            // The CPU sees the values the GPU stores.
            let x: Vec<Vec<f32>> = raw
                .iter()
                .map(|a| match dt {
                    DType::BF16 => a.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
                    _ => a.clone(),
                })
                .collect();
            let (q, k, v, dout) = (&x[0], &x[1], &x[2], &x[3]);
            let (mut out, mut lse) = (vec![0f32; n * qw], vec![0f32; n * heads]);
            cpu.attention_forward(
                &mut out, &mut lse, q, k, v, &starts, batch, seq, heads, kv_heads, hd,
            )
            .unwrap();
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; n * qw], vec![0f32; n * kw], vec![0f32; n * kw]);
            cpu.attention_backward(
                &mut dq, &mut dk, &mut dv, dout, q, k, v, &out, &lse, &starts, batch, seq, heads,
                kv_heads, hd,
            )
            .unwrap();
            let args = [q.as_slice(), k, v, dout];
            let g = run_gpu(be, dt, args, &starts, batch, seq, heads, kv_heads, hd);
            let (afrac, rtol) = if dt == DType::BF16 {
                (1e-2, 1.6e-2)
            } else {
                (1e-4, 1e-3)
            };
            assert_close(&format!("{what} lse"), &g.lse, &lse, 1e-5, 1e-5);
            assert_close(&format!("{what} out"), &g.out, &out, afrac, rtol);
            assert_close(&format!("{what} dq"), &g.dq, &dq, afrac, rtol);
            assert_close(&format!("{what} dk"), &g.dk, &dk, afrac, rtol);
            assert_close(&format!("{what} dv"), &g.dv, &dv, afrac, rtol);
            let again = run_gpu(be, dt, args, &starts, batch, seq, heads, kv_heads, hd);
            for (name, a, b) in [
                ("out", &g.out, &again.out),
                ("dq", &g.dq, &again.dq),
                ("dk", &g.dk, &again.dk),
                ("dv", &g.dv, &again.dv),
            ] {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(
                    bits(a) == bits(b),
                    "{what}: {name} differs between two runs"
                );
            }
        }
    }
}

#[test]
fn attention_rejects_bad_shapes_and_dtypes() {
    // Host-side checks first (no GPU needed).
    let e = check_starts("t", &[0, 2, 0], 1, 3).unwrap_err().to_string();
    assert!(
        e.contains("token 1 (index 1 in its row) has sample start 2"),
        "{e}"
    );
    let Some(be) = gpu() else { return };
    let (batch, seq, heads, kvh, hd) = (1, 4, 2, 1, 64);
    let n = batch * seq;
    let a = |dt, len| be.upload_as(dt, &vec![0.0; len]).unwrap();
    let (q, k, v) = (
        a(DType::F32, n * heads * hd),
        a(DType::F32, n * kvh * hd),
        a(DType::BF16, n * kvh * hd),
    );
    let mut out = a(DType::F32, n * heads * hd);
    let mut lse = a(DType::F32, n * heads);
    let st = [0u32; 4];
    let e = be
        .attention_forward(
            &mut out,
            &mut lse,
            &q,
            &k,
            &k,
            &st[..2],
            1,
            3,
            heads,
            kvh,
            hd,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("starts has 2 values, expected 3"), "{e}");
    let e = be
        .attention_forward(
            &mut out, &mut lse, &q, &k, &v, &st, batch, seq, heads, kvh, hd,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("v is Bf16, expected F32"), "{e}");
    let e = be
        .attention_forward(&mut out, &mut lse, &q, &k, &k, &st, batch, seq, 3, kvh, hd)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out has 512 values, expected 768"), "{e}");
    let dout = a(DType::F32, n * heads * 96);
    let (mut dq, mut dk, mut dv) = (
        a(DType::F32, n * heads * 96),
        a(DType::F32, n * kvh * 96),
        a(DType::F32, n * kvh * 96),
    );
    let (q, k, o) = (
        a(DType::F32, n * heads * 96),
        a(DType::F32, n * kvh * 96),
        a(DType::F32, n * heads * 96),
    );
    let e = be
        .attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &k, &o, &lse, &st, batch, seq, heads, kvh, 96,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("head_dim 96"), "{e}");
}
