//! The argument checks every backend's `attention_forward` / `attention_backward` shares:
//! [`AttnDims::new`] validates the dims (query heads a positive multiple of the kv heads,
//! sizes that do not overflow) and the per-token sample starts ([`check_starts`]), and the
//! `check_*` methods validate the length of each buffer against them, with messages that name
//! the op, the buffer and the dims. The CPU backend (backend/cpu/attention.rs) uses the dims
//! as they are; the kernel backend (backend/kernel/attention.rs) adds its int32 and grid
//! limits on top. Sibling of `rope_table::check_rope`, the same for RoPE.

use crate::backend::cpu::{check_len, checked_size};
use crate::error::{Error, Result};

/// Validated dims of one attention call: `n = batch·seq` tokens, q/out `[n, heads·hd]`,
/// k/v `[n, kv_heads·hd]`, lse `[n, heads]`; every one of those sizes fits a `usize`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnDims {
    /// The op the checks report as.
    pub(crate) op: &'static str,
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) hd: usize,
    /// Tokens: `batch·seq`.
    pub(crate) n: usize,
    /// Query heads per kv head.
    pub(crate) group: usize,
}

impl AttnDims {
    /// Check the dims and `starts` (one per token, `starts[t] <= t % seq`, see
    /// [`check_starts`]).
    pub(crate) fn new(
        op: &'static str,
        starts: &[u32],
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Self> {
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || hd == 0 {
            return Err(Error::shape(
                op,
                format!("heads={heads} must be a positive multiple of kv_heads={kv_heads}, hd={hd} positive"),
            ));
        }
        let n = checked_size(op, &[batch, seq])?;
        // Each width on its own too: with n = 0 the products with n cannot overflow.
        let qw = checked_size(op, &[heads, hd])?;
        let kw = checked_size(op, &[kv_heads, hd])?;
        checked_size(op, &[n, qw])?;
        checked_size(op, &[n, kw])?;
        check_starts(op, starts, batch, seq)?;
        Ok(AttnDims {
            op,
            batch,
            seq,
            heads,
            kv_heads,
            hd,
            n,
            group: heads / kv_heads,
        })
    }

    /// `batch=…, seq=…, heads=…, kv_heads=…, hd=…` for error messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "batch={}, seq={}, heads={}, kv_heads={}, hd={}",
            self.batch, self.seq, self.heads, self.kv_heads, self.hd
        )
    }

    /// Check a `[n, heads·hd]` buffer (q, out, dq, dout).
    pub(crate) fn check_q(&self, name: &str, len: usize) -> Result<()> {
        self.check(name, len, self.heads * self.hd)
    }

    /// Check a `[n, kv_heads·hd]` buffer (k, v, dk, dv).
    pub(crate) fn check_kv(&self, name: &str, len: usize) -> Result<()> {
        self.check(name, len, self.kv_heads * self.hd)
    }

    /// Check a `[n, heads]` buffer (lse).
    pub(crate) fn check_lse(&self, name: &str, len: usize) -> Result<()> {
        self.check(name, len, self.heads)
    }

    /// `n·width` fits: `width` is one of the three widths checked in [`AttnDims::new`]
    /// (`heads ≤ heads·hd` as `hd ≥ 1`).
    fn check(&self, name: &str, len: usize, width: usize) -> Result<()> {
        check_len(self.op, name, len, self.n * width, || self.describe())
    }

    /// `1/sqrt(hd)`, the score scale, in f64.
    pub(crate) fn scale(&self) -> f64 {
        1.0 / (self.hd as f64).sqrt()
    }
}

/// Checks per-token sample starts: one per token of `batch` rows of `seq`, each the in-row
/// index of its sample's first token, so `starts[t] <= t % seq`.
pub fn check_starts(op: &'static str, starts: &[u32], batch: usize, seq: usize) -> Result<()> {
    let n = checked_size(op, &[batch, seq])?;
    check_len(op, "starts", starts.len(), n, || {
        format!("batch={batch}, seq={seq}")
    })?;
    if let Some((t, &s)) = starts
        .iter()
        .enumerate()
        .find(|(t, &s)| s as usize > t % seq)
    {
        return Err(Error::shape(
            op,
            format!(
                "token {t} (index {} in its row) has sample start {s}, after itself",
                t % seq
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_checked_per_row() {
        check_starts("t", &[0, 0, 2, 0, 1, 1], 2, 3).unwrap();
        let e = check_starts("t", &[0, 0, 2, 0, 2, 1], 2, 3).unwrap_err();
        assert!(
            e.to_string().contains("token 4 (index 1 in its row)"),
            "{e}"
        );
        let e = check_starts("t", &[0, 0], 1, 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("starts has 2 values, expected 3 for batch=1, seq=3"),
            "{e}"
        );
        let e = check_starts("t", &[], usize::MAX, 2).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn dims_reject_bad_heads_and_lengths() {
        let starts = [0, 1, 0, 1];
        for (heads, kvh, hd) in [(3, 2, 8), (2, 0, 8), (2, 1, 0)] {
            let e = AttnDims::new("attention_forward", &starts, 2, 2, heads, kvh, hd).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("attention_forward"), "{msg}");
            assert!(
                msg.contains(&format!(
                    "heads={heads} must be a positive multiple of kv_heads={kvh}"
                )),
                "{msg}"
            );
        }
        let d = AttnDims::new("attention_backward", &starts, 2, 2, 4, 2, 8).unwrap();
        assert_eq!((d.n, d.group), (4, 2));
        d.check_q("q", 4 * 4 * 8).unwrap();
        d.check_kv("k", 4 * 2 * 8).unwrap();
        d.check_lse("lse", 4 * 4).unwrap();
        let e = d.check_kv("dv", 4 * 4 * 8).unwrap_err().to_string();
        assert!(
            e.contains(
                "dv has 128 values, expected 64 for batch=2, seq=2, heads=4, kv_heads=2, hd=8"
            ),
            "{e}"
        );
        // kv sizes overflow even when heads = 0 keeps the q size at zero, and widths
        // overflow even when there are no tokens.
        let e = AttnDims::new("t", &[0], 1, 1, 0, usize::MAX, 2).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let e = AttnDims::new("t", &[], 0, 1, usize::MAX, 1, 2).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }
}
