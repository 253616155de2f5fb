//! Packed frozen weights (`model::Frozen`: Linear weights kept as Q4_1 / Q8_0 / Q4_0 / BF16 /
//! F16 rows, as a GGUF file stores them) give bit for bit the results of the same values
//! stored dense: on the CPU backend, which widens them per product, and on the kernel backend
//! (emulator), which widens them once on upload. A tiny model's weights are packed by a
//! quantiser written here; the real SmolLM2 (Q4_1 in its GGUF, skipped without the asset) is
//! compared with its own dense twin. Run: `cargo test --test frozen_packed`.

mod common;

use common::{lora_config, mixed_batch, random_lora, random_weights, tiny_config};
use gradients_engine::backend::cpu::CpuBackend;
use gradients_engine::backend::kernel::{EmuDevice, KernelBackend};
use gradients_engine::backend::Backend;
use gradients_engine::lora::{LoraState, LoraWeights};
use gradients_engine::model::gguf_quant::GgmlType;
use gradients_engine::model::{Arch, Batch, Frozen, Llama, ModelConfig, ModelWeights, StepOptions};
use gradients_engine::Tensor;
use half::{bf16, f16};

/// `t` packed as `ty` (Q8_0, Q4_0, Q4_1 per 32-value block along the rows; BF16 per value).
fn pack(t: &Tensor, ty: GgmlType) -> Frozen {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut bytes = Vec::new();
    match ty {
        GgmlType::BF16 => {
            for &x in &t.data {
                bytes.extend(bf16::from_f32(x).to_le_bytes());
            }
        }
        _ => {
            for b in t.data.chunks(32) {
                let (lo, hi) = b
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let amax = lo.abs().max(hi.abs()).max(1e-6);
                match ty {
                    GgmlType::Q8_0 => {
                        let d = amax / 127.0;
                        bytes.extend(f16::from_f32(d).to_le_bytes());
                        bytes.extend(
                            b.iter()
                                .map(|&x| (x / d).round().clamp(-127.0, 127.0) as i8 as u8),
                        );
                    }
                    GgmlType::Q4_0 => {
                        let d = amax / 8.0;
                        bytes.extend(f16::from_f32(d).to_le_bytes());
                        let q = |x: f32| ((x / d).round() + 8.0).clamp(0.0, 15.0) as u8;
                        bytes.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                    }
                    GgmlType::Q4_1 => {
                        let d = ((hi - lo) / 15.0).max(1e-6);
                        bytes.extend(f16::from_f32(d).to_le_bytes());
                        bytes.extend(f16::from_f32(lo).to_le_bytes());
                        let q = |x: f32| ((x - lo) / d).round().clamp(0.0, 15.0) as u8;
                        bytes.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
                    }
                    _ => unreachable!("not a test encoding"),
                }
            }
        }
    }
    Frozen::packed("test weight", ty, rows, cols, bytes).unwrap()
}

/// The tiny model's weights with every Linear packed (q, k: Q4_1; v: Q8_0; o: Q4_0;
/// gate, up: Q4_1, Q8_0; down: BF16), and the same values stored dense.
fn packed_and_dense(cfg: &ModelConfig) -> (ModelWeights, ModelWeights) {
    let mut packed = random_weights(cfg, 17);
    for l in &mut packed.layers {
        // in Target order: q, k, v, o, gate, up, down
        let encodings = [
            GgmlType::Q4_1,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::BF16,
        ];
        for (w, ty) in l.linears_mut().into_iter().zip(encodings) {
            *w = pack(&w.to_tensor(), ty);
        }
    }
    let dense = dense_twin(&packed);
    (packed, dense)
}

/// `w` with every Linear weight stored dense (the same values).
fn dense_twin(w: &ModelWeights) -> ModelWeights {
    let mut dense = w.clone();
    for l in &mut dense.layers {
        for f in l.linears_mut() {
            *f = Frozen::from(f.to_tensor());
        }
    }
    dense
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Everything a model computes for the test: step losses and LoRA gradients (with dropout;
/// the second step recomputes the blocks), eval losses, last-position logits.
fn outputs<B: Backend + Clone>(
    be: &B,
    cfg: &ModelConfig,
    w: &ModelWeights,
    lw: &LoraWeights,
    batch: &Batch,
) -> Vec<Vec<u32>> {
    let mut m = Llama::new(be.clone(), cfg, w).unwrap();
    let lora = LoraState::upload(be, lw).unwrap();
    let mut grads = lora.zeros_grads(be).unwrap();
    let mut out = Vec::new();
    for step in 0..2u64 {
        let opts = StepOptions {
            recompute: step == 1,
            seed: 4,
            step,
            ..StepOptions::default()
        };
        let s = m.forward_backward(batch, &lora, &mut grads, &opts).unwrap();
        out.push(vec![s.loss.to_bits()]);
        for g in grads.download(be, lw).unwrap().params() {
            out.push(bits(&g.data));
        }
    }
    out.push(bits(&m.forward_loss(batch, Some(&lora)).unwrap()));
    out.push(bits(&m.forward_loss(batch, None).unwrap()));
    out.push(bits(&m.logits_last(&[3, 9, 4, 1], Some(&lora)).unwrap()));
    out
}

#[test]
fn packed_weights_give_the_dense_models_bits_on_both_backends() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        // head_dim 32: the smallest the emulated attention backward covers
        let mut cfg = tiny_config(arch, 2, arch == Arch::Llama);
        (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) = (64, 2, 1);
        (cfg.head_dim, cfg.intermediate_size) = (32, 96);
        let (packed, dense) = packed_and_dense(&cfg);
        assert!(packed.layers[1].wo.is_packed() && !dense.layers[1].wo.is_packed());
        assert_eq!(packed.layers[0].w_down.encoding(), "BF16");
        let lw = random_lora(&cfg, &lora_config(4, 0.1), 6, 0.2);
        let batch = mixed_batch(16, cfg.vocab_size, 2);
        let cpu = CpuBackend::<f32>::new();
        let want = outputs(&cpu, &cfg, &dense, &lw, &batch);
        assert_eq!(
            outputs(&cpu, &cfg, &packed, &lw, &batch),
            want,
            "{arch:?}: cpu"
        );
        let emu = KernelBackend::new(EmuDevice);
        assert_eq!(
            outputs(&emu, &cfg, &packed, &lw, &batch),
            outputs(&emu, &cfg, &dense, &lw, &batch),
            "{arch:?}: emulator"
        );
        // the f64 backend (gradient checks) widens packed weights too
        let f64be = CpuBackend::<f64>::new();
        let mut m = Llama::new(f64be.clone(), &cfg, &packed).unwrap();
        let mut d = Llama::new(f64be, &cfg, &dense).unwrap();
        assert_eq!(
            bits(&m.forward_loss(&batch, None).unwrap()),
            bits(&d.forward_loss(&batch, None).unwrap())
        );
    }
}

/// The real model: its 210 Q4_1 Linear weights stay packed (66 MB instead of 405 MiB of f32)
/// and the losses equal the dense model's to the bit.
#[test]
fn smollm2_packed_equals_its_dense_twin() {
    let path = match gradients_engine::assets::smollm2_gguf() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let m = gradients_engine::model::load::load_model(&path).unwrap();
    let linears = |w: &ModelWeights| -> (usize, usize) {
        let mut n = (0, 0);
        for l in &w.layers {
            for f in l.linears() {
                n.0 += f.stored_bytes();
                n.1 += usize::from(f.is_packed());
            }
        }
        n
    };
    let (bytes, count) = linears(&m.weights);
    assert_eq!(count, 210);
    assert_eq!(bytes, 106_168_320 / 32 * 20, "Q4_1: 20 bytes per 32 values");
    let dense = dense_twin(&m.weights);
    assert_eq!(linears(&dense), (106_168_320 * 4, 0));
    let ids: Vec<u32> = (0..40).map(|i| (i * 977 + 11) % 49_152).collect();
    let labels: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let sample = gradients_engine::model::Sample {
        input_ids: &ids,
        labels: &labels,
    };
    let batch = Batch::unpacked(&[sample], ids.len(), m.config.vocab_size).unwrap();
    let be = CpuBackend::<f32>::new();
    let mut a = Llama::new(be.clone(), &m.config, &m.weights).unwrap();
    let mut b = Llama::new(be, &m.config, &dense).unwrap();
    assert_eq!(
        bits(&a.forward_loss(&batch, None).unwrap()),
        bits(&b.forward_loss(&batch, None).unwrap())
    );
}
