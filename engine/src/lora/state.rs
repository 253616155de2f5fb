//! Device-side LoRA: [`LoraState`] holds backend copies of every `A`/`B` pair the model
//! trains, [`LoraGrads`] the gradients of the same shapes. Both are indexed by
//! `(layer, target)` and expose one flat parameter order (layer-major, [`Target`] order, `A`
//! then `B`), the same as [`LoraWeights::params`], for the optimiser.
//!
//! Neighbours: `lora/params.rs` (the host copy these upload from and download to),
//! `model/llama.rs` (reads the state, writes the gradients).

use super::{LoraConfig, LoraWeights, Target};
use crate::backend::{Backend, Precision};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One adapted projection on the backend.
pub struct LoraPairBufs<B: Backend> {
    /// `[r, in]`.
    pub a: B::Buf,
    /// `[out, r]`.
    pub b: B::Buf,
    /// Output width of the adapted Linear.
    pub out_dim: usize,
    /// Input width of the adapted Linear.
    pub in_dim: usize,
}

/// `slots[layer][target as usize]`: the pair of each adapted projection.
type Slots<B> = Vec<[Option<LoraPairBufs<B>>; 7]>;

fn empty_slots<B: Backend>(layers: usize) -> Slots<B> {
    (0..layers).map(|_| std::array::from_fn(|_| None)).collect()
}

fn flat<B: Backend>(slots: &Slots<B>) -> Vec<&B::Buf> {
    slots
        .iter()
        .flat_map(|l| l.iter().flatten().flat_map(|p| [&p.a, &p.b]))
        .collect()
}

fn flat_mut<B: Backend>(slots: &mut Slots<B>) -> Vec<&mut B::Buf> {
    slots
        .iter_mut()
        .flat_map(|l| l.iter_mut().flatten().flat_map(|p| [&mut p.a, &mut p.b]))
        .collect()
}

fn download_into<B: Backend>(be: &B, slots: &Slots<B>, w: &mut LoraWeights) -> Result<()> {
    for p in w.pairs_mut() {
        let s = slots
            .get(p.layer)
            .and_then(|l| l[p.target as usize].as_ref())
            .ok_or_else(|| {
                Error::shape(
                    "lora download",
                    format!(
                        "layers.{}.{} is not on the device",
                        p.layer,
                        p.target.name()
                    ),
                )
            })?;
        let a = be.download(&s.a)?;
        let b = be.download(&s.b)?;
        p.a = Tensor::new(p.a.shape.clone(), a)?;
        p.b = Tensor::new(p.b.shape.clone(), b)?;
    }
    Ok(())
}

/// The trainable LoRA parameters on a backend, with the hyper-parameters the forward needs.
///
/// The parameters are f32 (AdamW's small updates need it). On a backend computing in a lower
/// precision (`Backend::precision`) the state also keeps a copy of every pair in that
/// precision, which the model's GEMMs multiply with (autocast's rule: a matmul's operands
/// share the activations' dtype); [`LoraState::update`] is the only way to change the
/// parameters and refreshes the copies, so they can never be stale.
pub struct LoraState<B: Backend> {
    /// Rank, alpha, dropout and targets (canonical order).
    pub config: LoraConfig,
    /// `s` multiplying `B·A` (`alpha/r`, or `alpha/√r` with rsLoRA).
    pub scaling: f32,
    slots: Slots<B>,
    /// The pairs in the compute precision, when it is not f32.
    compute: Option<Slots<B>>,
}

/// Compute-precision copies of `slots` (`None` on an f32 backend).
fn compute_copies<B: Backend>(be: &B, slots: &Slots<B>) -> Result<Option<Slots<B>>> {
    if be.precision() == Precision::F32 {
        return Ok(None);
    }
    let mut out = empty_slots::<B>(slots.len());
    for (l, layer) in slots.iter().enumerate() {
        for (t, p) in layer.iter().enumerate() {
            if let Some(p) = p {
                let mut a = be.alloc_compute(be.len(&p.a))?;
                let mut b = be.alloc_compute(be.len(&p.b))?;
                be.convert(&mut a, &p.a)?;
                be.convert(&mut b, &p.b)?;
                out[l][t] = Some(LoraPairBufs {
                    a,
                    b,
                    out_dim: p.out_dim,
                    in_dim: p.in_dim,
                });
            }
        }
    }
    Ok(Some(out))
}

impl<B: Backend> LoraState<B> {
    /// Upload host weights.
    pub fn upload(be: &B, w: &LoraWeights) -> Result<Self> {
        let mut slots = empty_slots::<B>(w.num_layers);
        for p in w.pairs() {
            let (r, in_dim) = p.a.dims2()?;
            let (out_dim, r2) = p.b.dims2()?;
            if r != w.config.rank || r2 != r {
                return Err(Error::shape(
                    "lora upload",
                    format!(
                        "layers.{}.{}: A {:?} and B {:?} do not have rank {}",
                        p.layer,
                        p.target.name(),
                        p.a.shape,
                        p.b.shape,
                        w.config.rank
                    ),
                ));
            }
            slots[p.layer][p.target as usize] = Some(LoraPairBufs {
                a: be.upload(&p.a.data)?,
                b: be.upload(&p.b.data)?,
                out_dim,
                in_dim,
            });
        }
        Ok(LoraState {
            config: w.config.clone(),
            scaling: w.config.scaling(),
            compute: compute_copies(be, &slots)?,
            slots,
        })
    }

    /// Copy the device values back into `w` (which must have the same layers and targets).
    pub fn download(&self, be: &B, w: &mut LoraWeights) -> Result<()> {
        download_into(be, &self.slots, w)
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.slots.len()
    }

    /// The pair of `(layer, target)`, if adapted.
    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPairBufs<B>> {
        self.slots
            .get(layer)
            .and_then(|l| l[target as usize].as_ref())
    }

    /// The pair of `(layer, target)` in the backend's compute precision, for the GEMMs with
    /// activations: the f32 parameters themselves on an f32 backend, else their copies.
    pub fn get_compute(&self, layer: usize, target: Target) -> Option<&LoraPairBufs<B>> {
        self.compute
            .as_ref()
            .unwrap_or(&self.slots)
            .get(layer)
            .and_then(|l| l[target as usize].as_ref())
    }

    /// Every parameter buffer in optimiser order (layer, target, `A` then `B`).
    pub fn params(&self) -> Vec<&B::Buf> {
        flat(&self.slots)
    }

    /// Changes the parameters: `f` gets them mutably, in the order of [`LoraState::params`]
    /// (an optimiser step), then the compute-precision copies are refreshed from them.
    pub fn update<R>(
        &mut self,
        be: &B,
        f: impl FnOnce(&mut [&mut B::Buf]) -> Result<R>,
    ) -> Result<R> {
        let out = f(&mut flat_mut(&mut self.slots))?;
        if let Some(copies) = self.compute.as_mut() {
            for (c, p) in flat_mut(copies).into_iter().zip(flat(&self.slots)) {
                be.convert(c, p)?;
            }
        }
        Ok(out)
    }

    /// Zero-filled gradient buffers shaped like this state.
    pub fn zeros_grads(&self, be: &B) -> Result<LoraGrads<B>> {
        let mut slots = empty_slots::<B>(self.slots.len());
        for (l, layer) in self.slots.iter().enumerate() {
            for (t, p) in layer.iter().enumerate() {
                if let Some(p) = p {
                    slots[l][t] = Some(LoraPairBufs {
                        a: be.alloc(be.len(&p.a))?,
                        b: be.alloc(be.len(&p.b))?,
                        out_dim: p.out_dim,
                        in_dim: p.in_dim,
                    });
                }
            }
        }
        Ok(LoraGrads { slots })
    }
}

/// Gradients of the loss w.r.t. every LoRA `A` and `B`, shaped like a [`LoraState`].
pub struct LoraGrads<B: Backend> {
    slots: Slots<B>,
}

impl<B: Backend> LoraGrads<B> {
    /// `(dA, dB)` of `(layer, target)`, if adapted.
    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPairBufs<B>> {
        self.slots
            .get(layer)
            .and_then(|l| l[target as usize].as_ref())
    }

    /// Mutable `(dA, dB)` of `(layer, target)`.
    pub fn get_mut(&mut self, layer: usize, target: Target) -> Option<&mut LoraPairBufs<B>> {
        self.slots
            .get_mut(layer)
            .and_then(|l| l[target as usize].as_mut())
    }

    /// Gradient buffers in optimiser order (matching [`LoraState::params`]).
    pub fn bufs(&self) -> Vec<&B::Buf> {
        flat(&self.slots)
    }

    /// Mutable gradient buffers in optimiser order.
    pub fn bufs_mut(&mut self) -> Vec<&mut B::Buf> {
        flat_mut(&mut self.slots)
    }

    /// Copy the gradients into host tensors shaped like `like` (e.g. the model's weights).
    pub fn download(&self, be: &B, like: &LoraWeights) -> Result<LoraWeights> {
        let mut w = like.clone();
        download_into(be, &self.slots, &mut w)?;
        Ok(w)
    }

    /// Global L2 norm of all gradients (f64 accumulation in optimiser order).
    pub fn global_norm(&self, be: &B) -> Result<f64> {
        let mut s = 0.0f64;
        for g in self.bufs() {
            s += be.sum_squares(g)?;
        }
        Ok(s.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Arch, ModelConfig};

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 20,
            hidden_size: 16,
            intermediate_size: 24,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            max_position_embeddings: 32,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn upload_download_round_trip_and_flat_order() {
        let c = cfg();
        let lora = LoraConfig {
            rank: 3,
            targets: vec![Target::K, Target::Down],
            ..LoraConfig::default()
        };
        let mut w = LoraWeights::init(&c, &lora, 5).unwrap();
        for (i, p) in w.pairs_mut().iter_mut().enumerate() {
            p.b.data.iter_mut().for_each(|v| *v = i as f32 + 0.5);
        }
        let be = CpuBackend::<f32>::new();
        let state = LoraState::upload(&be, &w).unwrap();
        assert_eq!(state.scaling, 16.0 / 3.0);
        assert!(state.get(1, Target::Down).is_some() && state.get(1, Target::Q).is_none());
        let mut back = LoraWeights::zeros(&c, &lora).unwrap();
        state.download(&be, &mut back).unwrap();
        assert_eq!(back, w);
        // the flat order matches the host's params()
        let host: Vec<Vec<f32>> = w.params().iter().map(|t| t.data.clone()).collect();
        let dev: Vec<Vec<f32>> = state
            .params()
            .iter()
            .map(|b| be.download(b).unwrap())
            .collect();
        assert_eq!(host, dev);
        let mut g = state.zeros_grads(&be).unwrap();
        for (i, b) in g.bufs_mut().into_iter().enumerate() {
            be.fill(b, i as f32).unwrap();
        }
        let n: f64 = w
            .params()
            .iter()
            .enumerate()
            .map(|(i, t)| (i * i * t.len()) as f64)
            .sum();
        assert!((g.global_norm(&be).unwrap() - n.sqrt()).abs() < 1e-9);
        let gw = g.download(&be, &w).unwrap();
        assert!(gw.pairs()[3].b.data.iter().all(|&v| v == 7.0));
        // a rank mismatch is an error naming the module
        w.pairs_mut()[1].a = Tensor::zeros(vec![2, 24]);
        let err = LoraState::upload(&be, &w).err().unwrap().to_string();
        assert!(err.contains("layers.0.down_proj"), "{err}");
    }
}
