//! The kernel backend (`KernelBackend`, the CUDA backend's op logic written once) over the
//! kernel emulator (`EmuDevice`: the exact kernels/*.cu sources on the CPU), against the CPU
//! backend: every `Backend` op on random inputs (kernel_backend/ops.rs), then a tiny random
//! Llama's training steps, LoRA gradients and eval losses (kernel_backend/model.rs), and two
//! emulator runs bit-identical; the KV cache's ops and KV-cached decoding likewise. The
//! launch checks: a wrong kernel name, argument count, kind or element type is an error before
//! anything runs. The same suites run on a GPU in
//! tests/cuda_backend.rs. Run: `cargo test --test kernel_backend`.

mod common;
#[path = "kernel_backend/model.rs"]
mod model;
#[path = "kernel_backend/ops.rs"]
mod ops;

use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::{check_args, EmuDevice, KArg, KernelBackend, KernelDevice};
use gradients_engine::backend::{Backend, Precision};
use gradients_engine::DType;

fn emu() -> KernelBackend<EmuDevice> {
    KernelBackend::new(EmuDevice)
}

#[test]
fn elementwise_gemm_adamw_match_cpu() {
    ops::elementwise_gemm_adamw(&emu());
}

#[test]
fn block_ops_match_cpu() {
    ops::block_ops(&emu());
}

#[test]
fn sum_squares_each_is_bit_identical_to_one_call_per_tensor() {
    ops::sum_squares_each(&emu());
    ops::sum_squares_each(&CpuBackend::<f32>::new());
    // a bf16 buffer among the f32 ones is named
    let be = emu();
    let a = be.upload(&[1.0; 4]).unwrap();
    let b = be.upload_as(DType::BF16, &[1.0; 4]).unwrap();
    let e = be.sum_squares_each(&[&a, &b]).unwrap_err().to_string();
    assert!(e.contains("sum_squares_each") && e.contains("xs[1]"), "{e}");
}

#[test]
fn attention_matches_cpu_for_every_head_dim() {
    let be = emu();
    // hd 32: the simple forward, tiled backward; 64 and 128: tiled both ways; 16: forward
    // only (the backward kernels do not cover it, which is an error).
    for hd in [32, 64, 128, 16] {
        ops::attention(&be, hd, &[5, 11, 3]);
    }
}

/// bf16 buffers: hd 64 and 128 take the tensor-core kernels (kernels/attention_mma*.cu), hd 32
/// the CUDA-core ones; all against the CPU backend on the bf16-rounded inputs, with packed rows
/// longer than one 64-row block.
#[test]
fn attention_in_bf16_matches_cpu_for_every_head_dim() {
    let be = emu().with_precision(Precision::Bf16);
    for hd in [64, 128, 32] {
        ops::attention(&be, hd, &[5, 11, 3]);
        ops::attention(&be, hd, &[70, 1, 29]);
    }
}

#[test]
fn kv_cache_ops_match_cpu() {
    let be = emu();
    // 16 and 32: one output value per lane; 64 and 128: two and four
    for hd in [16, 32, 64, 128] {
        ops::decode(&be, hd);
    }
}

#[test]
fn cached_decoding_matches_cpu_and_repeats_bit_for_bit() {
    let be = emu();
    let a = model::decode(&be, 32);
    model::assert_decodes_like(&a, &model::decode(&CpuBackend::<f32>::new(), 32));
    let b = model::decode(&be, 32);
    let bits = |d: &model::Decoded| d.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a.completions, b.completions);
}

#[test]
fn llama_steps_match_cpu_and_repeat_bit_for_bit() {
    for hd in [32, 64] {
        let be = KernelBackend::new(EmuDevice);
        let a = model::run(&be, hd);
        model::assert_matches(&a, &model::reference(hd));
        let b = model::run(&KernelBackend::new(EmuDevice), hd);
        model::assert_bit_identical(&a, &b);
    }
}

#[test]
fn launch_arguments_are_checked_against_the_kernel_table() {
    let dev = EmuDevice;
    let be = emu();
    let mut x = be.upload(&[1.0; 8]).unwrap();
    let y = be.upload(&[1.0; 8]).unwrap();
    let ids = dev.upload_i32(&[0; 8]).unwrap();
    check_args(
        &dev,
        "axpy_f32",
        &[
            KArg::Mut(&mut x, 0),
            KArg::Ref(&y, 0),
            KArg::Usize(8),
            KArg::F32(1.0),
        ],
    )
    .unwrap();
    let cases: Vec<(&str, Vec<KArg<'_, _>>, &str)> = vec![
        ("axpy_f64", vec![], "not in the kernel table"),
        (
            "axpy_f32",
            vec![KArg::Usize(8)],
            "1 arguments given, the kernel takes 4",
        ),
        (
            "axpy_f32",
            vec![
                KArg::Ref(&y, 0),
                KArg::Ref(&y, 0),
                KArg::Usize(8),
                KArg::F32(1.0),
            ],
            "argument 0 is a read-only buffer",
        ),
        (
            "axpy_f32",
            vec![
                KArg::Ref(&y, 0),
                KArg::Ref(&ids, 0),
                KArg::Usize(8),
                KArg::F32(1.0),
            ],
            "argument 0 is a read-only buffer",
        ),
        (
            "scale_f32",
            vec![KArg::Ref(&ids, 0), KArg::Usize(8), KArg::F32(1.0)],
            "argument 0",
        ),
        (
            "fill_f32",
            vec![KArg::Ref(&y, 0), KArg::Usize(8), KArg::I32(1)],
            "argument 0",
        ),
    ];
    for (name, args, want) in cases {
        let e = check_args(&dev, name, &args).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(name), "{name}: {e}");
    }
    let mut z = dev.upload_i32(&[0; 8]).unwrap();
    let e = check_args(
        &dev,
        "fill_f32",
        &[KArg::Mut(&mut z, 0), KArg::Usize(8), KArg::F32(0.0)],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("argument 0 is a I32 buffer, expected F32"),
        "{e}"
    );
    let e = check_args(
        &dev,
        "fill_f32",
        &[KArg::Mut(&mut x, 9), KArg::Usize(8), KArg::F32(0.0)],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("offset 9 past the buffer's 8 values"),
        "{e}"
    );
    let e = check_args(
        &dev,
        "fill_f32",
        &[KArg::Mut(&mut x, 0), KArg::Usize(8), KArg::I32(0)],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("argument 2 is i32, expected F32"),
        "{e}"
    );
    // Mixed dtypes in one op are an error naming the buffer.
    let yb = be
        .upload_as(gradients_engine::DType::BF16, &[1.0; 8])
        .unwrap();
    let e = be.axpy(&mut x, 1.0, &yb).unwrap_err();
    assert!(e.to_string().contains("y is Bf16"), "{e}");
}

#[test]
fn bf16_buffers_run_the_bf16_kernels() {
    use gradients_engine::DType;
    let be = emu();
    let mut rng = ops::Rng(3);
    let (x, y) = (rng.vec(1024, -2.0, 2.0), rng.vec(1024, -2.0, 2.0));
    let mut xb = be.upload_as(DType::BF16, &x).unwrap();
    let yb = be.upload_as(DType::BF16, &y).unwrap();
    be.axpy(&mut xb, 0.5, &yb).unwrap();
    let r = |v: f32| half::bf16::from_f32(v).to_f32();
    let want: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(&a, &b)| r(r(a) + 0.5 * r(b)))
        .collect();
    ops::same("bf16 axpy", &be.download(&xb).unwrap(), &want);
    let (batch, seq, heads, hd) = (1usize, 9usize, 2usize, 64usize);
    let n = batch * seq;
    let q = rng.vec(n * heads * hd, -1.0, 1.0);
    let qb = be.upload_as(DType::BF16, &q).unwrap();
    let mut ob = be
        .upload_as(DType::BF16, &vec![0.0; n * heads * hd])
        .unwrap();
    let mut lse = be.alloc(n * heads).unwrap();
    let starts = vec![0u32; n];
    be.attention_forward(
        &mut ob, &mut lse, &qb, &qb, &qb, &starts, batch, seq, heads, heads, hd,
    )
    .unwrap();
    let cpu = gradients_engine::backend::cpu::CpuBackend::<f32>::new();
    let qr: Vec<f32> = q.iter().map(|&v| r(v)).collect();
    let (mut oc, mut lc) = (vec![0f32; q.len()], vec![0f32; n * heads]);
    cpu.attention_forward(
        &mut oc, &mut lc, &qr, &qr, &qr, &starts, batch, seq, heads, heads, hd,
    )
    .unwrap();
    ops::close(
        "bf16 attention out",
        &be.download(&ob).unwrap(),
        &oc,
        1e-2,
        1e-2,
    );
    ops::close(
        "bf16 attention lse",
        &be.download(&lse).unwrap(),
        &lc,
        1e-3,
        1e-3,
    );
    // the KV cache's ops: row 8 of q against rows 0..=8 of the same keys and values (as
    // the full forward's last query), written into a bf16 cache by copy_rows
    let mut cache = be
        .upload_as(DType::BF16, &vec![0.0; 12 * heads * hd])
        .unwrap();
    let rows: Vec<u32> = (3..3 + n as u32).collect();
    be.copy_rows(&mut cache, &qb, &rows, heads * hd).unwrap();
    let q8 = be.upload_as(DType::BF16, &q[8 * heads * hd..]).unwrap();
    let mut o8 = be.upload_as(DType::BF16, &vec![0.0; heads * hd]).unwrap();
    be.attention_decode(&mut o8, &q8, &cache, &cache, &[3], &[8], heads, heads, hd)
        .unwrap();
    ops::close(
        "bf16 attention_decode",
        &be.download(&o8).unwrap(),
        &oc[8 * heads * hd..],
        1e-2,
        1e-2,
    );
}

/// Mixed precision: bf16 weights, activations and GEMM operands with f32 LoRA parameters,
/// gradients and AdamW track the f32 CPU run within bf16's rounding, repeat bit for bit, and
/// differ from the f32 kernel run (the precision took effect).
#[test]
fn llama_steps_in_bf16_track_cpu_and_repeat_bit_for_bit() {
    let bf16 = || KernelBackend::new(EmuDevice).with_precision(Precision::Bf16);
    for hd in [32, 64] {
        let a = model::run(&bf16(), hd);
        let (_, _, init, _) = model::setup(hd);
        model::assert_tracks_bf16(&a, &model::reference(hd), &init);
        model::assert_bit_identical(&a, &model::run(&bf16(), hd));
        let f32_run = model::run(&emu(), hd);
        assert_ne!(
            a.eval, f32_run.eval,
            "hd {hd}: bf16 eval equals the f32 run's"
        );
    }
}

/// The compute-precision API: `alloc_compute`/`upload_compute` give f32 or bf16 buffers per
/// the backend's precision (bf16 rounded to nearest even), `convert` casts both ways and
/// checks lengths, and a LoRA state keeps bf16 copies that `update` refreshes.
#[test]
fn compute_precision_buffers_convert_and_lora_copies() {
    use gradients_engine::backend::kernel::Elem;
    use gradients_engine::lora::{LoraState, Target};
    let r = |v: f32| half::bf16::from_f32(v).to_f32();
    let f32_be = emu();
    let be = emu().with_precision(Precision::Bf16);
    assert_eq!(
        (f32_be.precision(), be.precision()),
        (Precision::F32, Precision::Bf16)
    );
    let dev = be.device();
    assert_eq!(dev.elem(&f32_be.alloc_compute(3).unwrap()), Elem::F32);
    assert_eq!(dev.elem(&be.alloc_compute(3).unwrap()), Elem::Bf16);
    assert_eq!(
        dev.elem(&be.alloc(3).unwrap()),
        Elem::F32,
        "alloc stays f32"
    );
    let mut rng = ops::Rng(8);
    let x = rng.vec(1000, -3.0, 3.0);
    let xb = be.upload_compute(&x).unwrap();
    let rounded: Vec<f32> = x.iter().map(|&v| r(v)).collect();
    ops::same("upload_compute", &be.download(&xb).unwrap(), &rounded);
    // f32 -> bf16 rounds, bf16 -> f32 is exact, same dtype copies
    let xf = be.upload(&x).unwrap();
    let mut yb = be.alloc_compute(x.len()).unwrap();
    be.convert(&mut yb, &xf).unwrap();
    ops::same("convert f32 -> bf16", &be.download(&yb).unwrap(), &rounded);
    let mut yf = be.alloc(x.len()).unwrap();
    be.convert(&mut yf, &yb).unwrap();
    ops::same("convert bf16 -> f32", &be.download(&yf).unwrap(), &rounded);
    let mut short = be.alloc_compute(7).unwrap();
    let e = be.convert(&mut short, &xf).unwrap_err().to_string();
    assert!(e.contains("convert") && e.contains("dst"), "{e}");
    // LoRA: f32 parameters, bf16 copies for the GEMMs, refreshed by update
    let (cfg, _, lw, _) = model::setup(32);
    let mut st = LoraState::upload(&be, &lw).unwrap();
    let (p, c) = (
        st.get(1, Target::Up).unwrap(),
        st.get_compute(1, Target::Up).unwrap(),
    );
    assert_eq!((dev.elem(&p.a), dev.elem(&c.a)), (Elem::F32, Elem::Bf16));
    let want: Vec<f32> = be.download(&p.b).unwrap().iter().map(|&v| r(v)).collect();
    ops::same("lora copy", &be.download(&c.b).unwrap(), &want);
    st.update(&be, |params| {
        for p in params.iter_mut() {
            be.scale(p, 3.0)?;
        }
        Ok(())
    })
    .unwrap();
    let (p, c) = (
        st.get(1, Target::Up).unwrap(),
        st.get_compute(1, Target::Up).unwrap(),
    );
    let want: Vec<f32> = be.download(&p.b).unwrap().iter().map(|&v| r(v)).collect();
    ops::same("lora copy after update", &be.download(&c.b).unwrap(), &want);
    assert_eq!(cfg.num_layers, st.num_layers());
    // on an f32 backend the compute pair is the parameters themselves
    let st32 = LoraState::upload(&f32_be, &lw).unwrap();
    assert!(std::ptr::eq(
        st32.get(0, Target::Q).unwrap(),
        st32.get_compute(0, Target::Q).unwrap()
    ));
}

/// Generation's logits in bf16 (`logits_last`, `logits_from`: the final hidden rows are
/// re-uploaded in the compute precision for the lm_head GEMM) track the f32 CPU logits.
#[test]
fn bf16_logits_track_cpu() {
    use gradients_engine::lora::LoraState;
    use gradients_engine::model::Llama;
    let (cfg, w, lw, _) = model::setup(32);
    let ids: Vec<u32> = (0..12)
        .map(|i| (i * 7 + 3) % cfg.vocab_size as u32)
        .collect();
    let cpu_be = gradients_engine::backend::cpu::CpuBackend::<f32>::new();
    let bf_be = emu().with_precision(Precision::Bf16);
    let cpu_lora = LoraState::upload(&cpu_be, &lw).unwrap();
    let bf_lora = LoraState::upload(&bf_be, &lw).unwrap();
    let mut cpu = Llama::new(cpu_be, &cfg, &w).unwrap();
    let mut bf = Llama::new(bf_be, &cfg, &w).unwrap();
    let want = cpu.logits_last(&ids, Some(&cpu_lora)).unwrap();
    let got = bf.logits_last(&ids, Some(&bf_lora)).unwrap();
    let e = model::rel_l2(&got, &want);
    let want = cpu.logits_from(&ids, 4, Some(&cpu_lora)).unwrap();
    let got = bf.logits_from(&ids, 4, Some(&bf_lora)).unwrap();
    let e2 = model::rel_l2(&got, &want);
    // the emulator gave 6.0e-3 and 5.8e-3 (2026-12-07)
    assert!(
        e <= 2e-2 && e2 <= 2e-2,
        "bf16 logits: relative L2 errors {e:.3e}, {e2:.3e}"
    );
}

/// KV-cached decoding in bf16 (the cache in the compute precision): the prefill's and decode
/// steps' logits track the f32 CPU ones within bf16's rounding, and repeat bit for bit.
#[test]
fn bf16_cached_decoding_tracks_cpu() {
    let bf16 = || emu().with_precision(Precision::Bf16);
    let a = model::decode(&bf16(), 32);
    let want = model::decode(&CpuBackend::<f32>::new(), 32);
    let e = model::rel_l2(&a.logits, &want.logits);
    // the emulator gave 5.7e-3 (2026-12-07)
    assert!(e <= 2e-2, "bf16 cached logits: relative L2 error {e:.3e}");
    let b = model::decode(&bf16(), 32);
    let bits = |d: &model::Decoded| d.logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a.completions, b.completions);
}
