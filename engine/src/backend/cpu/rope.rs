//! RoPE rotation of the CPU backend (HF half-split layout), one rayon item per token.
//!
//! For token `t` at position `p = positions[t]`, every head's vector `x` of width `d` is
//! rotated pairwise for `i < d/2` with `c = cos[p, i]`, `s = sin[p, i]`:
//! `(x[i], x[i+d/2]) ← (x[i]·c − x[i+d/2]·s, x[i+d/2]·c + x[i]·s)`.
//! `inverse` uses `−s`: the transpose of the rotation, i.e. its backward. The table comes
//! from `backend/rope_table.rs`.

use rayon::prelude::*;

use super::{CpuBackend, Real};
use crate::backend::rope_table::check_rope;
use crate::backend::RopeTable;
use crate::error::Result;

/// Rotate `x [n, heads, head_dim]` in place by the table's angles at `positions`.
pub(crate) fn rope<T: Real>(
    x: &mut [T],
    table: &RopeTable<CpuBackend<T>>,
    positions: &[u32],
    n: usize,
    heads: usize,
    inverse: bool,
) -> Result<()> {
    let (d, half) = (table.head_dim, table.head_dim / 2);
    let width = check_rope(
        x.len(),
        table.cos.len(),
        table.sin.len(),
        d,
        table.max_pos,
        positions,
        n,
        heads,
    )?;
    if width == 0 {
        return Ok(());
    }
    x.par_chunks_mut(width)
        .zip(positions.par_iter())
        .for_each(|(row, &p)| {
            let p = p as usize;
            let cos = &table.cos[p * half..(p + 1) * half];
            let sin = &table.sin[p * half..(p + 1) * half];
            for head in row.chunks_exact_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (c, s) = (cos[i], if inverse { -sin[i] } else { sin[i] });
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * c - b * s;
                    hi[i] = b * c + a * s;
                }
            }
        });
    Ok(())
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use crate::backend::cpu::testutil::{dot, randn, Rng};
    use crate::backend::cpu::CpuBackend;
    use crate::backend::{Backend, RopeTable};
    use crate::model::config::{Arch, ModelConfig};

    fn cfg(head_dim: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: 16,
            hidden_size: 2 * head_dim,
            intermediate_size: 16,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    #[test]
    fn rotation_matches_definition_and_inverse_undoes_it() {
        let be = CpuBackend::<f64>::new();
        let (n, heads, d) = (5, 2, 8);
        let table = RopeTable::new(&be, &cfg(d), 32).unwrap();
        let mut rng = Rng(5);
        let x0 = randn(&mut rng, n * heads * d);
        let pos = [0u32, 3, 7, 31, 1];
        let mut x = x0.clone();
        be.rope(&mut x, &table, &pos, n, heads, false).unwrap();
        for t in 0..n {
            let p = pos[t] as usize;
            for hh in 0..heads {
                let base = (t * heads + hh) * d;
                for i in 0..d / 2 {
                    let (c, s) = (table.cos[p * d / 2 + i], table.sin[p * d / 2 + i]);
                    let (a, b) = (x0[base + i], x0[base + i + d / 2]);
                    assert!((x[base + i] - (a * c - b * s)).abs() < 1e-14);
                    assert!((x[base + i + d / 2] - (b * c + a * s)).abs() < 1e-14);
                }
            }
        }
        be.rope(&mut x, &table, &pos, n, heads, true).unwrap();
        for (a, b) in x.iter().zip(&x0) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(be
            .rope(&mut x, &table, &[0, 1, 2, 3, 32], n, heads, false)
            .is_err());
        assert!(be.rope(&mut x, &table, &pos[..4], n, heads, false).is_err());
    }

    /// The inverse rotation is the transpose: ⟨R x, y⟩ = ⟨x, Rᵀ y⟩, which makes it the
    /// backward of the forward rotation (a linear map's gradient is its transpose).
    #[test]
    fn inverse_is_transpose() {
        let be = CpuBackend::<f64>::new();
        let (n, heads, d) = (6, 3, 16);
        let table = RopeTable::new(&be, &cfg(d), 64).unwrap();
        let mut rng = Rng(6);
        let x = randn(&mut rng, n * heads * d);
        let y = randn(&mut rng, n * heads * d);
        let pos = [5u32, 0, 63, 17, 17, 2];
        let mut rx = x.clone();
        be.rope(&mut rx, &table, &pos, n, heads, false).unwrap();
        let mut rty = y.clone();
        be.rope(&mut rty, &table, &pos, n, heads, true).unwrap();
        let (l, r) = (dot(&rx, &y), dot(&x, &rty));
        assert!((l - r).abs() < 1e-10 * l.abs().max(1.0), "{l} vs {r}");
    }
}
