//! Device-side LoRA: [`LoraState`] holds backend copies of every `A`/`B` pair the model
//! trains, [`LoraGrads`] the gradients of the same shapes. Both are indexed by
//! `(layer, target)` and expose one flat parameter order (layer-major, [`Target`] order, `A`
//! then `B`), the same as [`LoraWeights::params`], for the optimiser.
//!
//! Neighbours: `lora/params.rs` (the host copy these upload from and download to),
//! `model/llama.rs` (reads the state, writes the gradients).

use super::{LoraConfig, LoraWeights, Target};
use crate::backend::Backend;
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
pub struct LoraState<B: Backend> {
    /// Rank, alpha, dropout and targets (canonical order).
    pub config: LoraConfig,
    /// `s` multiplying `B·A` (`alpha/r`, or `alpha/√r` with rsLoRA).
    pub scaling: f32,
    slots: Slots<B>,
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

    /// Every parameter buffer in optimiser order (layer, target, `A` then `B`).
    pub fn params(&self) -> Vec<&B::Buf> {
        flat(&self.slots)
    }

    /// Mutable parameter buffers in the order of [`LoraState::params`].
    pub fn params_mut(&mut self) -> Vec<&mut B::Buf> {
        flat_mut(&mut self.slots)
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
