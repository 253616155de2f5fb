//! Criterion benches of the heaviest ops at SmolLM2-135M's shapes (a step of batch 4 × seq
//! 256 = 1024 tokens) and at a Llama-3-8B layer's projection shape, plus the elementwise and
//! RMSNorm passes and the gradient norm over SmolLM2's 420 LoRA tensors. Throughput is
//! reported in FLOP (GEMM, attention, cross-entropy) or values, so the fraction of the matmul
//! or memory ceiling reads directly off the output.
//!
//! Every bench runs on the CPU backend (ids as before: `gemm/…`), the `gemm_weight` and
//! cross-entropy ones also in its bf16 mode on AVX512_BF16 CPUs (`cpu_bf16_gemm_weight/…`), and, built with the `cuda`
//! feature on a machine with a usable GPU, on the CUDA backend (`cuda_gemm/…`), where the
//! GEMMs, elementwise ops, RMSNorm and attention also run on bf16 storage (`…_bf16`); each
//! timed GPU iteration ends with a synchronising read-back (benches/support).
//!
//! `cargo bench --bench ops` (all cores), `RAYON_NUM_THREADS=1 cargo bench --bench ops`,
//! `cargo bench --features cuda --bench ops -- cuda_` (the GPU only);
//! `GRADIENTS_BENCH_EMU=1 cargo test --bench ops` runs every bench once, the CUDA ones on the
//! kernel emulator (a check that they run, no timing).

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gradients_engine::DType;
use support::{data, dtype_suffix, BenchBackend, Target};

fn gemms<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    let mut g = t.group(c, "gemm");
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
    for &dtype in t.be.dtypes() {
        for (name, m, n, k, ta, tb) in shapes {
            // bf16 operands, f32 output (the frozen weights' storage on the GPU).
            let a = t.up(dtype, &data(m * k, 1));
            let b = t.up(dtype, &data(k * n, 2));
            let mut out = t.up(DType::F32, &vec![0.0; m * n]);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(format!("{name}{}", dtype_suffix(dtype)), |bench| {
                bench.iter(|| {
                    t.be.gemm(&mut out, &a, &b, m, n, k, ta, tb, 1.0, 0.0)
                        .unwrap();
                    t.sync();
                })
            });
        }
    }
    g.finish();
}

fn attention<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    let (batch, seq, heads, kvh, hd) = (4, 256, 9, 3, 64);
    let n = batch * seq;
    let starts: Vec<u32> = vec![0; n];
    let mut g = t.group(c, "attention_smollm_4x256");
    g.sample_size(20);
    // Causal: half of the seq² scores, 2 FLOP per multiply-add, QKᵀ and PV.
    let flops = (batch * heads * seq * seq / 2 * hd * 2 * 2) as u64;
    g.throughput(Throughput::Elements(flops));
    for &dtype in t.be.dtypes() {
        let up = |len: usize, seed: u64| t.up(dtype, &data(len, seed));
        let (q, k, v) = (
            up(n * heads * hd, 3),
            up(n * kvh * hd, 4),
            up(n * kvh * hd, 5),
        );
        let dout = up(n * heads * hd, 6);
        let mut out = up(n * heads * hd, 0);
        let (mut dq, mut dk, mut dv) = (
            up(n * heads * hd, 0),
            up(n * kvh * hd, 0),
            up(n * kvh * hd, 0),
        );
        // the log-sum-exp is f32 whatever the storage
        let mut lse = t.up(DType::F32, &vec![0.0; n * heads]);
        let sfx = dtype_suffix(dtype);
        g.bench_function(format!("forward{sfx}"), |b| {
            b.iter(|| {
                t.be.attention_forward(
                    &mut out, &mut lse, &q, &k, &v, &starts, batch, seq, heads, kvh, hd,
                )
                .unwrap();
                t.sync();
            })
        });
        g.bench_function(format!("backward{sfx}"), |b| {
            b.iter(|| {
                t.be.attention_backward(
                    &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &starts, batch, seq,
                    heads, kvh, hd,
                )
                .unwrap();
                t.sync();
            })
        });
    }
    g.finish();
}

/// The frozen-weight products through `gemm_weight` (the op the model's Linears use): the
/// forward `X·Wᵀ` and the input gradient `dY·W` at SmolLM2's MLP shape. Throughput in FLOP.
fn weight_gemms<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    use gradients_engine::model::Frozen;
    use gradients_engine::Tensor;
    let mut g = t.group(c, "gemm_weight");
    g.sample_size(20);
    let (m, rows, cols) = (1024, 1536, 576);
    let w = Frozen::from(Tensor::new(vec![rows, cols], data(rows * cols, 3)).unwrap());
    let w = t.be.upload_weight(&w).unwrap();
    for (name, trans_w, k, n) in [
        ("smollm_up_fwd_1024x1536x576", true, cols, rows),
        ("smollm_up_bwd_1024x576x1536", false, rows, cols),
    ] {
        let a = t.up(DType::F32, &data(m * k, 4));
        let mut out = t.up(DType::F32, &vec![0.0; m * n]);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| {
                t.be.gemm_weight(&mut out, &a, &w, m, trans_w, 1.0, 0.0)
                    .unwrap();
                t.sync();
            })
        });
    }
    g.finish();
}

fn cross_entropy<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    let (n, h, vocab) = (1024, 576, 49152);
    let hidden = t.up(DType::F32, &data(n * h, 7));
    let head = t.up(DType::F32, &data(vocab * h, 8));
    let targets: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % vocab as i32).collect();
    let mut dh = t.up(DType::F32, &vec![0.0; n * h]);
    let mut g = t.group(c, "cross_entropy_smollm_1024");
    g.sample_size(10);
    // Logits GEMM plus the dhidden GEMM.
    g.throughput(Throughput::Elements((2 * 2 * n * h * vocab) as u64));
    g.bench_function("forward_backward", |b| {
        b.iter(|| {
            // the per-token losses come back to the host: synchronised
            t.be.cross_entropy(
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

/// The memory-bound passes around the GEMMs: `axpy` and `scale` over SmolLM2's MLP
/// activation `[1024, 1536]`, RMSNorm forward and backward over its hidden `[1024, 576]`.
/// Throughput in values.
fn elementwise_rmsnorm<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    let mut g = t.group(c, "elementwise_smollm_1024");
    g.sample_size(20);
    let (n, h, inter) = (1024usize, 576usize, 1536usize);
    for &dtype in t.be.dtypes() {
        let sfx = dtype_suffix(dtype);
        let len = n * inter;
        let mut x = t.up(dtype, &data(len, 9));
        let y = t.up(dtype, &data(len, 10));
        g.throughput(Throughput::Elements(len as u64));
        g.bench_function(format!("axpy_1024x1536{sfx}"), |b| {
            b.iter(|| {
                t.be.axpy(&mut x, 0.5, &y).unwrap();
                t.sync();
            })
        });
        g.bench_function(format!("scale_1024x1536{sfx}"), |b| {
            b.iter(|| {
                t.be.scale(&mut x, -1.0).unwrap(); // exact, stays bounded
                t.sync();
            })
        });
        let xs = t.up(dtype, &data(n * h, 11));
        let w = t.up(
            dtype,
            &data(h, 12).iter().map(|v| 1.0 + v).collect::<Vec<_>>(),
        );
        let dout = t.up(dtype, &data(n * h, 13));
        let mut out = t.up(dtype, &vec![0.0; n * h]);
        let mut dx = t.up(dtype, &vec![0.0; n * h]);
        let mut rstd = t.up(DType::F32, &vec![0.0; n]);
        g.throughput(Throughput::Elements((n * h) as u64));
        g.bench_function(format!("rmsnorm_forward_1024x576{sfx}"), |b| {
            b.iter(|| {
                t.be.rmsnorm_forward(&mut out, &mut rstd, &xs, &w, n, h, 1e-5)
                    .unwrap();
                t.sync();
            })
        });
        g.bench_function(format!("rmsnorm_backward_1024x576{sfx}"), |b| {
            b.iter(|| {
                t.be.rmsnorm_backward(&mut dx, &dout, &xs, &w, &rstd, n, h)
                    .unwrap();
                t.sync();
            })
        });
    }
    g.finish();
}

/// The global gradient norm over SmolLM2-135M's LoRA gradients (r 8 on the seven targets of
/// 30 layers: A `[8, in]` and B `[out, 8]`, 420 tensors, 4.9M values): one `sum_squares` per
/// tensor (on the GPU one read-back each) against one `sum_squares_each` (one read-back).
fn grad_norm<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    // (in, out) of q, k, v, o, gate, up, down at hidden 576, kv 192, intermediate 1536.
    let dims = [
        (576, 576),
        (576, 192),
        (576, 192),
        (576, 576),
        (576, 1536),
        (576, 1536),
        (1536, 576),
    ];
    let r = 8;
    let mut grads = Vec::new();
    for layer in 0..30u64 {
        for (i, &(d_in, d_out)) in dims.iter().enumerate() {
            let seed = 100 + layer * 16 + 2 * i as u64;
            grads.push(t.up(DType::F32, &data(r * d_in, seed)));
            grads.push(t.up(DType::F32, &data(d_out * r, seed + 1)));
        }
    }
    let refs: Vec<&B::Buf> = grads.iter().collect();
    let values: usize = refs.iter().map(|g| t.be.len(g)).sum();
    let mut g = t.group(c, "grad_norm_smollm_lora_r8");
    g.sample_size(20);
    g.throughput(Throughput::Elements(values as u64));
    // Both return host values: synchronised.
    g.bench_function("sum_squares_per_tensor", |b| {
        b.iter(|| {
            let mut s = 0.0f64;
            for x in &refs {
                s += t.be.sum_squares(x).unwrap();
            }
            s.sqrt()
        })
    });
    g.bench_function("sum_squares_each", |b| {
        b.iter(|| gradients_engine::optim::global_norm(&t.be, &refs).unwrap())
    });
    g.finish();
}

/// Every bench on `t`.
fn on<B: BenchBackend>(c: &mut Criterion, t: &Target<B>) {
    gemms(c, t);
    weight_gemms(c, t);
    attention(c, t);
    cross_entropy(c, t);
    elementwise_rmsnorm(c, t);
    grad_norm(c, t);
}

fn all(c: &mut Criterion) {
    on(c, &support::cpu());
    // the bf16 mode changes the frozen-weight and lm_head products only
    if let Some(bf16) = support::cpu_bf16() {
        weight_gemms(c, &bf16);
        cross_entropy(c, &bf16);
    }
    if let Some(emu) = support::emu() {
        on(c, &emu);
    }
    #[cfg(feature = "cuda")]
    if let Some(gpu) = support::cuda() {
        on(c, &gpu);
    }
    #[cfg(not(feature = "cuda"))]
    support::cuda_missing();
}

criterion_group!(benches, all);
criterion_main!(benches);
