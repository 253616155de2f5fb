//! The argument checks that both backends' cached-decoding ops share: [`check_copy_rows`]
//! for `Backend::copy_rows` (the KV cache's write) and [`DecodeDims`] for
//! `Backend::attention_decode` (one query per sequence against its cached keys). The ops
//! themselves live in cpu/attention.rs, cpu/elementwise.rs and kernel/decode.rs; the model
//! side in model/decode.rs.

use crate::error::{Error, Result};

/// Checks `copy_rows`: `width > 0`, src holds `rows.len()·width` values, dst a whole number
/// `m` of rows of `width`, every row below `m` and none twice. Returns `m`.
pub fn check_copy_rows(dst: usize, src: usize, rows: &[u32], width: usize) -> Result<usize> {
    let op = "copy_rows";
    if width == 0 || !dst.is_multiple_of(width) {
        return Err(Error::shape(
            op,
            format!("dst has {dst} values, not a whole number of rows of width {width}"),
        ));
    }
    let want = rows
        .len()
        .checked_mul(width)
        .ok_or_else(|| Error::shape(op, format!("{} rows × {width} overflows", rows.len())))?;
    if src != want {
        return Err(Error::shape(
            op,
            format!(
                "src has {src} values, expected {want} for {} rows of width {width}",
                rows.len()
            ),
        ));
    }
    let m = dst / width;
    let mut seen = vec![false; m];
    for (t, &r) in rows.iter().enumerate() {
        let r = r as usize;
        if r >= m {
            return Err(Error::shape(
                op,
                format!("row {t} goes to dst row {r}, outside its {m} rows"),
            ));
        }
        if std::mem::replace(&mut seen[r], true) {
            return Err(Error::shape(
                op,
                format!("dst row {r} is written twice (row {t})"),
            ));
        }
    }
    Ok(m)
}

/// Checked dims of one `attention_decode` call.
#[derive(Clone, Copy, Debug)]
pub struct DecodeDims {
    /// Queries (sequences).
    pub b: usize,
    /// Cache rows.
    pub m: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub hd: usize,
}

impl DecodeDims {
    /// Checks the heads, the buffer lengths (out and q `[b, heads·hd]`, k and v the same whole
    /// number `m` of rows of `kv_heads·hd`) and each query's key range `first[i] ..=
    /// first[i] + last[i]` inside the cache; all sizes fit the kernels' int32 indexing.
    pub fn new(
        lens: [usize; 4],
        first: &[u32],
        last: &[u32],
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Result<Self> {
        let op = "attention_decode";
        let [out, q, k, v] = lens;
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || hd == 0 {
            return Err(Error::shape(
                op,
                format!("heads={heads} must be a positive multiple of kv_heads={kv_heads}, hd={hd} positive"),
            ));
        }
        let b = first.len();
        if last.len() != b {
            return Err(Error::shape(
                op,
                format!("last has {} values, first {b}", last.len()),
            ));
        }
        let big = || Error::shape(op, format!("b={b}, heads={heads}, hd={hd} overflow"));
        let qw = heads.checked_mul(hd).ok_or_else(big)?;
        let want = b.checked_mul(qw).ok_or_else(big)?;
        for (name, len) in [("out", out), ("q", q)] {
            if len != want {
                return Err(Error::shape(
                    op,
                    format!("{name} has {len} values, expected {want} for b={b}, heads={heads}, hd={hd}"),
                ));
            }
        }
        let kw = kv_heads * hd;
        if k != v || !k.is_multiple_of(kw) {
            return Err(Error::shape(
                op,
                format!("k has {k} and v {v} values: expected the same whole number of rows of kv_heads·hd = {kw}"),
            ));
        }
        let m = k / kw;
        let int = i32::MAX as usize;
        if m > int || want > usize::MAX / 4 || b.saturating_mul(heads) > int || hd > int {
            return Err(big());
        }
        for (i, (&f, &l)) in first.iter().zip(last).enumerate() {
            let end = f as usize + l as usize;
            if end >= m {
                return Err(Error::shape(
                    op,
                    format!("query {i}: keys {f} ..= {end} outside the cache's {m} rows"),
                ));
            }
        }
        Ok(DecodeDims {
            b,
            m,
            heads,
            kv_heads,
            hd,
        })
    }

    /// `1/sqrt(hd)` (as `attention_forward` scales).
    pub fn scale(&self) -> f64 {
        1.0 / (self.hd as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_checks_name_the_fault() {
        assert_eq!(check_copy_rows(12, 6, &[3, 0], 3).unwrap(), 4);
        let e = |d, s, r: &[u32], w| check_copy_rows(d, s, r, w).unwrap_err().to_string();
        assert!(e(12, 6, &[4, 0], 3).contains("row 0 goes to dst row 4, outside its 4"));
        assert!(e(12, 6, &[1, 1], 3).contains("dst row 1 is written twice (row 1)"));
        assert!(e(12, 5, &[1, 2], 3).contains("src has 5 values, expected 6"));
        assert!(e(13, 6, &[1, 2], 3).contains("not a whole number of rows"));
        assert!(e(12, 0, &[], 0).contains("width 0"));
    }

    #[test]
    fn decode_dims_check_lengths_and_key_ranges() {
        // b = 2, heads 4 of hd 2, kv_heads 2: q [2, 8], cache 5 rows of 4
        let d = DecodeDims::new([16, 16, 20, 20], &[0, 2], &[1, 2], 4, 2, 2).unwrap();
        assert_eq!((d.b, d.m), (2, 5));
        let e = |lens, f: &[u32], l: &[u32], h| {
            DecodeDims::new(lens, f, l, h, 2, 2)
                .unwrap_err()
                .to_string()
        };
        assert!(e([16, 16, 20, 20], &[0, 2], &[1, 3], 4).contains("query 1: keys 2 ..= 5"));
        assert!(e([16, 16, 20, 20], &[0], &[1, 3], 4).contains("last has 2 values, first 1"));
        assert!(e([16, 14, 20, 20], &[0, 2], &[1, 2], 4).contains("q has 14 values"));
        assert!(e([16, 16, 20, 16], &[0, 2], &[1, 2], 4).contains("k has 20 and v 16"));
        assert!(e([16, 16, 20, 20], &[0, 2], &[1, 2], 3).contains("multiple of kv_heads"));
    }
}
