//! Criterion benches of the CPU backend's heaviest ops at SmolLM2-135M's shapes (a step of
//! batch 4 × seq 256 = 1024 tokens) and at a Llama-3-8B layer's projection shape. Throughput
//! is reported in FLOP so the fraction of the matmul ceiling reads directly off the output.
//!
//! `cargo bench --bench ops` (all cores) or `RAYON_NUM_THREADS=1 cargo bench --bench ops`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::Backend;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn gemms(c: &mut Criterion) {
    let be: CpuBackend = CpuBackend::new();
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20);
    // (name, m, n, k, trans_a, trans_b): X·Wᵀ, dX = dY·W, the LoRA products, an 8B projection.
    let shapes = [
        (
            "smollm_qproj_fwd_1024x576x576_nt",
            1024,
            576,
            576,
            false,
            true,
        ),
        (
            "smollm_up_fwd_1024x1536x576_nt",
            1024,
            1536,
            576,
            false,
            true,
        ),
        (
            "smollm_down_bwd_1024x1536x576_nn",
            1024,
            1536,
            576,
            false,
            false,
        ),
        ("lora_xa_1024x8x576_nt", 1024, 8, 576, false, true),
        ("lora_db_576x8x1024_tn", 576, 8, 1024, true, false),
        (
            "llama8b_qproj_fwd_512x4096x4096_nt",
            512,
            4096,
            4096,
            false,
            true,
        ),
    ];
    for (name, m, n, k, ta, tb) in shapes {
        let a = data(m * k, 1);
        let b = data(k * n, 2);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| {
                be.gemm(&mut out, &a, &b, m, n, k, ta, tb, 1.0, 0.0)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let be: CpuBackend = CpuBackend::new();
    let (batch, seq, heads, kvh, hd) = (4, 256, 9, 3, 64);
    let n = batch * seq;
    let starts: Vec<u32> = vec![0; n];
    let q = data(n * heads * hd, 3);
    let k = data(n * kvh * hd, 4);
    let v = data(n * kvh * hd, 5);
    let dout = data(n * heads * hd, 6);
    let mut out = vec![0.0f32; q.len()];
    let mut lse = vec![0.0f32; n * heads];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let mut g = c.benchmark_group("attention_smollm_4x256");
    g.sample_size(20);
    // Causal: half of the seq² scores, 2 FLOP per multiply-add, QKᵀ and PV.
    let flops = (batch * heads * seq * seq / 2 * hd * 2 * 2) as u64;
    g.throughput(Throughput::Elements(flops));
    g.bench_function("forward", |b| {
        b.iter(|| {
            be.attention_forward(
                &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
            )
            .unwrap()
        })
    });
    g.bench_function("backward", |b| {
        b.iter(|| {
            be.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                heads, kvh, hd,
            )
            .unwrap()
        })
    });
    g.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let be: CpuBackend = CpuBackend::new();
    let (n, h, vocab) = (1024, 576, 49152);
    let hidden = data(n * h, 7);
    let head = data(vocab * h, 8);
    let targets: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % vocab as i32).collect();
    let mut dh = vec![0.0f32; n * h];
    let mut g = c.benchmark_group("cross_entropy_smollm_1024");
    g.sample_size(10);
    // Logits GEMM plus the dhidden GEMM.
    g.throughput(Throughput::Elements((2 * 2 * n * h * vocab) as u64));
    g.bench_function("forward_backward", |b| {
        b.iter(|| {
            be.cross_entropy(
                Some(&mut dh),
                &hidden,
                &head,
                &targets,
                n,
                h,
                vocab,
                1.0 / n as f32,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, gemms, attention, cross_entropy);
criterion_main!(benches);
