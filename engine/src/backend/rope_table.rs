//! Construction of [`RopeTable`] (declared in `backend/mod.rs`): the RoPE frequencies of a
//! [`ModelConfig`], with HF's llama3 scaling, and their cos/sin for positions `0..max_pos`,
//! uploaded to any backend, and [`check_rope`], the argument checks every backend's `rope`
//! op shares. The rotation itself is the backends' `rope` op.
//!
//! Numerics follow HF transformers (`LlamaRotaryEmbedding`): `inv_freq[i] =
//! 1 / theta^(2i/d)` in f32; the llama3 rule (`_compute_llama3_parameters`) in f32; the angle
//! `pos · inv_freq[i]` rounded to f32 like HF's f32 matmul; then cos/sin of that f32 angle
//! evaluated in f64 and rounded to f32 (within an ulp of torch's f32 cos/sin).

use crate::backend::{Backend, RopeTable};
use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RopeScaling};

/// `inv_freq [head_dim/2]` of `cfg`, llama3 scaling applied when `cfg.rope_scaling` is set.
pub fn rope_inv_freq(cfg: &ModelConfig) -> Result<Vec<f32>> {
    let d = cfg.head_dim;
    if d == 0 || !d.is_multiple_of(2) {
        return Err(Error::config(
            "model config",
            "head_dim",
            format!("{d} is not a positive even number, as RoPE needs"),
        ));
    }
    let theta = cfg.rope_theta;
    let mut inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / d as f32))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        llama3_scale(&mut inv, s)?;
    }
    Ok(inv)
}

/// HF's llama3 rule: long wavelengths are divided by `factor`, short ones kept, and the band
/// between interpolated smoothly.
fn llama3_scale(inv: &mut [f32], s: &RopeScaling) -> Result<()> {
    if !(s.factor > 0.0 && s.low_freq_factor > 0.0 && s.high_freq_factor > s.low_freq_factor) {
        return Err(Error::config(
            "model config",
            "rope_scaling",
            format!(
                "llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0, got \
                 factor={}, low_freq_factor={}, high_freq_factor={}",
                s.factor, s.low_freq_factor, s.high_freq_factor
            ),
        ));
    }
    let orig = s.original_max_position_embeddings as f64;
    // Python floats, compared against f32 tensors: torch rounds them to f32.
    let low_freq_wavelen = (orig / f64::from(s.low_freq_factor)) as f32;
    let high_freq_wavelen = (orig / f64::from(s.high_freq_factor)) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for f in inv.iter_mut() {
        let wavelen = two_pi / *f;
        let base = if wavelen > low_freq_wavelen {
            *f / s.factor
        } else {
            *f
        };
        // HF: ~(wavelen < high) & ~(wavelen > low); same as this for non-NaN wavelengths.
        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
        *f = if medium {
            let smooth = (orig as f32 / wavelen - s.low_freq_factor)
                / (s.high_freq_factor - s.low_freq_factor);
            (1.0 - smooth) * base / s.factor + smooth * base
        } else {
            base
        };
    }
    Ok(())
}

impl<B: Backend> RopeTable<B> {
    /// The cos/sin table of `cfg`'s RoPE for positions `0..max_pos`, on `backend`.
    pub fn new(backend: &B, cfg: &ModelConfig, max_pos: usize) -> Result<Self> {
        let inv = rope_inv_freq(cfg)?;
        let half = inv.len();
        let len = max_pos.checked_mul(half).ok_or_else(|| {
            Error::config(
                "model config",
                "max_position_embeddings",
                "rope table too large",
            )
        })?;
        let mut cos = Vec::with_capacity(len);
        let mut sin = Vec::with_capacity(len);
        for pos in 0..max_pos {
            for &f in &inv {
                let angle = f64::from(pos as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(RopeTable {
            cos: backend.upload(&cos)?,
            sin: backend.upload(&sin)?,
            max_pos,
            head_dim: cfg.head_dim,
        })
    }
}

/// The lengths a `rope` call needs, checked the same way by every backend: `x [n, heads,
/// head_dim]` with an even `head_dim`, `n` positions all inside the table, `cos`/`sin` of
/// `[max_pos, head_dim/2]`. Returns the row width `heads · head_dim`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_rope(
    x_len: usize,
    cos_len: usize,
    sin_len: usize,
    head_dim: usize,
    max_pos: usize,
    positions: &[u32],
    n: usize,
    heads: usize,
) -> Result<usize> {
    use crate::backend::cpu::{check_len, checked_size};
    let op = "rope";
    let d = head_dim;
    let dims = || format!("n={n}, heads={heads}, head_dim={d}");
    if d == 0 || !d.is_multiple_of(2) {
        return Err(Error::shape(op, format!("table head_dim {d} is not even")));
    }
    let width = checked_size(op, &[heads, d])?;
    check_len(op, "x", x_len, checked_size(op, &[n, width])?, dims)?;
    check_len(op, "positions", positions.len(), n, dims)?;
    let tlen = checked_size(op, &[max_pos, d / 2])?;
    check_len(op, "table.cos", cos_len, tlen, dims)?;
    check_len(op, "table.sin", sin_len, tlen, dims)?;
    if let Some((t, &p)) = positions
        .iter()
        .enumerate()
        .find(|(_, &p)| p as usize >= max_pos)
    {
        return Err(Error::shape(
            op,
            format!("token {t} has position {p}, past the table's {max_pos} positions"),
        ));
    }
    Ok(width)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::config::Arch;

    fn cfg(scaling: Option<RopeScaling>) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 16,
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: scaling,
            tie_word_embeddings: true,
            attention_bias: false,
            max_position_embeddings: 8192,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn plain_frequencies_and_table() {
        let c = cfg(None);
        let inv = rope_inv_freq(&c).unwrap();
        assert_eq!(inv.len(), 64);
        for (i, &f) in inv.iter().enumerate() {
            let want = 500_000f64.powf(-(2.0 * i as f64) / 128.0);
            assert!(
                (f64::from(f) - want).abs() <= 1e-6 * want,
                "{i}: {f} vs {want}"
            );
        }
        let be = CpuBackend::<f32>::new();
        let t = RopeTable::new(&be, &c, 10).unwrap();
        assert_eq!(
            (t.cos.len(), t.sin.len(), t.max_pos, t.head_dim),
            (640, 640, 10, 128)
        );
        let angle = 7.0 * f64::from(inv[3]);
        assert!((f64::from(t.cos[7 * 64 + 3]) - angle.cos()).abs() < 1e-6);
        assert!((f64::from(t.sin[7 * 64 + 3]) - angle.sin()).abs() < 1e-6);
        assert_eq!(t.cos[3], 1.0);
        assert_eq!(t.sin[3], 0.0);
        let odd = ModelConfig {
            head_dim: 7,
            ..cfg(None)
        };
        assert!(RopeTable::new(&be, &odd, 4).is_err());
    }

    #[test]
    fn llama3_scaling_bands() {
        let s = RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = rope_inv_freq(&cfg(None)).unwrap();
        let scaled = rope_inv_freq(&cfg(Some(s))).unwrap();
        let (low_wl, high_wl) = (8192.0, 2048.0);
        let mut seen = [false; 3];
        for (&p, &q) in plain.iter().zip(&scaled) {
            let wl = 2.0 * std::f64::consts::PI / f64::from(p);
            if wl < high_wl {
                assert_eq!(p, q);
                seen[0] = true;
            } else if wl > low_wl {
                assert!((f64::from(q) - f64::from(p) / 8.0).abs() < 1e-6 * f64::from(p));
                seen[1] = true;
            } else {
                let smooth = (8192.0 / wl - 1.0) / 3.0;
                let want = (1.0 - smooth) * f64::from(p) / 8.0 + smooth * f64::from(p);
                assert!((f64::from(q) - want).abs() < 1e-5 * want);
                seen[2] = true;
            }
        }
        assert_eq!(seen, [true; 3], "every band is exercised");
        let bad = RopeScaling {
            high_freq_factor: 1.0,
            ..s
        };
        assert!(rope_inv_freq(&cfg(Some(bad))).is_err());
    }
}
