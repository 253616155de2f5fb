//! Host-side LoRA parameters: for every decoder layer and every configured [`Target`], the
//! pair `A [r, in]`, `B [out, r]` as f32 [`Tensor`]s, in one fixed order (layer-major, then
//! [`Target`] order).
//!
//! [`LoraWeights::init`] reproduces PEFT's default initialisation (`init_lora_weights=True`):
//! `A` Kaiming-uniform with `a = √5`, which for a `[r, in]` matrix is `U(−1/√in, 1/√in)`, and
//! `B = 0`, so a fresh adapter leaves the model unchanged. The uniform draws come from a
//! counter-based generator ([`counter_hash`]), so every element is a pure function of
//! `(seed, layer, target, element)`, independent of thread count and of which other targets
//! are configured. Neighbours: `lora/mod.rs` (Target, LoraConfig), `lora/state.rs` (the
//! device copies the model trains), `lora/peft.rs` (PEFT files).

use super::{LoraConfig, Target};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tensor::Tensor;

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A counter-based hash of a tuple of words: `h₀ = 0`, `hᵢ₊₁ = mix64(hᵢ ⊕ wordᵢ)` with
/// SplitMix64's finaliser. Used for LoRA init draws `(seed, layer, target, element)` and for
/// dropout keys `(seed, step, layer, target)`; stable across versions and platforms.
pub fn counter_hash(words: &[u64]) -> u64 {
    words.iter().fold(0u64, |h, &w| mix64(h ^ w))
}

/// The `(out, in)` shape of the Linear weight `target` adapts, for model `cfg`:
/// q `[q_dim, hidden]`, k/v `[kv_dim, hidden]`, o `[hidden, q_dim]`, gate/up
/// `[intermediate, hidden]`, down `[hidden, intermediate]`.
pub fn target_dims(cfg: &ModelConfig, target: Target) -> (usize, usize) {
    let (h, q, kv, f) = (
        cfg.hidden_size,
        cfg.q_dim(),
        cfg.kv_dim(),
        cfg.intermediate_size,
    );
    match target {
        Target::Q => (q, h),
        Target::K | Target::V => (kv, h),
        Target::O => (h, q),
        Target::Gate | Target::Up => (f, h),
        Target::Down => (h, f),
    }
}

/// One adapted projection: its place in the model and its two factors.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    /// Decoder layer index.
    pub layer: usize,
    /// Which projection of the layer.
    pub target: Target,
    /// `[r, in]` down-projection (PEFT's `lora_A.weight`).
    pub a: Tensor,
    /// `[out, r]` up-projection (PEFT's `lora_B.weight`).
    pub b: Tensor,
}

/// All LoRA parameters of a model, host side.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraWeights {
    /// The hyper-parameters (rank, alpha, dropout, targets in canonical order).
    pub config: LoraConfig,
    /// Number of decoder layers adapted (all of the model's).
    pub num_layers: usize,
    /// Layer-major, then `config.targets` order.
    pairs: Vec<LoraPair>,
}

impl LoraWeights {
    /// Zero-filled `A` and `B` for every layer and target (e.g. to load a PEFT file into).
    /// Targets are put in canonical [`Target`] order with duplicates removed.
    pub fn zeros(cfg: &ModelConfig, lora: &LoraConfig) -> Result<Self> {
        lora.validate("lora config")?;
        let targets: Vec<Target> = Target::ALL
            .into_iter()
            .filter(|t| lora.targets.contains(t))
            .collect();
        let r = lora.rank;
        let mut pairs = Vec::with_capacity(cfg.num_layers * targets.len());
        for layer in 0..cfg.num_layers {
            for &target in &targets {
                let (out, inp) = target_dims(cfg, target);
                pairs.push(LoraPair {
                    layer,
                    target,
                    a: Tensor::zeros(vec![r, inp]),
                    b: Tensor::zeros(vec![out, r]),
                });
            }
        }
        let config = LoraConfig {
            targets,
            ..lora.clone()
        };
        Ok(LoraWeights {
            config,
            num_layers: cfg.num_layers,
            pairs,
        })
    }

    /// PEFT's default init: `B = 0` and `A[i] ~ U(−1/√in, 1/√in)` (Kaiming-uniform, `a = √5`),
    /// element `i` (row-major in `A`) drawn as
    /// `u = (counter_hash([seed, layer, target_index, i]) >> 11) · 2⁻⁵³`, `A[i] = (2u − 1)/√in`
    /// in f64 then rounded to f32; `target_index` is the position in [`Target::ALL`].
    pub fn init(cfg: &ModelConfig, lora: &LoraConfig, seed: u64) -> Result<Self> {
        let mut w = Self::zeros(cfg, lora)?;
        for p in &mut w.pairs {
            let (_, inp) = p.a.dims2()?;
            let bound = 1.0 / (inp as f64).sqrt();
            let t = p.target as u64;
            for (i, v) in p.a.data.iter_mut().enumerate() {
                let bits = counter_hash(&[seed, p.layer as u64, t, i as u64]);
                let u = (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                *v = ((2.0 * u - 1.0) * bound) as f32;
            }
        }
        Ok(w)
    }

    /// The adapted projections, layer-major then target order.
    pub fn pairs(&self) -> &[LoraPair] {
        &self.pairs
    }

    /// Mutable access to every pair (shapes must be kept).
    pub fn pairs_mut(&mut self) -> &mut [LoraPair] {
        &mut self.pairs
    }

    /// `(layer, target, A, B)` for every adapted projection, in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Target, &Tensor, &Tensor)> {
        self.pairs.iter().map(|p| (p.layer, p.target, &p.a, &p.b))
    }

    /// The pair of `(layer, target)`, if adapted.
    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.pairs
            .iter()
            .find(|p| p.layer == layer && p.target == target)
    }

    /// Mutable pair of `(layer, target)`, if adapted.
    pub fn get_mut(&mut self, layer: usize, target: Target) -> Option<&mut LoraPair> {
        self.pairs
            .iter_mut()
            .find(|p| p.layer == layer && p.target == target)
    }

    /// Every parameter tensor, flat, in optimiser order: for each pair, `A` then `B`.
    pub fn params(&self) -> Vec<&Tensor> {
        self.pairs.iter().flat_map(|p| [&p.a, &p.b]).collect()
    }

    /// Mutable parameter tensors in the order of [`LoraWeights::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Tensor> {
        self.pairs
            .iter_mut()
            .flat_map(|p| [&mut p.a, &mut p.b])
            .collect()
    }

    /// Total number of trainable values.
    pub fn num_params(&self) -> usize {
        self.pairs.iter().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// Check that every pair has the shape `cfg` and the rank imply (after a file load).
    pub fn check_shapes(&self, cfg: &ModelConfig) -> Result<()> {
        let r = self.config.rank;
        for p in &self.pairs {
            let (out, inp) = target_dims(cfg, p.target);
            let name = format!("layers.{}.{}", p.layer, p.target.module_path());
            if p.a.shape != [r, inp] || p.b.shape != [out, r] {
                return Err(Error::shape(
                    "lora weights",
                    format!(
                        "{name}: expected A [{r}, {inp}] and B [{out}, {r}], got A {:?} and B {:?}",
                        p.a.shape, p.b.shape
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;

    fn tiny_config() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn init_shapes_order_and_bounds() {
        let cfg = tiny_config();
        let lora = LoraConfig {
            rank: 4,
            targets: vec![Target::Down, Target::Q, Target::K, Target::Q],
            ..LoraConfig::default()
        };
        let w = LoraWeights::init(&cfg, &lora, 7).unwrap();
        assert_eq!(w.config.targets, vec![Target::Q, Target::K, Target::Down]);
        let order: Vec<(usize, Target)> = w.iter().map(|(l, t, _, _)| (l, t)).collect();
        assert_eq!(
            order,
            vec![
                (0, Target::Q),
                (0, Target::K),
                (0, Target::Down),
                (1, Target::Q),
                (1, Target::K),
                (1, Target::Down)
            ]
        );
        w.check_shapes(&cfg).unwrap();
        let down = w.get(1, Target::Down).unwrap();
        assert_eq!(down.a.shape, vec![4, 48]);
        assert_eq!(down.b.shape, vec![32, 4]);
        assert_eq!(w.get(0, Target::K).unwrap().b.shape, vec![16, 4]);
        assert!(w.get(0, Target::V).is_none());
        for (_, _, a, b) in w.iter() {
            let bound = 1.0 / (a.shape[1] as f32).sqrt();
            assert!(a.data.iter().all(|v| v.abs() <= bound));
            assert!(b.data.iter().all(|&v| v == 0.0));
            // roughly uniform: mean near 0, spread near bound/√3
            let n = a.len() as f32;
            let mean = a.data.iter().sum::<f32>() / n;
            let rms = (a.data.iter().map(|v| v * v).sum::<f32>() / n).sqrt();
            assert!(mean.abs() < 0.2 * bound, "mean {mean}");
            assert!((rms / bound - 0.577).abs() < 0.1, "rms {rms}");
        }
        assert_eq!(
            w.num_params(),
            2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4 + 4 * 48 + 32 * 4)
        );
        assert_eq!(w.params().len(), 12);
    }

    #[test]
    fn init_is_a_pure_function_of_seed_layer_target() {
        let cfg = tiny_config();
        let all = LoraConfig::default();
        let only_v = LoraConfig {
            targets: vec![Target::V],
            ..LoraConfig::default()
        };
        let a = LoraWeights::init(&cfg, &all, 3).unwrap();
        let b = LoraWeights::init(&cfg, &only_v, 3).unwrap();
        let c = LoraWeights::init(&cfg, &all, 4).unwrap();
        assert_eq!(
            a.get(1, Target::V).unwrap().a,
            b.get(1, Target::V).unwrap().a
        );
        assert_ne!(
            a.get(1, Target::V).unwrap().a,
            c.get(1, Target::V).unwrap().a
        );
        assert_ne!(
            a.get(0, Target::V).unwrap().a,
            a.get(1, Target::V).unwrap().a
        );
        assert_eq!(a, LoraWeights::init(&cfg, &all, 3).unwrap());
    }

    #[test]
    fn bad_config_and_shapes_are_errors() {
        let cfg = tiny_config();
        let bad = LoraConfig {
            rank: 0,
            ..LoraConfig::default()
        };
        assert!(LoraWeights::zeros(&cfg, &bad).is_err());
        let mut w = LoraWeights::zeros(&cfg, &LoraConfig::default()).unwrap();
        w.pairs_mut()[3].b = Tensor::zeros(vec![3, 8]);
        let err = w.check_shapes(&cfg).unwrap_err().to_string();
        assert!(err.contains("layers.0.self_attn.o_proj"), "{err}");
    }
}
