//! Adapters on disk ↔ adapters in memory: PEFT directories (peft.rs) converted to and from the
//! engine's host-side [`LoraWeights`] (params.rs). The trainer saves through here; the
//! evaluator and the tests load through here.

use std::path::Path;

use super::peft::{read_peft_adapter, write_peft_adapter, LoraFactor, PeftAdapter};
use super::LoraWeights;
use crate::error::{Error, Result};
use crate::model::ModelConfig;

impl LoraWeights {
    /// The weights of a PEFT adapter (already validated against `cfg` by the reader).
    pub fn from_peft(adapter: &PeftAdapter, cfg: &ModelConfig) -> Result<Self> {
        let mut w = LoraWeights::zeros(cfg, &adapter.config)?;
        for pair in w.pairs_mut() {
            for (factor, slot) in [(LoraFactor::A, &mut pair.a), (LoraFactor::B, &mut pair.b)] {
                let t = adapter
                    .tensors
                    .get(&(pair.layer, pair.target, factor))
                    .ok_or_else(|| {
                        Error::unsupported(format!(
                            "adapter has no lora_{factor:?} for layer {} {}",
                            pair.layer,
                            pair.target.module_path()
                        ))
                    })?;
                if t.shape != slot.shape {
                    return Err(Error::shape(
                        "lora from_peft",
                        format!(
                            "layer {} {} lora_{factor:?}: expected {:?}, got {:?}",
                            pair.layer,
                            pair.target.module_path(),
                            slot.shape,
                            t.shape
                        ),
                    ));
                }
                *slot = t.clone();
            }
        }
        Ok(w)
    }

    /// These weights as a PEFT adapter.
    pub fn to_peft(&self) -> PeftAdapter {
        let mut tensors = std::collections::BTreeMap::new();
        for (layer, target, a, b) in self.iter() {
            tensors.insert((layer, target, LoraFactor::A), a.clone());
            tensors.insert((layer, target, LoraFactor::B), b.clone());
        }
        PeftAdapter {
            config: self.config.clone(),
            tensors,
        }
    }

    /// Load a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    pub fn load(dir: &Path, cfg: &ModelConfig) -> Result<Self> {
        let adapter = read_peft_adapter(dir, cfg)?;
        Self::from_peft(&adapter, cfg)
    }

    /// Save as a PEFT adapter directory that `PeftModel.from_pretrained` loads (atomic writes).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<()> {
        write_peft_adapter(dir, &self.to_peft(), base_model)
    }
}
